"""LightningModules: the shared ImageClassifier system and the scratch CNNClassifier.

The pretrained-backbone system, ``TransferClassifier``, lives in :mod:`lit_vision.transfer`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MeanMetric

from lit_vision.balance import Balance, resolve
from lit_vision.contrast import CONTRAST_STEPS
from lit_vision.distributed import ScaleLR, broadcast_buffers
from lit_vision.errors import ConfigError
from lit_vision.metrics import classification_loss, log_step, loss_class_weights, stage_metrics
from lit_vision.networks import Pooling, SimpleCNN
from lit_vision.optim import build_optimization
from lit_vision.spec import CHECKPOINT_KEY, inference_spec
from lit_vision.whitening import patch_whitening_filters

# How forward() normalises pixels: see ImageClassifier's ``input_norm``.
InputNorm = Literal["dataset", "image", "equalize", "local", "clahe"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageClassifier(L.LightningModule):
    """The shared classification system: normalisation, loss, metrics, optimizer, schedule.

    A template: ``__init__`` saves every constructor argument of the concrete class as
    hyperparameters (but the optimizer and scheduler factories), then calls
    :meth:`configure_network` for ``self.net`` (an ``nn.Module`` mapping normalised images to
    logits). Subclasses declare their own arguments keyword-only, pass the base ones on by
    keyword and override ``configure_network`` (reading ``self.hparams``); a subclass that sets
    ``self.net`` itself after ``super().__init__()`` works too. ``forward`` takes uint8 (0-255)
    or float (0-1) RGB batches, NCHW, so a checkpoint or an export needs no preprocessing
    beyond resizing.

    Args:
        num_classes: Number of classes (linked from the DataModule by the CLI).
        class_names: Class names in label order (linked from the DataModule).
        optimizer: Optimizer factory; Adam at 1e-3 by default (the course's choice).
        scheduler: Optional LR scheduler factory. Schedulers with a ``total_steps`` argument
            left unset (``OneCycleLR``, ``WarmupCosineLR``) get the run's optimizer steps and
            are stepped per batch; others are stepped per epoch.
        label_smoothing: Cross-entropy label smoothing.
        mean: Per-channel normalisation mean (0-1 scale); ``None``: :meth:`default_normalization`.
        std: Per-channel normalisation std (0-1 scale); ``None``: :meth:`default_normalization`.
        channels_last: Run convolutions in channels-last memory format (faster on CPU and
            tensor-core GPUs).
        input_norm: ``dataset`` subtracts ``mean`` and divides by ``std``; ``image``
            standardises each image by its own mean and std (robust to the very dark and
            very bright photos of road signs; ignores ``mean``/``std``); ``equalize`` first
            equalises each image's luminance histogram (in the graph, so exports take raw
            pixels too), then standardises it; ``local`` normalises each pixel against its
            neighbourhood (:func:`local_contrast`), then standardises the image; ``clahe``
            first equalises each image's lightness tile by tile (OpenCV's CLAHE,
            :func:`~lit_vision.contrast.clahe`), then standardises it.
        compile: Run the network through ``torch.compile`` (first steps are slow while it
            compiles; checkpoints are unchanged).
        scale_lr: Scale the learning rates with the effective batch (``lr_scale_factor``):
            ``none``, ``linear`` or ``sqrt``. Saved with the hyperparameters.
        class_weights: Weight the training loss by inverse class frequency (mean weight 1,
            from the DataModule's ``class_counts`` at fit): ``on``, ``off`` or ``auto`` (on when
            the largest class has over 3x the images of the smallest). Off while the
            DataModule's balanced sampler is on. Validation and test losses stay unweighted.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        class_names: Sequence[str] | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        label_smoothing: float = 0.0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        channels_last: bool = True,
        input_norm: InputNorm = "dataset",
        compile: bool = False,
        scale_lr: ScaleLR = "none",
        class_weights: Balance = "auto",
    ) -> None:
        super().__init__()
        # Collects the arguments of every __init__ on the way here, the subclass's included, less
        # a base argument the subclass does not take (load_from_checkpoint passes them all back).
        takes = inspect.signature(type(self).__init__).parameters
        untaken = [] if "class_weights" in takes else ["class_weights"]
        self.save_hyperparameters(ignore=["optimizer", "scheduler", *untaken])
        self.num_classes = num_classes
        self.class_names = (
            list(class_names) if class_names else [str(i) for i in range(num_classes)]
        )
        if len(self.class_names) != num_classes:
            raise ValueError(
                f"model.class_names has {len(self.class_names)} names for {num_classes} classes"
            )
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.label_smoothing = label_smoothing
        self.channels_last = channels_last
        self.input_norm = input_norm
        self.compile = compile
        resolve(class_weights, None, "model.class_weights")  # a wrong value fails here
        self.class_weights = class_weights
        net = self.configure_network()
        if net is not None:
            self.net = net
        default_mean, default_std = self.default_normalization()
        self.register_buffer(
            "mean", torch.tensor(mean or default_mean).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(std or default_std).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("loss_weight", None, persistent=False)  # set by setup("fit")
        self.train_metrics = stage_metrics(num_classes, "train/")
        self.val_metrics = stage_metrics(num_classes, "val/")
        self.test_metrics = stage_metrics(num_classes, "test/")
        # Sample-weighted mean loss per stage, DDP-safe (metrics.log_step says why).
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()

    def configure_network(self) -> nn.Module | None:
        """The network (``self.net``), built from ``self.hparams``; called by ``__init__``.

        Returns:
            The network, or ``None`` when the subclass sets ``self.net`` itself.
        """
        return None

    def default_normalization(self) -> tuple[Sequence[float], Sequence[float]]:
        """Mean and std used when the config gives none (after :meth:`configure_network`).

        Returns:
            ImageNet's mean and std; a pretrained backbone overrides this with its own.
        """
        return IMAGENET_MEAN, IMAGENET_STD

    # Preferred input side for the DataModule when ``data.image_size`` is not set.
    default_image_size: int | None = None

    @property
    def scale_lr(self) -> ScaleLR:
        """The LR scaling rule (the ``scale_lr`` hyperparameter; ``none`` when absent)."""
        return self.hparams.get("scale_lr", "none")

    @scale_lr.setter
    def scale_lr(self, rule: ScaleLR) -> None:
        # Kept in hparams, so a rule set after construction is the one the checkpoint records.
        self.hparams["scale_lr"] = rule

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 0-255 or float 0-1 images to normalised float, in the model's memory format."""
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        step = CONTRAST_STEPS.get(self.input_norm)
        if step is not None:
            x = step(x)
        if self.input_norm == "image" or step is not None:
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

    def setup(self, stage: str) -> None:
        """At ``fit``: the loss's class weights from the DataModule's class counts (logged)."""
        if stage == "fit":
            dm = self.trainer.datamodule
            self.loss_weight = loss_class_weights(self.class_weights, dm, self.device)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        weight = self.loss_weight if stage == "train" else None
        loss = classification_loss(logits, y, weight, self.label_smoothing)
        log_step(self, stage, logits, y, loss)
        return loss

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        return self._step(batch, "train")

    def on_validation_epoch_start(self) -> None:
        # Under DDP: evaluate the BatchNorm statistics rank 0 checkpoints, on every rank.
        broadcast_buffers(self)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        return self(batch[0]).softmax(dim=1)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store what inference needs beside the weights, so a checkpoint stands on its own.

        ``checkpoint["lit_vision"]`` holds the model class path, class names, input size,
        normalisation and the eval transform; ``lit_vision.predict.load_classifier`` reads it
        without the training config or data.
        """
        trainer = self._trainer
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        checkpoint[CHECKPOINT_KEY] = inference_spec(self, datamodule).to_checkpoint()

    def param_groups(self) -> list[dict[str, Any]]:
        """Parameter groups for the optimizer; subclasses split backbone and head."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def configure_optimizers(self) -> Any:
        """The configured optimizer over ``param_groups()``, LR scaling, and the schedule."""
        return build_optimization(
            self.optimizer_factory,
            self.scheduler_factory,
            self.param_groups(),
            self._trainer,
            self.scale_lr,
        )


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
        early_pool: Pool after each block's first convolution (about half the compute).
        bn_scale: Learn batch norm's scale (``False``: fixed at 1, the speedruns' choice).
        dirac: Identity-initialise each convolution's first filters (the speedruns' choice).
        whiten: Make the first convolution a frozen patch-whitening filter bank computed from
            training images at the start of ``fit`` (:mod:`~lit_vision.whitening`).
        optimizer: Optimizer factory (Adam 1e-3 by default).
        scheduler: Optional LR scheduler factory.
        label_smoothing: Cross-entropy label smoothing.
        mean: Normalisation mean.
        std: Normalisation std.
        channels_last: Channels-last memory format.
        input_norm: ``dataset`` (mean/std), per-``image`` standardisation, or in-graph
            contrast normalisation first (``equalize``, ``local``, ``clahe``; see ImageClassifier).
        compile: Compile the network with ``torch.compile``.
        scale_lr: Scale the learning rates with the effective batch (``none``/``linear``/``sqrt``).
        class_weights: Class-weighted training loss: ``auto`` (when over 3:1), ``on`` or ``off``.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        class_names: Sequence[str] | None = None,
        channels: Sequence[int] = (32, 64, 128),
        convs_per_block: int = 2,
        batch_norm: bool = True,
        block_dropout: float = 0.1,
        pooling: Pooling = "avg",
        pool_grid: int = 1,
        hidden: int = 256,
        dropout: float = 0.3,
        early_pool: bool = False,
        bn_scale: bool = True,
        dirac: bool = False,
        whiten: bool = False,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        label_smoothing: float = 0.0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        channels_last: bool = True,
        input_norm: InputNorm = "dataset",
        compile: bool = False,
        scale_lr: ScaleLR = "none",
        class_weights: Balance = "auto",
    ) -> None:
        super().__init__(
            num_classes,
            class_names=class_names,
            optimizer=optimizer,
            scheduler=scheduler,
            label_smoothing=label_smoothing,
            mean=mean,
            std=std,
            channels_last=channels_last,
            input_norm=input_norm,
            compile=compile,
            scale_lr=scale_lr,
            class_weights=class_weights,
        )
        if whiten and channels[0] > 2 * 3 * 3 * 3:
            raise ConfigError(
                f"model.whiten gives the first block at most 54 filters (each of a 3x3x3 patch's"
                f" 27 directions, both signs), not channels[0] = {channels[0]}"
            )

    def configure_network(self) -> SimpleCNN:
        """The ``SimpleCNN`` the hyperparameters describe."""
        hp = self.hparams
        return SimpleCNN(
            hp.num_classes,
            channels=hp.channels,
            convs_per_block=hp.convs_per_block,
            batch_norm=hp.batch_norm,
            block_dropout=hp.block_dropout,
            pooling=hp.pooling,
            pool_grid=hp.pool_grid,
            hidden=hp.hidden,
            dropout=hp.dropout,
            early_pool=hp.get("early_pool", False),  # absent from older checkpoints
            bn_scale=hp.get("bn_scale", True),
            dirac=hp.get("dirac", False),
        )

    def setup(self, stage: str) -> None:
        """At ``fit``: the class weights, and with ``whiten`` the first convolution's filters.

        The filters come from up to 256 training images, a fixed sample (so every DDP rank
        computes the same); resuming restores the checkpoint's filters over them.
        """
        super().setup(stage)
        if stage != "fit" or not self.hparams.get("whiten", False):
            return
        train = getattr(self.trainer.datamodule, "datasets", {}).get("train")
        if train is None:  # a stream, or loaders passed without a DataModule
            raise ConfigError("model.whiten needs an ImageFolderDataModule with a train/ split")
        picks = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:256]
        images = torch.stack([train[int(i)][0] for i in picks])
        with torch.no_grad():
            normalised = self.normalize(images.to(self.device)).contiguous()
            first = self.net.features[0]
            first.weight.copy_(patch_whitening_filters(normalised, first.out_channels))
        first.weight.requires_grad_(False)
