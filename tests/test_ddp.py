"""Several processes: 2-process CPU DDP equals single-process evaluation; locks, samplers, LR, precision."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import REPO, make_split_tree
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from torch.utils.data import DistributedSampler

from lit_vision.__main__ import main, run_command
from lit_vision.cli import auto_precision
from lit_vision.data import EpochSampler, ImageFolderDataModule
from lit_vision.digits import materialize_digits
from lit_vision.distributed import lr_scale_factor
from lit_vision.models import CNNClassifier
from lit_vision.precision import cpu_has_native_bf16
from lit_vision.resume import FaultTolerance

GTSRB = str(REPO / "configs" / "gtsrb_cnn.yaml")
TINY = [
    "--data.num_workers",
    "0",
    "--data.batch_size",
    "4",
    "--data.image_size",
    "16",
    "--model.init_args.channels",
    "[8, 16]",
    "--model.init_args.hidden",
    "16",
    "--trainer.enable_progress_bar",
    "false",
]


def _event_scalars(log_dir: Path, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return [e.value for e in events.Scalars(tag)]


def test_ddp_two_cpu_processes_match_single_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 15 val images over 2 ranks: a padding DistributedSampler would score 16 (one twice).
    root = make_split_tree(tmp_path / "data", classes=3, train=10, val=5, test=0, size=16)
    tb = tmp_path / "tb"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    probe = tmp_path / "probe"
    probe.mkdir()
    env["LV_PROBE_DIR"] = str(probe)
    cmd = [
        sys.executable,
        str(REPO / "tests" / "ddp_probe.py"),  # python -m lit_vision, recording decodes
        "fit",
        "--config",
        GTSRB,
        "--config",
        str(REPO / "configs" / "ddp.yaml"),
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--trainer.max_epochs",
        "1",
        "--scale_lr",
        "linear",
        "--data.root",
        str(root),
        "--trainer.logger.init_args.save_dir",
        str(tb),
        *TINY,
    ]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "world size 2" in done.stderr + done.stdout

    # Once per node: one process scanned and decoded each of the 45 files once, into one cache
    # file per split, and both ranks memory-mapped the same files.
    records = [json.loads(p.read_text()) for p in probe.glob("*.json")]
    assert len(records) == 2
    decoded = [f for r in records for f in r["decoded"] if f.startswith(str(root))]
    assert sorted(decoded) == sorted(str(p) for p in root.glob("*/*/*.png")), decoded
    maps = [
        sorted({Path(f).name for f in r["mapped"] if ".lit_vision_cache" in f}) for r in records
    ]
    assert maps[0] == maps[1] and len(maps[0]) == 2, maps  # train-... and val-...

    # One log directory (the experiment's logger name survives the overlay), one checkpoint set.
    versions = sorted((tb / "gtsrb_cnn").iterdir())
    assert [v.name for v in versions] == ["version_0"]
    run = versions[0]
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert len(ckpts) == 2 and "last.ckpt" in ckpts and ckpts[0].startswith("best-epoch00-acc"), (
        ckpts
    )
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    assert not (tmp_path / "tb_logs").exists() and not (tmp_path / "lightning_logs").exists()

    # Layout and LR scaling were recorded (linear: 2 processes -> 2 x the config's 0.005).
    hparams = yaml.safe_load((run / "hparams.yaml").read_text())
    assert hparams["run/world_size"] == 2 and hparams["run/effective_batch_size"] == 8
    # gtsrb_cnn asks for bf16 on CPUs with native bf16 (cpu_bf16), fp32 elsewhere
    assert hparams["run/precision"] == ("bf16-mixed" if cpu_has_native_bf16() else "32-true")
    assert hparams["run/lr_per_group"] == pytest.approx([0.01])

    ddp_acc = _event_scalars(run, "val/acc")[-1]
    # The run report's confusion matrix is synced over both ranks: every image counted once.
    report = json.loads((run / "report.json").read_text())
    assert report["evaluation"]["val"]["images"] == 15
    # The temperature was fitted on the logits of both ranks' uneven shards (8 + 7), once each.
    assert report["calibration"]["images"] == 15
    assert report["evaluation"]["val"]["accuracy"] == pytest.approx(ddp_acc, abs=1e-6)
    assert _event_scalars(run, "perf/train_images_per_sec")[-1] > 0  # one timer, all ranks
    assert round(ddp_acc * 15) == pytest.approx(ddp_acc * 15, abs=1e-4), "val/acc is not k/15"

    # The same weights evaluated in this one process give the same accuracy and loss
    # (the loss also checks that every rank evaluated rank 0's BatchNorm statistics).
    monkeypatch.chdir(tmp_path)
    cli = run_command(
        [
            "validate",
            "--config",
            GTSRB,
            "--data.root",
            str(root),
            "--trainer.logger",
            "false",
            "--trainer.accelerator",
            "cpu",
            "--trainer.devices",
            "1",
            "--ckpt_path",
            str(run / "checkpoints" / "last.ckpt"),
            *TINY,
        ]
    )
    single = cli.trainer.callback_metrics
    assert float(single["val/acc"]) == pytest.approx(ddp_acc, abs=1e-6)
    assert float(single["val/loss"]) == pytest.approx(_event_scalars(run, "val/loss")[-1], rel=1e-4)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_eval_loaders_split_samples_once(split_tree: Path, world: int) -> None:
    seen: list[str] = []
    for rank in range(world):
        dm = ImageFolderDataModule(
            split_tree, image_size=16, batch_size=5, num_workers=0, cache=False
        )
        dm.trainer = SimpleNamespace(
            distributed_sampler_kwargs={"num_replicas": world, "rank": rank},
            num_devices=world,
            lightning_module=None,
        )
        dm.setup("fit")
        ds = dm.datasets["val"]
        seen += [ds.samples[i][0] for i in dm.val_dataloader().sampler]
        # training: the seeded, resumable EpochSampler, sharding the epoch by rank itself
        assert isinstance(dm.train_dataloader().sampler, EpochSampler)
    assert sorted(seen) == sorted(p for p, _ in ds.samples)  # 12 images: each exactly once


def _rank_epoch(root: Path, world: int, rank: int, resume: dict[str, int] | None) -> list:
    """Rank ``rank``'s ``(index, seed)`` pairs of epoch 1, as Lightning's DDP hands them over.

    Lightning keeps a ``DistributedSampler`` it is given and wraps any other sampler in a
    ``DistributedSamplerWrapper`` (``use_distributed_sampler``); both cases are followed here.
    """
    dm = ImageFolderDataModule(root, image_size=16, batch_size=4, num_workers=0, cache=False)
    dm.trainer = SimpleNamespace(
        distributed_sampler_kwargs={"num_replicas": world, "rank": rank},
        num_devices=world,
        lightning_module=None,
    )
    dm.setup("fit")
    if resume is not None:  # the checkpoint's state, as Lightning restores it before iterating
        dm.load_state_dict(resume)
    sampler = dm.train_dataloader().sampler
    if not isinstance(sampler, DistributedSampler):
        sampler = DistributedSamplerWrapper(sampler, num_replicas=world, rank=rank, shuffle=False)
    sampler.set_epoch(1)
    return list(sampler)


@pytest.mark.parametrize("world", [2, 3])
def test_mid_epoch_resume_under_ddp_is_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, world: int
) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    root = make_split_tree(tmp_path / "data", train=7)  # 21 images: ranks need padding
    done = 1  # batches of 4 every rank trained in epoch 1 before the kill
    trained: list[int] = []
    for rank in range(world):
        full = _rank_epoch(root, world, rank, None)
        resumed = _rank_epoch(root, world, rank, {"epoch": 1, "skip": done * 4})
        # the resumed rank continues its own share where it stopped: no repeats, no crash
        assert resumed == full[done * 4 :]
        trained += [i for i, _ in full]
        # the shares (and seeds) are the ones Lightning's wrapper gave before: same DDP training
        wrapped = DistributedSamplerWrapper(
            EpochSampler(21, 7), num_replicas=world, rank=rank, shuffle=False
        )
        wrapped.set_epoch(1)
        assert full == list(wrapped)
    # the epoch is the one an uninterrupted DDP run sees: every image, the shares disjoint
    assert set(trained) == set(range(21)) and len(trained) == -(-21 // world) * world


def _ddp_fit(data: Path, save_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    """A tiny 2-process CPU DDP fit (2 epochs of 6 batches per rank), last.ckpt every batch."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO / "tests")])
    cmd = [sys.executable, "-m", "lit_vision", "fit", "--config", GTSRB, "--data.root", str(data),
           *TINY, "--trainer.max_epochs", "2", "--trainer.accelerator", "cpu",
           "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.deterministic", "true",
           "--trainer.logger.init_args.save_dir", str(save_dir),
           "--fault_tolerance.save_every_minutes", "1e-9", *extra]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.slow  # three 2-process fits
