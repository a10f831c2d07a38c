"""Interrupted training (SIGKILL, SIGTERM), atomic checkpoints, non-finite loss, config mistakes,
and interrupted or tampered splits.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, make_raw_tree, make_split_tree

from lit_vision.__main__ import main, run_command
from lit_vision.resume import (
    AtomicCheckpointIO,
    FaultTolerance,
    NonFiniteLossError,
    find_last_checkpoint,
)
from lit_vision.split import SplitError, split_dataset, verify_split

ENV = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO / 'tests'}"}


def fit_args(data: Path, save_dir: Path, *extra: str) -> list[str]:
    """A tiny, deterministic gtsrb_cnn run: 3 epochs of 6 batches, CPU, no loader workers."""
    return [
        "fit",
        "--config",
        "configs/gtsrb_cnn.yaml",
        "--data.root",
        str(data),
        "--data.num_workers",
        "0",
        "--data.batch_size",
        "8",
        "--data.image_size",
        "16",
        "--model.init_args.channels",
        "[4,8]",
        "--model.init_args.hidden",
        "8",
        "--trainer.max_epochs",
        "3",
        "--trainer.accelerator",
        "cpu",
        "--trainer.deterministic",
        "true",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.logger.init_args.save_dir",
        str(save_dir),
        *extra,
    ]


def run_cli(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lit_vision", *args],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )


def inject(signal: str, epoch: int, batch: int) -> str:
    return "--trainer.callbacks+=" + json.dumps(
        {
            "class_path": "faultinject.SignalAt",
            "init_args": {"epoch": epoch, "batch": batch, "signal": signal},
        }
    )


def final_state(save_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(
        save_dir / "gtsrb_cnn" / "version_0" / "checkpoints" / "last.ckpt", weights_only=False
    )
    # 3 epochs of 6 steps (epoch 3 when Lightning's on_train_end re-saved "last" after the loop)
    assert ckpt["epoch"] in (2, 3) and ckpt["global_step"] == 18
    return ckpt["state_dict"]


@pytest.fixture(scope="module")
def resume_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """The tiny split tree and the final weights of an uninterrupted run."""
    base = tmp_path_factory.mktemp("resume")
    data = make_split_tree(base / "data", classes=3, train=16, val=4, test=0, size=16)
    done = run_cli(fit_args(data, base / "full"))
    assert done.returncode == 0, done.stderr[-2000:]
    return data, final_state(base / "full")


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ after resume: {different[:3]}"


@pytest.mark.parametrize(
    ("signal", "epoch", "batch", "extra"),
    [
        # killed mid-epoch: resume from the epoch-0 checkpoint, redo epoch 1 (slow: 2 more runs)
        pytest.param("KILL", 1, 3, ["--data.num_workers", "2"], marks=pytest.mark.slow),
        # mid-epoch checkpoints, loader workers prefetching before any epoch hook runs
        ("KILL", 1, 4, ["--fault_tolerance.save_every_minutes", "1e-9", "--data.num_workers", "2"]),
        ("TERM", 1, 2, []),  # pre-emption: last.ckpt written mid-epoch on the way out
    ],
    ids=["sigkill-epoch-ckpt", "sigkill-midepoch-ckpt", "sigterm"],
)
def test_interrupted_run_resumes_bitwise(
    tmp_path: Path, resume_data, signal: str, epoch: int, batch: int, extra: list[str]
) -> None:
    data, expected = resume_data
    killed = run_cli(fit_args(data, tmp_path, inject(signal, epoch, batch), *extra))
    if signal == "KILL":
        assert killed.returncode == -9
    else:
        assert killed.returncode == 0, killed.stderr[-2000:]
        assert "SIGTERM, saved" in killed.stderr
        ckpt = torch.load(find_last_checkpoint(tmp_path, "gtsrb_cnn"), weights_only=False)
        assert ckpt["global_step"] == 6 * epoch + batch + 1  # the batch in flight finished first
    resumed = run_cli(fit_args(data, tmp_path, "--ckpt_path", "last", *extra))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr
    assert_same(expected, final_state(tmp_path))
    # One experiment folder: the resumed run logs next to the first half.
    versions = sorted(p.name for p in (tmp_path / "gtsrb_cnn").iterdir())
    assert versions == ["version_0"]
    assert len(list((tmp_path / "gtsrb_cnn" / "version_0").glob("events.out.tfevents.*"))) == 2
    assert sorted(
        p.name for p in (tmp_path / "gtsrb_cnn" / "version_0" / "checkpoints").glob("last*")
    ) == ["last.ckpt"]


def test_ckpt_path_last_without_checkpoint(tmp_path: Path, split_tree: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no last.ckpt under"):
        run_command(fit_args(split_tree, tmp_path, "--ckpt_path", "last"))


def test_atomic_checkpoint_keeps_old_file_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"a": torch.ones(3)}, path)
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):  # noqa: ANN001
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"a": torch.zeros(3)}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temp file left behind


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path, split_tree: Path) -> None:
    poison = "--trainer.callbacks+=" + json.dumps(
        {"class_path": "faultinject.PoisonAt", "init_args": {"epoch": 1, "batch": 1}}
    )
    with pytest.raises(
        NonFiniteLossError, match=r"training loss is nan at epoch 1.*last good checkpoint"
    ):
        run_command(fit_args(split_tree, tmp_path, poison))
    last = find_last_checkpoint(tmp_path, "gtsrb_cnn")
    ckpt = torch.load(last, weights_only=False)
    assert ckpt["epoch"] == 0  # the epoch-0 checkpoint, not overwritten
    assert all(
        torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point()
    )


def test_non_finite_parameters_never_saved() -> None:
    guard = FaultTolerance()

    class Trainer:
        current_epoch, global_step, checkpoint_callback, world_size = 3, 99, None, 1

    with pytest.raises(NonFiniteLossError, match="checkpoint not written"):
        guard.on_save_checkpoint(
            Trainer(), None, {"state_dict": {"w": torch.tensor([1.0, float("inf")])}}
        )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--data.root", str(REPO), "--data.batchsize", "8"], "--data.batchsize is not an option"),
        ([], "data.root is not set: pass --data.root ROOT"),
    ],
    ids=["typo", "missing-root"],
)
def test_config_mistakes_from_the_shell_give_one_line(args: list[str], expected: str) -> None:
    done = run_cli(["fit", "--config", "configs/gtsrb_cnn.yaml", *args])
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and expected in lines[-1], done.stderr[-1500:]
    assert "Traceback" not in done.stderr and "usage:" not in done.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--data.batch_size", "eight"],
            "error: --data.batch_size: Expected a <class 'int'>. Got value: eight",
        ),
        (["--trainer.max_epocs", "3"], "error: unrecognized arguments: --trainer.max_epocs"),
        (
            ["--data.on_bad", "ignore"],
            "error: --data.on_bad: Expected a typing.Literal['error', 'skip']",
        ),
        (["--model.init_args.chanels", "[4]"], "error: --model.chanels is not an option"),
        (["--data.hflip", "maybe"], "error: --data.hflip: expected bool or 'auto', got 'maybe'"),
        (
            ["--data.image_size", "big"],
            "error: --data.image_size: expected int or 'auto', got 'big'",
        ),
    ],
    ids=["type", "trainer-typo", "choice", "model-typo", "union", "union-int"],
)
def test_config_mistakes_one_line(
    args: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fit", "--config", "configs/gtsrb_cnn.yaml", "--data.root", str(REPO), *args]) == 2
    message = capsys.readouterr().err
    assert message.startswith(expected) and message.count("\n") == 1


def test_config_file_typo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "typo.yaml").write_text("trainer:\n  max_epocs: 3\n")
    assert (
        main(
            [
                "fit",
                "--config",
                "configs/gtsrb_cnn.yaml",
                "--config",
                str(tmp_path / "typo.yaml"),
                "--data.root",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert capsys.readouterr().err.startswith(
        "error: Subcommand 'fit' does not accept option 'trainer.max_epocs'"
    )


# --- split integrity -------------------------------------------------------------------------


def tree_digest(root: Path) -> str:
    """One hash over every file's relative path, bytes and mtime: any change shows."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
            h.update(str(p.stat().st_mtime_ns).encode())
    return h.hexdigest()


