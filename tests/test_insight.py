"""InsightCallback (TensorBoard figures, custom scalars, hparams, run report) and lr_find."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from lit_vision import CNNClassifier, ImageFolderDataModule
from lit_vision.__main__ import main, run_command
from lit_vision.commands.lr_find import main as lr_find_main
from lit_vision.insight import InsightCallback

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "gtsrb_cnn.yaml")
QUIET = [
    "--data.num_workers",
    "0",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
]


def _events(log_dir: Path) -> EventAccumulator:
    ea = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    ea.Reload()
    return ea


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Two tiny epochs through the CLI, then test on the best checkpoint."""
    from conftest import make_split_tree

    tmp = tmp_path_factory.mktemp("insight")
    tree = make_split_tree(tmp / "data", size=16)
    cli = run_command(
        [
            "fit",
            "--config",
            CONFIG,
            "--data.root",
            str(tree),
            "--data.image_size",
            "16",
            "--trainer.max_epochs",
            "2",
            "--trainer.logger.init_args.save_dir",
            str(tmp / "tb"),
            "--insight.worst_k",
            "4",
            "--trainer.log_every_n_steps",
            "1",
            *QUIET,
        ]
    )
    cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)
    log_dir = Path(cli.trainer.log_dir)
    return log_dir, json.loads((log_dir / "report.json").read_text())


def test_report_fields_are_filled(fitted: tuple[Path, dict]) -> None:
    log_dir, r = fitted
    assert r["run"]["status"] == "tested" and r["run"]["stages"] == ["fit", "test"]
    env = r["environment"]
    assert env["python"] and env["cpu"] and env["cpu_cores_logical"] >= 1
    for pkg in ("torch", "torchvision", "lightning", "numpy", "albumentations", "timm"):
        assert env["packages"][pkg], pkg
    ds = r["dataset"]
    assert ds["num_classes"] == 3 and ds["input_size"] == 16
    assert {k: v["images"] for k, v in ds["splits"].items()} == {"train": 24, "val": 12, "test": 12}
    assert ds["splits"]["train"]["sizes"]["most_common"] == "16x16"
    t = r["timing"]
    assert set(t["data_setup"]) == {"fit", "test"} and t["data_setup"]["fit"] > 0
    phase = t["train_phases"]["train"]
    assert phase["epochs"] == [0, 1] and phase["images"] == 48 and phase["seconds"] > 0
    assert t["validation"] > 0 and t["test"] > 0 and t["fit_wall"] > phase["seconds"]
    assert t["train_images_per_s"] > 0
    m = r["model"]
    assert m["total_params"] == m["trainable_params"] > 1000 and "SimpleCNN" in m["summary"]
    assert [h["epoch"] for h in r["history"]] == [0, 1]
    assert all("val/acc" in h and "train/loss_epoch" in h for h in r["history"])
    lrs = [h["lr/0"] for h in r["history"]]  # WarmupCosineLR over 2 one-batch epochs
    assert lrs[0] != lrs[1] and all(0 < lr <= 0.005 for lr in lrs)  # gtsrb_cnn's peak lr
    for stage in ("val", "test"):
        ev = r["evaluation"][stage]
        assert ev["images"] == 12 and len(ev["per_class"]) == 3
        assert sum(c["support"] for c in ev["per_class"]) == 12
        assert 0 <= ev["macro_f1"] <= 1
    assert r["final_metrics"]["test/acc"] == pytest.approx(
        r["evaluation"]["test"]["accuracy"], abs=1e-6
    )
    ck = r["checkpoints"]
    assert Path(ck["best"]).is_file() and Path(ck["last"]).is_file()
    md = (log_dir / "report.md").read_text()
    for heading in (
        "## Environment",
        "## Dataset",
        "## Time per stage",
        "## Model",
        "## Metrics",
        "### Per class on val",
        "### Per class on test",
    ):
        assert heading in md
    assert "not measured" not in md and "not run" not in md


