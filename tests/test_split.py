"""The split's guarantees: nothing lost or duplicated, groups kept together, deterministic, safe."""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from pathlib import Path

import pytest
from conftest import make_raw_tree, write_images

import lit_vision.progress
from lit_vision.split import MANIFEST, SplitError, split_dataset, verify_split


def _tree_files(root: Path) -> dict[str, list[str]]:
    """Per split, the CLASS/relpath of every file."""
    out: dict[str, list[str]] = {}
    for split in ("train", "val", "test"):
        d = root / split
        out[split] = (
            sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())
            if d.is_dir()
            else []
        )
    return out


def _hash_tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_every_image_in_exactly_one_split(tmp_path: Path) -> None:
    raw = make_raw_tree(tmp_path / "raw", classes=3, per_class=20)
    (raw / "class_0" / "nested").mkdir()
    write_images(raw / "class_0" / "nested", 3, prefix="deep")
    before = _hash_tree(raw)
    counts = split_dataset(raw, tmp_path / "out", val=0.2, test=0.1, seed=1, quiet=True)
    files = _tree_files(tmp_path / "out")
    placed = [f for split in files.values() for f in split]
    sources = [k for k in before]
    assert sorted(placed) == sorted(sources)  # nothing lost, nothing duplicated
    assert len(set(placed)) == len(placed)
    assert _hash_tree(raw) == before  # source untouched
    for split, names in files.items():  # byte-identical copies
        for name in names:
            assert (tmp_path / "out" / split / name).read_bytes() == (raw / name).read_bytes()
    assert sum(counts["val"].values()) == len(files["val"])
    # stratified: each class gets ~20% val and ~10% test
    for c in ("class_1", "class_2"):
        assert counts["val"][c] == 4 and counts["test"][c] == 2 and counts["train"][c] == 14
    assert verify_split(raw, tmp_path / "out") == []


def test_groups_stay_together(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    for c in range(2):
        for track in range(10):
            write_images(raw / f"sign{c}", 5, prefix=f"{track:05d}_", seed=track)
    split_dataset(
        raw, tmp_path / "out", val=0.3, test=0.2, seed=0, group_regex=r"^(\d+)_", quiet=True
    )
    where: dict[tuple[str, str], set[str]] = {}
    for split, names in _tree_files(tmp_path / "out").items():
        for name in names:
            cls, fname = name.split("/")
            where.setdefault((cls, fname.split("_")[0]), set()).add(split)
    assert len(where) == 20
    assert all(len(s) == 1 for s in where.values())  # no track straddles two splits
    splits_used = Counter(next(iter(s)) for s in where.values())
    assert splits_used["val"] >= 2 and splits_used["test"] >= 2 and splits_used["train"] >= 8


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    raw = make_raw_tree(tmp_path / "raw", classes=2, per_class=30)
    split_dataset(raw, tmp_path / "a", val=0.3, seed=7, quiet=True)
    split_dataset(raw, tmp_path / "b", val=0.3, seed=7, quiet=True)
    split_dataset(raw, tmp_path / "c", val=0.3, seed=8, quiet=True)
    assert _tree_files(tmp_path / "a") == _tree_files(tmp_path / "b")
    assert _tree_files(tmp_path / "a") != _tree_files(tmp_path / "c")


def test_zero_fractions_and_manifest(tmp_path: Path) -> None:
    raw = make_raw_tree(tmp_path / "raw", classes=2, per_class=5)
    split_dataset(raw, tmp_path / "out", val=0.0, test=0.0, quiet=True)
    files = _tree_files(tmp_path / "out")
    assert len(files["train"]) == 10 and not files["val"] and not files["test"]
    rows = list(csv.DictReader((tmp_path / "out" / MANIFEST).read_text().splitlines()))
    assert len(rows) == 10 and {r["split"] for r in rows} == {"train"}


def test_single_image_class_stays_in_train(tmp_path: Path) -> None:
    raw = make_raw_tree(tmp_path / "raw", classes=2, per_class=10)
    write_images(raw / "rare", 1)
    counts = split_dataset(raw, tmp_path / "out", val=0.5, test=0.3, quiet=True)
    assert counts["train"]["rare"] == 1


def test_refuses_non_empty_destination(tmp_path: Path) -> None:
    raw = make_raw_tree(tmp_path / "raw", classes=2, per_class=3)
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(SplitError, match="not empty"):
        split_dataset(raw, dst, quiet=True)
    assert (dst / "keep.txt").read_text() == "mine"


def test_non_image_files_are_reported_not_copied(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    raw = make_raw_tree(tmp_path / "raw", classes=2, per_class=4)
    (raw / "class_0" / "notes.csv").write_text("a,b")
    split_dataset(raw, tmp_path / "out", val=0.25)
    captured = capsys.readouterr()
    assert "notes.csv" in captured.err and "1 non-image" in captured.err
    assert "verified: all 8 source images" in captured.out


def test_verify_detects_tampering(tmp_path: Path) -> None:
    raw = make_raw_tree(tmp_path / "raw", classes=2, per_class=4)
    out = tmp_path / "out"
    split_dataset(raw, out, val=0.25, quiet=True)
    victim = next((out / "train").rglob("*.png"))
    victim.write_bytes(victim.read_bytes()[:-10])
    problems = verify_split(raw, out)
    assert any("differs" in p for p in problems)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"val": 0.6, "test": 0.5}, "sum below 1"), ({"group_regex": "(["}, "not a valid regex")],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    raw = make_raw_tree(tmp_path / "raw", classes=2, per_class=3)
    with pytest.raises(SplitError, match=match):
        split_dataset(raw, tmp_path / "out", quiet=True, **kwargs)


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(SplitError, match="not a folder"):
        split_dataset(tmp_path / "nope", tmp_path / "out", quiet=True)


def test_progress_bars_on_large_splits_only_and_never_quiet(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = make_raw_tree(tmp_path / "raw", classes=2, per_class=4)
    split_dataset(raw, tmp_path / "small", val=0.25)
    assert "copying" not in capsys.readouterr().err  # 8 files: below the threshold, no bar
    monkeypatch.setattr(lit_vision.progress, "MIN_FILES", 8)  # as if the tree were large
    split_dataset(raw, tmp_path / "big", val=0.25)
    out, err = capsys.readouterr()
    assert "copying" in err and "verifying" in err and "copying" not in out
    split_dataset(raw, tmp_path / "big", verify=True)
    assert "verifying" in capsys.readouterr().err
    split_dataset(raw, tmp_path / "hard", val=0.25, link="hardlink")
    assert "linking" in capsys.readouterr().err
    split_dataset(raw, tmp_path / "quiet", val=0.25, quiet=True)
    split_dataset(raw, tmp_path / "quiet", verify=True, quiet=True)
    assert capsys.readouterr() == ("", "")