def test_interrupted_split_resumes_without_duplicates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_raw_tree(tmp_path / "raw", classes=3, per_class=10)
    before = tree_digest(src)
    dst = tmp_path / "split"
    import lit_vision.split as split_mod

    real_place, placed = split_mod._place, []

    def crashing_place(source, target, link):  # noqa: ANN001
        if len(placed) == 13:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.with_name(f".{target.name}.part").write_bytes(b"half")  # a copy cut short
            raise KeyboardInterrupt
        placed.append(target)
        real_place(source, target, link)

    monkeypatch.setattr(split_mod, "_place", crashing_place)
    with pytest.raises(KeyboardInterrupt):
        split_dataset(src, dst, val=0.3, seed=1, quiet=True)
    monkeypatch.setattr(split_mod, "_place", real_place)
    assert len([p for p in dst.rglob("*.png")]) == 13 and not (dst / "split_manifest.csv").exists()

    with pytest.raises(SplitError, match="--resume true"):
        split_dataset(src, dst, val=0.3, seed=1, quiet=True)
    with pytest.raises(SplitError, match="different options .*seed 1 now 2"):
        split_dataset(src, dst, val=0.3, seed=2, quiet=True, resume=True)

    counts = split_dataset(src, dst, val=0.3, seed=1, quiet=True, resume=True)
    assert sum(sum(c.values()) for c in counts.values()) == 30
    assert verify_split(src, dst) == []
    assert not list(dst.rglob("*.part"))
    assert len(list(dst.rglob("*.png"))) == 30  # each source image exactly once
    fresh = split_dataset(src, tmp_path / "fresh", val=0.3, seed=1, quiet=True)
    assert fresh == counts
    assert (dst / "split_manifest.csv").read_text() == (
        tmp_path / "fresh" / "split_manifest.csv"
    ).read_text()
    assert tree_digest(src) == before  # the source is never modified


