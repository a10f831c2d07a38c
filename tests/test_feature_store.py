"""Frozen features on disk: written while computed, checksummed, reused only under the same key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_features import _fit

from lit_vision.feature_store import FeatureStore, weights_fingerprint
from lit_vision.features import compute_features


def _store(folder: Path, **change: object) -> FeatureStore:
    return FeatureStore(folder, "train-net", {"images": "abc", "views": 2, **change})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_outputs_written_while_computed_load_back_identical(
    tmp_path: Path, dtype: torch.dtype
) -> None:
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)

    def embed(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.float() / 255
        return x.mean(dim=(2, 3)), x.to(dtype)

    def run(**kw: object) -> list[torch.Tensor]:
        return compute_features(
            embed,
            lambda idx: images[idx],
            list(range(10)),
            views=2,
            seed=0,
            augment=lambda b: b.flip(-1),
            batch_size=4,
            device=torch.device("cpu"),
            show_progress=False,
            **kw,
        )

    in_memory = run()
    store = _store(tmp_path)
    on_disk = run(allocate=store.allocate)
    store.commit()
    loaded = _store(tmp_path).load()
    assert loaded is not None
    for a, b, c in zip(in_memory, on_disk, loaded, strict=True):
        assert a.dtype == b.dtype == c.dtype
        assert torch.equal(a, b) and torch.equal(a, c)
    assert not list(tmp_path.glob(".*tmp*"))  # temporary files renamed into place


def test_another_key_misses_and_replaces_the_old_files(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.save([torch.ones(1, 3, 4)])
    assert _store(tmp_path, views=3).load() is None
    assert _store(tmp_path, images="changed").load() is None
    newer = _store(tmp_path, views=3)
    newer.save([torch.zeros(1, 3, 4)])
    assert _store(tmp_path).load() is None  # the old key's files are gone
    assert {p.name.split("-")[2].split(".")[0] for p in tmp_path.iterdir()} == {newer.key}


def test_corrupted_or_incomplete_files_are_never_served(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.save([torch.arange(12.0).reshape(1, 3, 4)])
    data = next(tmp_path.glob("*.npy"))
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0xFF  # flip bits of the last number, header intact
    data.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="checksum"):
        assert _store(tmp_path).load() is None
    store.sidecar.unlink()  # a crash before the sidecar: nothing to trust
    assert _store(tmp_path).load() is None


def test_interrupted_computation_leaves_nothing(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.allocate(0, (1, 2, 3), torch.float32)
    store.discard()
    assert not list(tmp_path.iterdir())


def test_fingerprint_follows_every_weight() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    before = weights_fingerprint(net)
    net[1].running_mean[0] += 1e-6  # a buffer changes the features too
    assert weights_fingerprint(net) != before
    assert weights_fingerprint(net, extra=torch.ones(3)) != weights_fingerprint(net)


def test_a_second_run_reuses_the_features_and_trains_the_same(tmp_path: Path) -> None:
    args = ("--model.init_args.unfreeze_blocks", "0", "--trainer.max_epochs", "3")
    args += ("--model.init_args.freeze_epochs", "auto", "--model.init_args.head_patience", "5")
    first = _fit(tmp_path, *args)
    folder = tmp_path / "data" / ".lit_vision_cache" / "features"
    assert sorted(p.name.split("-")[0] for p in folder.glob("*.json")) == ["train", "val"]
    second = _fit(tmp_path, *args)
    assert not first.model._reused and len(second.model._reused) == 2
    for split in ("train", "val"):
        assert torch.equal(
            first.model._features[split].features, second.model._features[split].features
        )
    a, b = first.trainer.callback_metrics, second.trainer.callback_metrics
    assert float(a["val/loss"]) == float(b["val/loss"])
    # Other views: the training features are computed again, the clean val ones reused.
    third = _fit(tmp_path, *args, "--model.init_args.feature_views", "3")
    assert len(third.model._reused) == 1
    # Another seed initialises this (unpretrained) backbone differently: nothing is reused.
    assert not _fit(tmp_path, *args, "--seed_everything", "1").model._reused
