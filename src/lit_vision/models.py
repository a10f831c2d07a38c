"""LightningModules: the shared ImageClassifier system and the scratch CNNClassifier."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from lit_vision.networks import Pooling, SimpleCNN

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
        self.compile = compile
        self.register_buffer("mean", torch.tensor(mean or IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std or IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.train_metrics = _stage_metrics(num_classes, "train/")
        self.val_metrics = _stage_metrics(num_classes, "val/")
        self.test_metrics = _stage_metrics(num_classes, "test/")
        self.net: nn.Module

    # Preferred input side for the DataModule when ``data.image_size`` is not set.
    default_image_size: int | None = None

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 0-255 or float 0-1 images to normalised float, in the model's memory format."""
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
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
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True,
                 sync_dist=stage != "train", batch_size=len(y))
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "train")
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch[0]).softmax(dim=1)

    def param_groups(self) -> list[dict[str, Any]]:
        """Parameter groups for the optimizer; subclasses split backbone and head."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.param_groups())
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
        hidden: Hidden units of the dense head (0 for none).
        dropout: Head dropout.
        optimizer: Optimizer factory (Adam 1e-3 by default).
        scheduler: Optional LR scheduler factory.
        label_smoothing: Cross-entropy label smoothing.
        mean: Normalisation mean.
        std: Normalisation std.
        channels_last: Channels-last memory format.
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
        hidden: int = 256,
        dropout: float = 0.3,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        label_smoothing: float = 0.0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        channels_last: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__(num_classes, class_names, optimizer, scheduler, label_smoothing, mean, std, channels_last,
                         compile)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.net = SimpleCNN(
            num_classes,
            channels=channels,
            convs_per_block=convs_per_block,
            batch_norm=batch_norm,
            block_dropout=block_dropout,
            pooling=pooling,
            hidden=hidden,
            dropout=dropout,
        )