def test_resume_refuses_foreign_files(tmp_path: Path) -> None:
    src = make_raw_tree(tmp_path / "raw", classes=2, per_class=6)
    dst = tmp_path / "split"
    split_dataset(src, dst, val=0.3, quiet=True)
    (dst / "train" / "class_0" / "stranger.png").write_bytes(b"x")
    with pytest.raises(SplitError, match="not part of this split plan"):
        split_dataset(src, dst, val=0.3, quiet=True, resume=True)
    other = tmp_path / "other"
    (other / "train").mkdir(parents=True)
    with pytest.raises(SplitError, match="no split_plan.json"):
        split_dataset(src, other, val=0.3, quiet=True, resume=True)


def test_split_verify_byte_for_byte(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = make_raw_tree(tmp_path / "raw", classes=2, per_class=6)
    dst = tmp_path / "split"
    split_dataset(src, dst, val=0.3, quiet=True)
    assert main(["split", "--src", str(src), "--dst", str(dst), "--verify", "true"]) == 0
    assert "match" in capsys.readouterr().out
    # A copy changed in place, one leaked into a second split, and a source changed since.
    target = next((dst / "train" / "class_0").iterdir())
    target.write_bytes(target.read_bytes()[:-1] + b"\0")
    val_file = next((dst / "val" / "class_1").iterdir())
    (dst / "train" / "class_1" / val_file.name).write_bytes(val_file.read_bytes())
    source = src / "class_1" / next((dst / "train" / "class_1").iterdir()).name
    source.write_bytes(source.read_bytes() + b"\0")
    with pytest.raises(SplitError) as info:
        split_dataset(src, dst, verify=True)
    message = str(info.value)
    assert "3 problem(s)" in message
    assert f"{target} differs from its source" in message
    assert "manifest puts it in another split" in message
    assert "missing or changed since the split" in message


def test_epoch_sampler_order_and_seeds() -> None:
    from lit_vision.data import EpochSampler

    s = EpochSampler(10, seed=3)
    s.set_epoch(2)
    a = list(s)
    s.set_epoch(2)
    assert list(s) == a and sorted(i for i, _ in a) == list(range(10))
    s.set_epoch(3)
    assert list(s) != a
    s.set_epoch(2)
    s.skip = 4
    assert list(s) == a[4:]  # a mid-epoch resume continues where the killed run stopped
    assert len(list(s)) == 10  # skip applies once
    fresh = EpochSampler(10, seed=3)
    assert list(fresh) != list(fresh)  # without set_epoch, each pass is a new epoch
