"""Frozen-feature cache: the head trained on cached features equals the head trained through the
live frozen backbone on the same views; the DataModule serves features only while the backbone is
frozen; the automatic schedule switches, stops and resumes as it says."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import timm
import torch
from conftest import REPO, make_split_tree

from lit_vision.__main__ import run_command
from lit_vision.augment import AugmentSettings
from lit_vision.features import FeatureBatches, FeatureSet, augmented_view, compute_features
from lit_vision.networks import GlobalPool, classifier_head

CONFIG = str(REPO / "configs" / "transfer.yaml")


def _tiny_backbone() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "test_efficientnet", pretrained=False, num_classes=0, global_pool=""
    ).eval()


def test_head_on_cached_features_equals_head_through_live_backbone() -> None:
    backbone, pool = _tiny_backbone(), GlobalPool("avg")
    images = torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8)
    targets = torch.randint(0, 3, (24,))
    augment = AugmentSettings(hflip=True, rotate=15, color_jitter=0.3).batch_augment()

    def embed(x: torch.Tensor) -> torch.Tensor:
        return pool(backbone(x.float() / 255))

    views, batch = 3, 8
    cached = compute_features(
        embed,
        lambda idx: images[list(idx)],
        list(range(24)),
        views=views,
        seed=5,
        augment=augment,
        batch_size=batch,
        device=torch.device("cpu"),
    )
    assert cached.shape[:2] == (views, 24)
    torch.manual_seed(1)
    head = classifier_head(cached.shape[-1], 3, hidden=16, dropout=0.0)
    live_head, cache_head = copy.deepcopy(head), copy.deepcopy(head)
    opt_live = torch.optim.SGD(live_head.parameters(), lr=0.5)
    opt_cache = torch.optim.SGD(cache_head.parameters(), lr=0.5)
    live_losses, cache_losses = [], []
    for epoch in range(4):  # each epoch one view of every batch, as the training loader draws them
        view = epoch % views
        for start in range(0, 24, batch):
            idx = list(range(start, start + batch))
            with torch.no_grad():  # the frozen backbone, run live on the same draw
                live_x = embed(augmented_view(images[idx], view, 5, idx[0], augment))
            for h, opt, x, out in (
                (live_head, opt_live, live_x, live_losses),
                (cache_head, opt_cache, cached[view, idx], cache_losses),
            ):
                loss = torch.nn.functional.cross_entropy(h(x), targets[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                out.append(loss.item())
    assert live_losses == pytest.approx(cache_losses, abs=1e-5)
    assert len(set(round(v, 4) for v in cache_losses)) > 3  # a real curve, not a constant
    # The views differ from each other (the augmentation is on) and repeat exactly per seed.
    assert not torch.allclose(cached[0], cached[1])
    again = augmented_view(images[:8], 1, 5, 0, augment)
    assert torch.equal(again, augmented_view(images[:8], 1, 5, 0, augment))


def test_feature_batches_draw_one_view_per_sample_and_epoch() -> None:
    feats = torch.arange(3 * 4 * 2, dtype=torch.float32).view(3, 4, 2)
    ds = FeatureBatches(FeatureSet(feats, torch.tensor([0, 1, 0, 1])))
    x, y = ds.__getitems__(
        [(0, 4), (3, 2), 1]
    )  # (index, seed): view = seed % 3; plain index: view 0
    assert torch.equal(x, torch.stack([feats[1, 0], feats[2, 3], feats[0, 1]]))
    assert y.tolist() == [0, 1, 1]


def _fit(tmp_path: Path, *extra: str) -> object:
    root = make_split_tree(tmp_path / "data", classes=3, train=16, val=6, test=0, size=24)
    return run_command(
        [
            "fit",
            "--config",
            CONFIG,
            "--small_images",  # 24 px images: keep the transfer recipe under test
            "null",
            "--data.root",
            str(root),
            "--data.image_size",
            "32",
            "--data.num_workers",
            "0",
            "--data.batch_size",
            "8",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "tb"),
            "--model.init_args.pretrained",
            "false",
            "--model.init_args.backbone",
            "test_efficientnet",
            *extra,
        ]
    )


def test_after_unfreezing_the_frozen_prefix_is_served_and_equals_the_live_path(
    tmp_path: Path,
) -> None:
    cli = _fit(
        tmp_path,
        "--model.init_args.freeze_epochs",
        "2",
        "--trainer.max_epochs",
        "3",
        "--model.init_args.unfreeze_blocks",
        "1",
    )
    model, dm = cli.model, cli.datamodule
    assert model.phase == 1 and not model._features  # pooled features dropped once unfrozen
    loader = dm.train_dataloader()
    assert isinstance(loader.dataset, FeatureBatches)
    prefix = loader.dataset.features.features  # (views, N, C, h, w) activations of the frozen part
    assert prefix.ndim == 5 and prefix.shape[2] != 3
    # The logits from cached activations equal the live model's from the images.
    model.eval()
    images = dm.datasets["train"].cache[:4].copy()  # the cache is a read-only memory map
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    with torch.no_grad():
        live = model(x)
        cached = model(prefix[0, :4].to(torch.float32))
    assert torch.allclose(live, cached, atol=1e-4)
    # A backbone without the EfficientNet layout (or unfreezing everything) gets images.
    assert model.net.split(0) is None


def test_prefix_split_matches_the_whole_backbone() -> None:
    from lit_vision.networks import TransferNet

    net = TransferNet("test_efficientnet", 3, pretrained=False).eval()
    x = torch.randn(2, 3, 32, 32)
    for k in range(1, len(net.groups())):
        prefix, suffix = net.split(k)
        assert torch.allclose(net.embed_suffix(suffix, prefix(x)), net.embed(x), atol=1e-5)
        frozen = {id(p) for g in net.groups()[:-k] for p in g}
        assert {id(p) for p in prefix.parameters()} == frozen


def test_features_are_served_in_the_head_phase(tmp_path: Path) -> None:
    cli = _fit(
        tmp_path,
        "--model.init_args.freeze_epochs",
        "auto",
        "--model.init_args.unfreeze_blocks",
        "0",
        "--model.init_args.head_patience",
        "1",
        "--model.init_args.max_head_epochs",
        "3",
        "--trainer.max_epochs",
        "10",
    )
    model, trainer = cli.model, cli.trainer
    # Head only: the run ends when the head plateaus (at most max_head_epochs), on features.
    assert trainer.current_epoch <= 3 and model.phase == 0
    loader = cli.datamodule.train_dataloader()
    assert isinstance(loader.dataset, FeatureBatches) and loader.dataset.features.views == 2
    assert model.schedule_state["switch_epoch"] is None and model.schedule_state["best"] is not None


def test_auto_schedule_switches_and_resume_keeps_the_decision(tmp_path: Path) -> None:
    cli = _fit(
        tmp_path,
        "--model.init_args.freeze_epochs",
        "auto",
        "--model.init_args.unfreeze_blocks",
        "1",
        "--model.init_args.head_patience",
        "1",
        "--model.init_args.max_head_epochs",
        "2",
        "--model.init_args.finetune_patience",
        "1",
        "--model.init_args.deepen_below",
        "null",
        "--trainer.max_epochs",
        "6",
    )
    state = cli.model.schedule_state
    assert (
        state["switch_epoch"] == 2
    )  # max_head_epochs reached (or the plateau) -> unfreeze at epoch 2
    assert cli.model.phase == 1
    last = next((tmp_path / "tb").rglob("last.ckpt"))
    saved = torch.load(last, map_location="cpu", weights_only=True)["lit_vision_schedule"]
    assert saved["switch_epoch"] == 2
    # A model restored from the checkpoint continues the same schedule.
    from lit_vision.transfer import TransferClassifier

    fresh = TransferClassifier(
        3, backbone="test_efficientnet", pretrained=False, freeze_epochs="auto"
    )
    fresh.on_load_checkpoint({"lit_vision_schedule": saved})
    assert fresh.phase_for(1) == 0 and fresh.phase_for(2) == 1


def test_deepening_trains_the_whole_backbone_from_the_best_weights(tmp_path: Path) -> None:
    from lit_vision.transfer import TransferClassifier

    restored: list[float] = []
    original = TransferClassifier._restore_best

    def spy(self: TransferClassifier) -> None:
        original(self)
        best = getattr(self, "_best_weights", None) or {}
        params = dict(self.net.named_parameters())
        restored.append(max(float((params[k].detach() - v).abs().max()) for k, v in best.items()))

    TransferClassifier._restore_best = spy
    try:
        cli = _fit(
            tmp_path,
            "--model.init_args.unfreeze_blocks",
            "1",
            "--model.init_args.head_patience",
            "1",
            "--model.init_args.max_head_epochs",
            "2",
            "--model.init_args.finetune_patience",
            "1",
            "--model.init_args.budget_minutes",
            "null",
            "--model.init_args.deepen_below",
            "1.01",  # never reached: always deepen
            "--model.init_args.deepen_minutes",
            "null",
            "--trainer.max_epochs",
            "12",
        )
    finally:
        TransferClassifier._restore_best = original
    model, state = cli.model, cli.model.schedule_state
    assert state["switch_epoch"] == 2
    assert state["deepen_epoch"] is not None and state["deepen_epoch"] > state["switch_epoch"]
    assert model.phase == 2 and model.phase_for(state["deepen_epoch"]) == 2
    # Every backbone parameter trains, on images (the prefix's activations are gone).
    assert all(p.requires_grad for p in model.net.features.parameters())
    assert not model._prefix and not model._features
    assert not isinstance(cli.datamodule.train_dataloader().dataset, FeatureBatches)
    # transfer.yaml's deepen_lr for every group, BatchNorm adapting to this data.
    assert [g["lr"] for g in cli.trainer.optimizers[0].param_groups] == [0.001, 0.001]
    model.train()
    norms = [m for m in model.net.features.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.training for m in norms)
    # Each phase started from the previous one's best weights, restored exactly.
    assert len(restored) == 2 and max(restored) == 0.0
    # The whole-backbone phase stops on patience; resume keeps the decision.
    saved = torch.load(
        next((tmp_path / "tb").rglob("last.ckpt")), map_location="cpu", weights_only=True
    )["lit_vision_schedule"]
    fresh = TransferClassifier(
        3, backbone="test_efficientnet", pretrained=False, freeze_epochs="auto"
    )
    fresh.on_load_checkpoint({"lit_vision_schedule": saved})
    assert fresh.phase_for(state["deepen_epoch"]) == 2
    assert fresh.phase_for(state["deepen_epoch"] - 1) == 1


def test_deepen_blocks_limits_what_trains_after_deepening() -> None:
    from lit_vision.transfer import TransferClassifier

    model = TransferClassifier(
        3,
        backbone="test_efficientnet",
        pretrained=False,
        freeze_epochs="auto",
        unfreeze_blocks=1,
        deepen_below=0.9,
        deepen_blocks=2,
    )
    groups = model.net.groups()
    model.schedule_state.update(switch_epoch=1, deepen_epoch=3)
    trains = [
        [all(p.requires_grad for p in g) for g in groups]
        for epoch in range(4)
        if model.apply_phase(epoch) is not None
    ]
    n = len(groups)
    assert trains[0] == [False] * n  # head only
    assert trains[1] == trains[2] == [False] * (n - 1) + [True]  # the last block
    assert trains[3] == [False] * (n - 2) + [True, True]  # the last two after deepening
    # Not deeper than the first fine-tuning: no deepening at all.
    model.deepen_blocks = 1
    model.schedule_state.update(deepen_epoch=None, best=0.5)
    assert model._deepen(5) is False


def test_features_in_bf16_while_training_in_fp32(tmp_path: Path) -> None:
    args = ("--trainer.precision", "32-true", "--trainer.max_epochs", "2")
    args += ("--model.init_args.freeze_epochs", "1", "--model.init_args.unfreeze_blocks", "1")
    cli = _fit(tmp_path, *args, "--model.init_args.feature_precision", "bf16")
    model = cli.model
    prefix = model._prefix["train"].features
    assert prefix.dtype == torch.bfloat16  # the frozen pass ran in bf16 autocast
    assert all(p.dtype == torch.float32 for p in model.net.head.parameters())
    assert model(prefix[0, :2]).dtype == torch.float32  # trained on them in fp32
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])


def test_deepen_lr_is_annealed_over_the_deep_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    import time
    from types import SimpleNamespace

    from lit_vision.transfer import TransferClassifier

    model = TransferClassifier(
        3,
        backbone="test_efficientnet",
        pretrained=False,
        freeze_epochs="auto",
        deepen_below=0.9,
        deepen_lr=0.01,
        deepen_minutes=1.0,
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model._trainer = SimpleNamespace(optimizers=[opt])
    model.phase, model._clock = 2, 0.0
    model.schedule_state["deepen_elapsed"] = 10.0  # deepened 10 s into the budget
    for now, expected in ((10.0, 0.01), (40.0, 0.005), (70.0, 0.0), (100.0, 0.0)):
        monkeypatch.setattr(time, "monotonic", lambda now=now: now)
        model.on_train_batch_start(None, 0)
        assert opt.param_groups[0]["lr"] == pytest.approx(expected, abs=1e-12)
