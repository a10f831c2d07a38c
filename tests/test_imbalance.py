"""Class imbalance: class-weighted loss, the balanced sampler, balanced accuracy, weak classes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import REPO, write_images

from lit_vision import CNNClassifier, ImageFolderDataModule
from lit_vision.__main__ import main
from lit_vision.balance import imbalance_ratio, inverse_frequency_weights, resolve
from lit_vision.metrics import classification_loss
from lit_vision.report import evaluation_from_confusion, render_markdown
from lit_vision.sampling import EpochSampler, WeightedEpochSampler


def make_imbalanced_tree(root: Path, train: tuple[int, ...] = (28, 4), val: int = 4) -> Path:
    """ROOT/{train,val}/class_C/*.png with ``train[c]`` training images of class ``c``."""
    for c, n in enumerate(train):
        write_images(root / "train" / f"class_{c}", n, seed=c, label=c, size=16)
        write_images(root / "val" / f"class_{c}", val, seed=100 + c, label=c, size=16)
    return root


def _datamodule(root: Path, **kw: object) -> ImageFolderDataModule:
    return ImageFolderDataModule(
        root, image_size=16, batch_size=8, num_workers=0, disk_cache=False, **kw
    )


def _model(dm: ImageFolderDataModule, **kw: object) -> CNNClassifier:
    return CNNClassifier(
        dm.num_classes, class_names=dm.classes, channels=(8,), hidden=0, compile=False, **kw
    )


def _fit_one_batch(model: CNNClassifier, dm: ImageFolderDataModule) -> L.Trainer:
    trainer = L.Trainer(fast_dev_run=True, logger=False, enable_progress_bar=False)
    trainer.fit(model, datamodule=dm)
    return trainer


def test_auto_and_weights_from_class_counts() -> None:
    assert imbalance_ratio([28, 4]) == 7.0 and imbalance_ratio([5, 5]) == 1.0
    assert resolve("auto", [28, 4], "k") and not resolve("auto", [12, 4], "k")
    assert not resolve("auto", [10, 10], "k") and resolve("on", [10, 10], "k")
    assert not resolve("auto", None, "k")  # unknown counts: auto stays off
    with pytest.raises(ValueError, match="'off', 'auto' or 'on'"):
        resolve("yes", [1], "model.class_weights")  # type: ignore[arg-type]
    weights = inverse_frequency_weights([28, 4])
    # sklearn's "balanced" n / (k * count) = [32/56, 32/8], rescaled to mean 1.
    raw = np.array([32 / 56, 32 / 8])
    assert weights == pytest.approx((raw / raw.mean()).tolist())
    assert np.mean(weights) == pytest.approx(1.0) and weights[1] / weights[0] == pytest.approx(7)
    assert inverse_frequency_weights([6, 6, 6]) == pytest.approx([1.0, 1.0, 1.0])


def test_auto_turns_class_weights_on_for_an_imbalanced_tree(tmp_path: Path) -> None:
    dm = _datamodule(make_imbalanced_tree(tmp_path / "data"))
    assert dm.class_counts == [28, 4]
    model = _model(dm, label_smoothing=0.1)
    _fit_one_batch(model, dm)
    assert model.loss_weight is not None
    assert model.loss_weight.tolist() == pytest.approx([0.25, 1.75])
    assert "loss_weight" not in model.state_dict()  # recomputed at every fit, not saved
    # The weighted loss, label smoothing included, is what training uses.
    logits, y = torch.randn(6, 2), torch.tensor([0, 0, 0, 0, 1, 1])
    expected = torch.nn.functional.cross_entropy(
        logits, y, weight=model.loss_weight, label_smoothing=0.1
    )
    assert classification_loss(logits, y, model.loss_weight, 0.1) == pytest.approx(expected)


def test_auto_leaves_class_weights_off_for_a_balanced_tree(tmp_path: Path) -> None:
    dm = _datamodule(make_imbalanced_tree(tmp_path / "data", train=(8, 8)))
    model = _model(dm)
    _fit_one_batch(model, dm)
    assert model.loss_weight is None
    model = _model(dm, class_weights="on")
    _fit_one_batch(model, dm)
    assert model.loss_weight is not None and model.loss_weight.tolist() == pytest.approx([1, 1])


def test_balanced_sampler_turns_class_weights_off(tmp_path: Path) -> None:
    root = make_imbalanced_tree(tmp_path / "data")
    for balance in ("on", "auto"):
        dm = _datamodule(root, balance=balance)
        model = _model(dm, class_weights="on")
        _fit_one_batch(model, dm)
        assert model.loss_weight is None
        assert isinstance(dm.train_dataloader().sampler, WeightedEpochSampler)
    dm = _datamodule(root)  # balance defaults to off: the plain shuffle
    dm.setup("fit")
    sampler = dm.train_dataloader().sampler
    assert type(sampler) is EpochSampler


def test_balanced_sampler_draws_classes_equally_and_deterministically() -> None:
    targets = [0] * 700 + [1] * 100 + [2] * 200
    sampler = WeightedEpochSampler(targets, seed=3)
    sampler.set_epoch(0)
    epoch0 = list(sampler)
    assert len(epoch0) == len(targets) == len(sampler)  # same epoch length
    counts = np.bincount([targets[i] for i, _ in epoch0], minlength=3)
    assert counts.min() / counts.max() > 0.8, counts  # ~1/3 each (the tree is 7:1:2)
    again = WeightedEpochSampler(targets, seed=3)
    again.set_epoch(0)
    assert list(again) == epoch0  # a pure function of (seed, epoch)
    again.set_epoch(1)
    epoch1 = list(again)
    assert epoch1 != epoch0
    other_seed = WeightedEpochSampler(targets, seed=4)
    other_seed.set_epoch(0)
    assert list(other_seed) != epoch0
    resumed = WeightedEpochSampler(targets, seed=3)  # a mid-epoch resume skips what was trained
    resumed.set_epoch(1)
    resumed.skip = 250
    assert list(resumed) == epoch1[250:]


def test_report_names_the_weak_class() -> None:
    # class "b" is mostly taken for "a": recall 0.3 against a balanced accuracy of ~0.73.
    cm = np.array([[90, 5, 5], [65, 30, 5], [5, 5, 90]])
    ev = evaluation_from_confusion(cm, ["a", "b", "c"])
    assert ev["balanced_accuracy"] == pytest.approx((0.9 + 0.3 + 0.9) / 3)
    assert ev["balanced_accuracy"] == pytest.approx(ev["macro_recall"])
    assert ev["weak_classes"] == [
        {"class": "b", "recall": pytest.approx(0.3), "support": 100, "confused_with": "a"}
    ]
    md = render_markdown({"evaluation": {"val": {**ev, "when": "epoch 3"}}})
    assert "**Weak classes**" in md and "b (recall 0.30 of 100, mostly taken for a)" in md
    balanced = evaluation_from_confusion(np.diag([10, 10]), ["a", "b"])
    assert balanced["weak_classes"] == []
    assert "Weak classes: none" in render_markdown(
        {"evaluation": {"val": {**balanced, "when": "x"}}}
    )


def test_balanced_acc_is_logged_and_monitored_by_the_checkpoint(tmp_path: Path) -> None:
    root = make_imbalanced_tree(tmp_path / "data")
    rc = main(
        [
            "fit",
            "--config",
            str(REPO / "configs/gtsrb_cnn.yaml"),
            "--data.root",
            str(root),
            "--data.image_size",
            "16",
            "--data.batch_size",
            "8",
            "--data.num_workers",
            "0",
            "--data.disk_cache",
            "false",
            "--model.init_args.channels",
            "[8, 16]",
            "--trainer.max_epochs",
            "2",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "tb"),
            "--checkpoint.monitor",
            "val/balanced_acc",
        ]
    )
    assert rc == 0
    run = tmp_path / "tb" / "gtsrb_cnn" / "version_0"
    report = json.loads((run / "report.json").read_text())
    final = report["final_metrics"]
    assert {"train/balanced_acc", "val/balanced_acc", "val/acc", "val/f1"} <= set(final)
    ck = report["checkpoints"]
    assert ck["monitor"] == "val/balanced_acc" and ck["best_score"] is not None
    assert max(h["val/balanced_acc"] for h in report["history"]) == pytest.approx(
        ck["best_score"], abs=1e-6
    )
    # The CLI's default filename template still formats (val/acc is logged beside it).
    best = Path(ck["best"]).name
    assert re.fullmatch(r"best-epoch0[01]-acc\d\.\d{4}\.ckpt", best), best
    assert (run / "checkpoints" / best).is_file()
    ev = report["evaluation"]["val"]
    assert "balanced_accuracy" in ev and "weak_classes" in ev
    assert "balanced accuracy" in (run / "report.md").read_text()


def test_class_weights_is_saved_only_where_the_class_takes_it(tmp_path: Path) -> None:
    from lit_vision.models import ImageClassifier

    class Plain(ImageClassifier):  # a subclass without class_weights (like TransferClassifier)
        def __init__(self, num_classes: int, *, hidden: int = 4) -> None:
            super().__init__(num_classes)

        def configure_network(self) -> torch.nn.Module:
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(self.num_classes))

    assert "class_weights" not in Plain(2).hparams  # load_from_checkpoint(**hparams) works
    assert Plain(2).class_weights == "auto"
    assert CNNClassifier(2, class_weights="off").hparams["class_weights"] == "off"
    with pytest.raises(ValueError, match="model.class_weights"):
        CNNClassifier(2, class_weights="yes")  # type: ignore[arg-type]
