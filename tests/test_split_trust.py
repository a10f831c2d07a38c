"""split on hostile input: links out of --src, loops, concurrent runs, odd --dst, hidden files."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import make_raw_tree, write_images

import lit_vision.split as split_mod
import lit_vision.split_lock as split_lock
from lit_vision.split import LOCK, MANIFEST, SplitError, split_dataset, verify_split


def _placed(dst: Path) -> list[tuple[str, str]]:
    """``(split, CLASS/relpath)`` of every file (or link) below ``dst/{train,val,test}``."""
    return sorted(
        (s, p.relative_to(dst / s).as_posix())
        for s in ("train", "val", "test")
        if (dst / s).is_dir()
        for p in (dst / s).rglob("*")
        if p.is_file() or p.is_symlink()
    )


def _one_split_each(dst: Path) -> set[str]:
    """The CLASS/relpath placed, asserting that none is in two splits and none is a link."""
    placed = _placed(dst)
    names = [name for _, name in placed]
    assert len(names) == len(set(names)), "a file is in two splits"
    assert not [p for p in dst.rglob("*") if p.is_symlink()]
    return set(names)


def test_links_leading_outside_src_are_skipped_and_listed(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    raw = make_raw_tree(tmp_path / "raw", classes=2, per_class=5)
    secret = write_images(tmp_path / "outside", 3, seed=9)
    (raw / "class_0" / "x.png").symlink_to(secret[0])  # a file link out of src
    (raw / "evil").symlink_to(tmp_path / "outside")  # a class folder that is a link out of src
    (raw / "class_1" / "tree").symlink_to(tmp_path / "outside")  # a sub-folder link out of src
    dst = tmp_path / "out"
    split_dataset(raw, dst, val=0.2)
    out, err = capsys.readouterr()
    assert _one_split_each(dst) == {f"class_{c}/img{i:03d}.png" for c in range(2) for i in range(5)}
    outside_bytes = {p.read_bytes() for p in secret}
    assert not [p for p in dst.rglob("*.png") if p.read_bytes() in outside_bytes]
    assert "verified: all 10 source images are in exactly one split" in out
    line = next(
        x for x in err.splitlines() if x.startswith("skipped 3 link(s) leading outside --src: ")
    )
    assert all(
        str(p) in line for p in (raw / "class_0" / "x.png", raw / "evil", raw / "class_1" / "tree")
    )
    assert verify_split(raw, dst) == []


@pytest.mark.parametrize("follow", [False, True])
def test_link_loops_do_not_duplicate(
    tmp_path: Path, capsys: pytest.CaptureFixture, follow: bool
) -> None:
    raw = tmp_path / "raw"
    write_images(raw / "a", 10)
    write_images(raw / "b" / "sub", 10, seed=1)
    (raw / "a" / "loop").symlink_to(".")
    (raw / "a" / "up").symlink_to("..")
    (raw / "b" / "sub" / "back").symlink_to("..")
    (raw / "self").symlink_to(".")  # a "class folder" that is src itself
    (raw / "a" / "circle.png").symlink_to("circle.png")
    dst = tmp_path / "out"
    counts = split_dataset(raw, dst, val=0.3, follow_symlinks=follow)
    err = capsys.readouterr().err
    sources = {f"a/img{i:03d}.png" for i in range(10)} | {
        f"b/sub/img{i:03d}.png" for i in range(10)
    }
    assert _one_split_each(dst) == sources  # 20 sources, 20 copies, no leak across splits
    assert sum(sum(c.values()) for c in counts.values()) == 20
    assert "skipped 4 link(s) looping back to a folder being walked: " in err
    assert "skipped 1 broken or circular link(s): " in err and "circle.png" in err
    assert verify_split(raw, dst, follow_symlinks=follow) == []


def test_links_inside_src_are_the_same_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    raw = make_raw_tree(tmp_path / "raw", classes=2, per_class=5)
    (raw / "class_0" / "zz_link.png").symlink_to("img000.png")
    (raw / "class_1" / "aa_link.png").symlink_to(
        "../class_0/img001.png"
    )  # sorts first; the real path wins
    (raw / "alias").symlink_to("class_0")  # a whole class again under another name
    dst = tmp_path / "out"
    counts = split_dataset(raw, dst, val=0.2)
    err = capsys.readouterr().err
    assert _one_split_each(dst) == {f"class_{c}/img{i:03d}.png" for c in range(2) for i in range(5)}
    assert "alias" not in counts["train"]
    assert "skipped 8 second path(s) to a file already taken: " in err
    skipped = {s.path: s.detail for s in split_mod.scan_source(raw).skipped}
    assert (
        skipped[raw / "class_1" / "aa_link.png"] == f"same file as {raw / 'class_0' / 'img001.png'}"
    )
    assert (
        skipped[raw / "class_0" / "zz_link.png"] == f"same file as {raw / 'class_0' / 'img000.png'}"
    )
    assert verify_split(raw, dst) == []


def test_hardlink_links_the_resolved_file_inside_src(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    raw = make_raw_tree(tmp_path / "raw", classes=2, per_class=4)
    (store,) = write_images(raw / ".store", 1, seed=5)  # hidden, but taken through a link
    (raw / "class_0" / "x.png").symlink_to(Path("..") / ".store" / store.name)
    (outside,) = write_images(tmp_path / "outside", 1, seed=6)
    (raw / "class_1" / "y.png").symlink_to(outside)  # absolute link out of src
    dst = tmp_path / "out"
    split_dataset(raw, dst, val=0.25, link="hardlink")
    err = capsys.readouterr().err
    names = _one_split_each(dst)  # no symbolic link anywhere in dst
    assert "class_0/x.png" in names and "class_1/y.png" not in names
    inside = {
        (p.stat().st_dev, p.stat().st_ino)
        for p in raw.rglob("*")
        if p.is_file() and not p.is_symlink()
    }
    for split, name in _placed(dst):
        assert (os.stat(dst / split / name).st_dev, os.stat(dst / split / name).st_ino) in inside
    x = next(dst.rglob("x.png"))
    assert x.stat().st_ino == store.stat().st_ino and x.stat().st_nlink == 2
    assert "hidden" not in err  # .store/x.png was taken via the link, so it is not "left out"
    assert verify_split(raw, dst) == []


def test_follow_symlinks_takes_outside_files_as_copies(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    raw = make_raw_tree(tmp_path / "raw", classes=2, per_class=5)
    (outside,) = write_images(tmp_path / "outside", 1, seed=9)
    (raw / "class_0" / "x.png").symlink_to(outside)
    (raw / "class_0" / "loop").symlink_to(".")
    dst = tmp_path / "out"
    split_dataset(raw, dst, val=0.2, follow_symlinks=True)
    assert len(_one_split_each(dst)) == 11
    x = next(dst.rglob("x.png"))
    assert not x.is_symlink() and x.read_bytes() == outside.read_bytes()
    capsys.readouterr()
    split_dataset(raw, dst, verify=True)  # --verify scans src as the split did (split_plan.json)
    assert "match" in capsys.readouterr().out
    with pytest.raises(SplitError, match="different options .*follow_symlinks True now False"):
        split_dataset(raw, dst, val=0.2, resume=True)


def test_concurrent_splits_into_one_dst(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = make_raw_tree(tmp_path / "raw", classes=2, per_class=8)
    dst = tmp_path / "out"
    real_plan, real_place = split_mod.plan_split, split_mod._place
    barrier = threading.Barrier(2, timeout=30)

    def plan_together(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        barrier.wait()  # both runs have passed the "non-empty destination" check by now
        return real_plan(*args, **kwargs)

    def slow_place(source: Path, target: Path, link: str) -> None:
        time.sleep(0.05)
        real_place(source, target, link)

    monkeypatch.setattr(split_mod, "plan_split", plan_together)
    monkeypatch.setattr(split_mod, "_place", slow_place)
    results: list[str] = []

    def run() -> None:
        try:
            split_dataset(raw, dst, val=0.25, seed=3, quiet=True)
            results.append("ok")
        except SplitError as err:
            results.append(str(err))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results, key=len)[0] == "ok" and len(results) == 2
    refusal = sorted(results, key=len)[1]
    assert f"--dst {dst} is being written by another split" in refusal and "\n" not in refusal
    assert len(_one_split_each(dst)) == 16
    assert verify_split(raw, dst) == [] and not (dst / LOCK).exists()


def test_lock_of_a_killed_run_does_not_block(tmp_path: Path) -> None:
    pytest.importorskip("fcntl")
    raw = make_raw_tree(tmp_path / "raw", classes=2, per_class=4)
    dst = tmp_path / "out"
    dst.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(120)",
            str(dst / LOCK),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        for kwargs in ({}, {"resume": True}, {"verify": True}):
            with pytest.raises(
                SplitError, match=f"--dst {re.escape(str(dst))} is being written by another split"
            ):
                split_dataset(raw, dst, val=0.25, quiet=True, **kwargs)
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert (
        dst / LOCK
    ).exists()  # a killed holder leaves the file, but the kernel dropped its flock
    split_dataset(raw, dst, val=0.25, quiet=True)
    assert not (dst / LOCK).exists() and verify_split(raw, dst) == []


def test_failed_run_releases_the_lock_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = make_raw_tree(tmp_path / "raw", classes=2, per_class=5)
    dst = tmp_path / "out"
    real_place, calls = split_mod._place, []

    def failing_place(source: Path, target: Path, link: str) -> None:
        calls.append(target)
        if len(calls) == 4:
            raise OSError("disk full")
        real_place(source, target, link)

    monkeypatch.setattr(split_mod, "_place", failing_place)
    with pytest.raises(SplitError, match="disk full"):
        split_dataset(raw, dst, val=0.2, quiet=True)
    assert not (dst / LOCK).exists()
    monkeypatch.setattr(split_mod, "_place", real_place)
    split_dataset(raw, dst, val=0.2, quiet=True, resume=True)
    assert len(_one_split_each(dst)) == 10 and not (dst / LOCK).exists()


def test_verify_creates_no_lock_file_and_keeps_a_stale_one(tmp_path: Path) -> None:
    raw = make_raw_tree(tmp_path / "raw", classes=2, per_class=4)
    dst = tmp_path / "out"
    split_dataset(raw, dst, val=0.25, quiet=True)
    assert not (dst / LOCK).exists()
    split_dataset(raw, dst, verify=True, quiet=True)
    assert not (dst / LOCK).exists()  # --verify writes nothing
    (dst / LOCK).write_text("")  # left by a killed run: locked by nobody
    split_dataset(raw, dst, verify=True, quiet=True)
    assert (dst / LOCK).read_text() == ""


def test_lock_held_in_this_process_refuses_a_second_split(tmp_path: Path) -> None:
    raw = make_raw_tree(tmp_path / "raw", classes=2, per_class=4)
    dst = tmp_path / "out"
    dst.mkdir()
    with split_lock.locked(dst):
        for kwargs in ({}, {"verify": True}):
            with pytest.raises(
                SplitError, match="is being written by another split right now"
            ) as info:
                split_dataset(raw, dst, val=0.25, quiet=True, **kwargs)
            assert "\n" not in str(info.value)
    assert not (dst / LOCK).exists()  # removed on the way out (filelock itself keeps the file)
    split_dataset(raw, dst, val=0.25, quiet=True)
    assert verify_split(raw, dst) == []


@pytest.mark.parametrize("kind", ["dangling link", "file"])
@pytest.mark.parametrize("mode", [{}, {"resume": True}, {"verify": True}])
def test_dst_that_cannot_be_a_folder(tmp_path: Path, kind: str, mode: dict) -> None:
    raw = make_raw_tree(tmp_path / "raw", classes=2, per_class=3)
    dst = tmp_path / "out"
    if kind == "file":
        dst.write_text("mine")
    else:
        dst.symlink_to(tmp_path / "missing")
    with pytest.raises(SplitError) as info:
        split_dataset(raw, dst, quiet=True, **mode)
    assert f"--dst {dst} " in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "missing").exists()


def test_messages_name_the_real_option_spelling(tmp_path: Path) -> None:
    raw = make_raw_tree(tmp_path / "raw", classes=2, per_class=3)
    with pytest.raises(SplitError, match="^--group_regex '\\(\\[' is not a valid regex"):
        split_dataset(raw, tmp_path / "out", group_regex="([", quiet=True)
    package = Path(split_mod.__file__).parent
    for name in ("split", "source", "split_plan", "split_verify", "split_resume", "split_lock"):
        source = (package / f"{name}.py").read_text()
        assert re.findall(r"--[a-z]+-[a-z-]+", source) == [], name  # options are --group_regex, ...


def test_hidden_images_are_left_out_and_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    raw = make_raw_tree(tmp_path / "raw", classes=2, per_class=5)
    write_images(raw / "class_0" / ".sub", 2, seed=7)
    write_images(raw / "class_1", 1, prefix=".hidden", seed=8)
    write_images(raw / ".ipynb_checkpoints", 1, seed=9)
    dst = tmp_path / "out"
    split_dataset(raw, dst, val=0.2)
    out, err = capsys.readouterr()
    assert _one_split_each(dst) == {f"class_{c}/img{i:03d}.png" for c in range(2) for i in range(5)}
    assert "left out 4 hidden image file(s)" in err and "listed below" in out
    assert verify_split(raw, dst) == []
    write_images(tmp_path / "raw2" / "only_hidden" / ".cache", 2)
    write_images(tmp_path / "raw2" / "ok", 2)
    with pytest.raises(
        SplitError, match="only_hidden holds no images \\(2 hidden image file\\(s\\) left out\\)"
    ):
        split_dataset(tmp_path / "raw2", tmp_path / "out2", quiet=True)


def test_verify_flags_a_link_planted_in_dst(tmp_path: Path) -> None:
    raw = make_raw_tree(tmp_path / "raw", classes=2, per_class=4)
    dst = tmp_path / "out"
    split_dataset(raw, dst, val=0.25, quiet=True)
    row = next(csv.DictReader((dst / MANIFEST).read_text().splitlines()))
    target = dst / row["split"] / row["class"] / row["relpath"]
    (tmp_path / "copy.png").write_bytes(target.read_bytes())
    target.unlink()
    target.symlink_to(tmp_path / "copy.png")  # same bytes, but a link may lead anywhere later
    assert verify_split(raw, dst) == [f"{target} is a symbolic link"]


def test_help_states_the_link_policy(capsys: pytest.CaptureFixture) -> None:
    from lit_vision.__main__ import main

    assert main(["split", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.replace("``", "").split())
    assert "--follow_symlinks" in text and "nothing outside src" in text and "Hidden files" in text