def test_ddp_killed_mid_epoch_resumes_bitwise(tmp_path: Path) -> None:
    data = make_split_tree(tmp_path / "data", classes=3, train=16, val=4, test=0, size=16)
    full = _ddp_fit(data, tmp_path / "full")
    assert full.returncode == 0, full.stderr[-3000:]
    kill = {"class_path": "faultinject.SignalAt", "init_args": {"epoch": 1, "batch": 3}}
    killed = _ddp_fit(data, tmp_path / "cut", "--trainer.callbacks+=" + json.dumps(kill))
    assert killed.returncode == -9  # both ranks SIGKILLed in epoch 1, after its batch 3
    resumed = _ddp_fit(data, tmp_path / "cut", "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]  # was: IndexError in the sampler
    weights = []
    for run in ("full", "cut"):
        path = tmp_path / run / "gtsrb_cnn" / "version_0" / "checkpoints" / "last.ckpt"
        ckpt = torch.load(path, weights_only=False)
        assert ckpt["global_step"] == 12
        weights.append(ckpt["state_dict"])
    assert [k for k in weights[0] if not torch.equal(weights[0][k], weights[1][k])] == []


class _Strategy:
    """The collectives FaultTolerance uses, answering as the other ranks would."""

    def __init__(self, others_due: bool, rng_of_rank: dict[int, object]) -> None:
        self.others_due, self.rng_of_rank, self.reduced = others_due, rng_of_rank, []

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:  # noqa: A002
        self.reduced.append((decision, all))
        return decision or (self.others_due and not all)

    def broadcast(self, obj: object, src: int = 0) -> object:
        return self.rng_of_rank[src]


def test_mid_epoch_saves_agree_across_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    saved: list[object] = []
    monkeypatch.setattr("lit_vision.resume.save_last", saved.append)
    # this rank's clock is not due yet, another rank's is: saving is collective, so both save
    trainer = SimpleNamespace(world_size=2, strategy=_Strategy(True, {}))
    FaultTolerance(save_every_minutes=10.0).on_train_batch_end(trainer, None, None, None, 0)
    assert trainer.strategy.reduced == [(False, False)] and saved == [trainer]


def test_each_rank_resumes_its_own_rng_state() -> None:
    own = {0: {"torch": torch.tensor([0])}, 1: {"torch": torch.tensor([1])}}
    checkpoint: dict = {"state_dict": {}}
    rank1 = SimpleNamespace(world_size=2, global_rank=1, strategy=_Strategy(False, own))
    FaultTolerance().on_save_checkpoint(rank1, None, checkpoint)
    assert checkpoint["lit_vision_rng_ranks"] == [own[0], own[1]]
    guard = FaultTolerance()
    guard.on_load_checkpoint(rank1, None, checkpoint)
    assert guard._resume["rng"] is own[1]  # not rank 0's dropout stream
    guard.on_load_checkpoint(SimpleNamespace(world_size=1, global_rank=0), None, checkpoint)
    assert guard._resume["rng"] is checkpoint["lit_vision_rng"]  # another world size: rank 0's


def test_materialize_digits_concurrently(tmp_path: Path) -> None:
    root = tmp_path / "digits"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=materialize_digits, args=(root,)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert len(list(root.rglob("*.png"))) == 1797
    assert len((root / "split_manifest.csv").read_text().splitlines()) == 1798
    assert not (tmp_path / ".digits.partial").exists()


def test_lr_scaling_before_scheduler() -> None:
    assert lr_scale_factor("none", 8, 2) == 1.0
    assert lr_scale_factor("linear", 4, 2) == 8.0
    assert lr_scale_factor("sqrt", 2, 2) == pytest.approx(2.0)
    from functools import partial

    from lit_vision.schedulers import WarmupCosineLR

    model = CNNClassifier(
        3,
        channels=[8],
        hidden=0,
        optimizer=partial(torch.optim.SGD, lr=0.1),
        scheduler=partial(WarmupCosineLR, total_steps=100),
    )
    model._trainer = SimpleNamespace(
        world_size=4, accumulate_grad_batches=1, estimated_stepping_batches=100
    )
    model.scale_lr = "linear"
    config = model.configure_optimizers()
    assert config["optimizer"].param_groups[0]["initial_lr"] == pytest.approx(0.4)
    assert config["lr_scheduler"]["scheduler"].base_lrs == pytest.approx([0.4])


def test_auto_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert auto_precision("auto") == auto_precision("gpu") == auto_precision(None) == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    native = {"bf16": True}
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: native["bf16"]
    )
    assert auto_precision("cpu") == "32-true"  # a GPU present but CPU asked for
    assert auto_precision("auto", "ddp") == auto_precision("cuda") == "bf16-mixed"
    assert auto_precision("gpu", "ddp_fork") == "16-mixed"  # no CUDA query before forking
    native["bf16"] = False
    assert auto_precision("gpu") == "16-mixed"


def test_overlays_stack_without_clobbering(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "fit",
                "--config",
                GTSRB,
                "--config",
                str(REPO / "configs" / "ddp.yaml"),
                "--config",
                str(REPO / "configs" / "multinode.yaml"),
                "--data.root",
                "x",
                "--print_config",
            ]
        )
        == 0
    )
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["trainer"]["strategy"] == "ddp" and config["trainer"]["num_nodes"] == 2
    assert config["trainer"]["logger"]["init_args"]["name"] == "gtsrb_cnn"
    assert config["checkpoint"]["monitor"] == "val/acc" and config["scale_lr"] == "none"
    assert config["model"]["init_args"]["label_smoothing"] == 0.1
