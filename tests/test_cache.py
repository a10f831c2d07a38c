"""Disk cache of decoded images, batched loading and batch-level augmentation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from conftest import make_split_tree, write_images

from lit_vision.augment import BatchAugment
from lit_vision.cache import cached_decode
from lit_vision.data import ImageFolderDataModule
from lit_vision.datasets import BatchedImages, collate_batch
from lit_vision.folders import list_samples
from lit_vision.loaders import loader_workers


def _samples(root: Path) -> list[tuple[str, int]]:
    return list_samples(root, ["a", "b"])


def test_disk_cache_round_trip_and_invalidation(tmp_path: Path, decodes: list[str]) -> None:
    write_images(tmp_path / "imgs" / "a", 3, size=12, seed=0)
    write_images(tmp_path / "imgs" / "b", 2, size=12, seed=1, label=1)
    cache = tmp_path / "cache"
    first = cached_decode(_samples(tmp_path / "imgs"), 8, cache, name="train")
    files = list(cache.glob("train-8px-*.npy"))
    assert len(files) == 1 and first.shape == (5, 8, 8, 3) and first.dtype == np.uint8
    assert not list(cache.glob(".*tmp*"))  # the temporary file was renamed, not left behind
    assert isinstance(first, np.memmap) and len(decodes) == 5  # decoded into the mapped file

    again = cached_decode(_samples(tmp_path / "imgs"), 8, cache, name="train")
    assert isinstance(again, np.memmap) and len(decodes) == 5  # read back, not decoded again
    np.testing.assert_array_equal(np.asarray(again), first)

    # Rewrite one image with other pixels: a new key, a new file, the stale one removed.
    changed = sorted((tmp_path / "imgs" / "a").iterdir())[0]
    write_images(tmp_path / "imgs" / "a", 1, size=12, seed=99)
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = np.array(cached_decode(_samples(tmp_path / "imgs"), 8, cache, name="train"))
    assert len(decodes) == 10  # decoded again
    new_files = list(cache.glob("train-8px-*.npy"))
    assert len(new_files) == 1 and new_files != files
    assert not np.array_equal(third[0], first[0]) and np.array_equal(third[1:], first[1:])

    # Another image size is another file; a corrupt file is decoded again, not trusted.
    cached_decode(_samples(tmp_path / "imgs"), 6, cache, name="train")
    assert len(list(cache.glob("train-*.npy"))) == 2
    new_files[0].write_bytes(b"not a npy file")
    fourth = cached_decode(_samples(tmp_path / "imgs"), 8, cache, name="train")
    np.testing.assert_array_equal(fourth, third)


def test_datamodule_uses_disk_cache_and_batches(tmp_path: Path) -> None:
    root = make_split_tree(tmp_path / "data", train=5, val=2, test=0, size=12)
    dm = ImageFolderDataModule(root, image_size=8, batch_size=4, num_workers=None)
    dm.setup("fit")
    assert (root / ".lit_vision_cache").is_dir()
    dm2 = ImageFolderDataModule(root, image_size=8, batch_size=4)
    dm2.setup("fit")
    assert isinstance(dm2.datasets["train"].cache, np.memmap)
    loader = dm2.train_dataloader()
    assert loader.num_workers == 0  # cached + batch augmentation: nothing for workers to do
    x, y = next(iter(loader))
    assert x.shape == (4, 3, 8, 8) and x.dtype == torch.uint8 and y.dtype == torch.long
    rows = {bytes(r) for r in np.asarray(dm2.datasets["train"].cache)}
    assert all(bytes(img.numpy()) in rows for img in x.permute(0, 2, 3, 1).contiguous())
    # The batched view returns the same images and labels as the per-sample dataset.
    view = BatchedImages(dm2.datasets["val"])
    bx, by = collate_batch(view.__getitems__([0, 3, 5]))
    for k, i in enumerate([0, 3, 5]):
        sx, sy = dm2.datasets["val"][i]
        assert torch.equal(bx[k], sx) and int(by[k]) == sy

    sample = ImageFolderDataModule(
        root, image_size=8, batch_size=4, augment="sample", disk_cache=False
    )
    sample.setup("fit")
    assert sample.batch_augment is None and sample.datasets["train"].transform.transforms
    assert loader_workers(sample.hparams.num_workers, sample.datasets["train"]) >= 1


def test_batch_augment_flip_is_exact_and_range_kept() -> None:
    torch.manual_seed(0)
    x = torch.randint(0, 256, (32, 3, 10, 10), dtype=torch.uint8)
    f = x.float() / 255
    flipped = BatchAugment(hflip=True, rotate=0, scale=(1.0, 1.0), translate=0, color_jitter=0)(x)
    same = (flipped - f).abs().amax((1, 2, 3)) < 1e-5
    mirrored = (flipped - f.flip(3)).abs().amax((1, 2, 3)) < 1e-5
    assert bool((same | mirrored).all()) and 0 < int(mirrored.sum()) < 32
    full = BatchAugment(rotate=10, scale=(0.9, 1.1), translate=0.1, shear=5, color_jitter=0.3)(x)
    assert full.shape == f.shape and full.dtype == torch.float32
    assert float(full.min()) >= 0 and float(full.max()) <= 1 and not torch.allclose(full, f)


def test_training_loader_is_stateful_and_restores_its_position(tmp_path: Path) -> None:
    from lightning.fabric.utilities.types import _Stateful

    from lit_vision.sampling import EpochSampler

    root = make_split_tree(tmp_path / "data", train=5, val=2, test=0, size=12)
    dm = ImageFolderDataModule(root, image_size=8, batch_size=4, num_workers=0)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader, _Stateful) and not isinstance(dm.val_dataloader(), _Stateful)
    assert loader.state_dict() == {}  # not training: nothing to resume
    # Lightning restores the state on the built loader before iterating it.
    loader.load_state_dict({"epoch": 2, "skip": 8})
    _, first = next(iter(loader))
    expected = EpochSampler(15, dm.train_order.seed)
    expected.set_epoch(2)
    order = [i for i, _ in expected][8:12]
    assert first.tolist() == [dm.datasets["train"].targets[i] for i in order]