def test_tensorboard_has_figures_layout_and_hparams(fitted: tuple[Path, dict]) -> None:
    log_dir, _ = fitted
    ea = _events(log_dir)
    tags = ea.Tags()
    for tag in (
        "val/confusion_matrix",
        "val/worst_misclassified",
        "test/confusion_matrix",
        "test/worst_misclassified",
    ):
        assert tag in tags["images"], tag
    assert len(ea.Images("val/confusion_matrix")) == 2  # every epoch with every_n_epochs 1
    assert "custom_scalars__config__" in tags["tensors"]
    content = ea.PluginTagToContent("hparams")
    kinds = {
        plugin_data_pb2.HParamsPluginData.FromString(v).WhichOneof("data") for v in content.values()
    }
    assert {"experiment", "session_start_info", "session_end_info"} <= kinds
    start = next(
        plugin_data_pb2.HParamsPluginData.FromString(v)
        for v in content.values()
        if plugin_data_pb2.HParamsPluginData.FromString(v).WhichOneof("data")
        == "session_start_info"
    )
    assert "convs_per_block" in start.session_start_info.hparams
    hp = [e.value for e in ea.Scalars("hp_metric")]
    assert hp and hp[-1] != -1  # the real best val/acc, not Lightning's placeholder
    assert "lr-AdamW" in tags["scalars"]


class _TwoPhaseCNN(CNNClassifier):
    """A CNN with a transfer-style ``phase``, set (like TransferClassifier) in its own epoch-start
    hook, which Lightning calls after the callbacks' hook; phase 0 trains the head only.
    """

    phase: str | None = None

    def on_train_epoch_start(self) -> None:
        self.phase = "frozen" if self.current_epoch < 1 else "unfrozen"
        for p in self.net.features.parameters():
            p.requires_grad = self.phase == "unfrozen"


def test_phase_attribute_is_timed_per_phase(tmp_path: Path, split_tree: Path) -> None:
    dm = ImageFolderDataModule(split_tree, image_size=16, batch_size=8, num_workers=0)
    model = _TwoPhaseCNN(dm.num_classes, class_names=dm.classes, channels=(8,), hidden=0)
    cb = InsightCallback(every_n_epochs=2, worst_k=0)
    trainer = L.Trainer(
        max_epochs=2,
        logger=L.pytorch.loggers.TensorBoardLogger(tmp_path, name="p"),
        callbacks=[cb],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(model, datamodule=dm)
    phases = cb.report["timing"]["train_phases"]
    assert list(phases) == ["frozen", "unfrozen"]
    assert phases["frozen"]["epochs"] == [0] and phases["unfrozen"]["epochs"] == [1]
    assert all(p["images"] == 24 and p["seconds"] > 0 for p in phases.values())
    assert phases["frozen"]["trainable_params"] < phases["unfrozen"]["trainable_params"]
    assert [h["phase"] for h in cb.report["history"]] == ["frozen", "unfrozen"]
    ea = _events(Path(trainer.log_dir))
    assert len(ea.Images("val/confusion_matrix")) == 1  # every 2nd epoch only
    assert "val/worst_misclassified" not in ea.Tags()["images"]
    assert (Path(trainer.log_dir) / "report.md").is_file()


def test_fast_dev_run_writes_no_report(
    tmp_path: Path, split_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    main(
        [
            "fit",
            "--config",
            CONFIG,
            "--data.root",
            str(split_tree),
            "--trainer.fast_dev_run",
            "true",
            "--data.image_size",
            "16",
            *QUIET,
        ]
    )
    assert not list(tmp_path.rglob("report.*"))


def test_lr_find_saves_plot_and_suggestion(
    tmp_path: Path, split_tree: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "lrf"
    rc = lr_find_main(
        [
            "--config",
            CONFIG,
            "--data.root",
            str(split_tree),
            "--data.image_size",
            "16",
            "--data.batch_size",
            "4",
            "--num_training",
            "16",
            "--early_stop_threshold",
            "0",
            "--out",
            str(out),
            *QUIET,
        ]
    )
    assert rc == 0
    result = json.loads((out / "gtsrb_cnn_lr_find.json").read_text())
    assert len(result["lr"]) == 16 and result["lr"][0] < result["lr"][-1]
    assert 1e-6 <= result["suggestion"] <= 1.0
    assert (out / "gtsrb_cnn_lr_find.png").stat().st_size > 1000
    assert "suggested learning rate" in capsys.readouterr().out
    assert not (tmp_path / "tb_logs").exists() and not list(Path.cwd().glob(".lr_find_*.ckpt"))
