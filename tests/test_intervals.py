"""Accuracy intervals: binomial for independent images, a bootstrap over groups for related ones."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import write_images

from lit_vision.errors import ConfigError
from lit_vision.intervals import (
    accuracy_interval,
    accuracy_report,
    binomial_interval,
    errors_by_group,
    image_groups,
    recorded_group_regex,
    resolve_group_regex,
)
from lit_vision.split import split_dataset


def test_binomial_interval_is_the_normal_approximation() -> None:
    hits = [True] * 90 + [False] * 10
    got = accuracy_interval(hits)
    half = 1.959964 * math.sqrt(0.9 * 0.1 / 100)
    assert not got.grouped and got.units == 100
    assert (got.low, got.accuracy, got.high) == pytest.approx((0.9 - half, 0.9, 0.9 + half))
    assert binomial_interval(1.0, 5).high == 1.0  # clipped to [0, 1]


def test_groups_that_fail_together_widen_the_interval() -> None:
    # 40 groups of 30 frames; 4 whole groups wrong: 10% error, like 4 missed sign tracks.
    groups = [f"g{i}" for i in range(40) for _ in range(30)]
    hits = [g not in {"g1", "g2", "g3", "g4"} for g in groups]
    assert sum(not h for h in hits) == 120
    independent = accuracy_interval(hits)
    grouped = accuracy_interval(hits, groups)
    assert grouped.grouped and grouped.units == 40 and grouped.accuracy == independent.accuracy
    # The evidence is 40 groups, not 1,200 images: about sqrt(30) times wider.
    width, width_iid = grouped.high - grouped.low, independent.high - independent.low
    assert 3.5 < width / width_iid < 7.5
    # ... and close to the binomial interval over the 40 groups themselves.
    per_group = binomial_interval(0.9, 40)
    assert width == pytest.approx(per_group.high - per_group.low, rel=0.35)
    assert grouped == accuracy_interval(hits, groups)  # seeded: the same every time


def test_one_group_has_nothing_to_resample() -> None:
    got = accuracy_interval([True, False, True, True], ["a"] * 4)
    assert (got.low, got.accuracy, got.high, got.units) == (0.75, 0.75, 0.75, 1)


def test_independent_groups_keep_the_binomial_width() -> None:
    # Errors spread evenly over singleton groups: the bootstrap agrees with the binomial.
    hits = [i % 10 != 0 for i in range(2000)]
    grouped = accuracy_interval(hits, [str(i) for i in range(2000)])
    independent = accuracy_interval(hits)
    assert grouped.high - grouped.low == pytest.approx(independent.high - independent.low, rel=0.15)


def test_errors_by_group_worst_first_and_report_lines() -> None:
    paths = [f"/d/val/c{c}/{t}_{f:02d}.png" for c in "ab" for t in "xyz" for f in range(4)]
    labels = [p.split("/")[3] for p in paths]
    groups = image_groups(paths, labels, r"^(\w)_")
    assert groups[0] == "ca/x" and len(set(groups)) == 6
    hits = [
        not (g == "cb/y" or (g == "ca/z" and p.endswith("00.png")))
        for g, p in zip(groups, paths, strict=True)
    ]
    assert errors_by_group(hits, groups) == [("cb/y", 4, 4), ("ca/z", 1, 4)]
    lines = accuracy_report(paths, labels, hits, r"^(\w)_")
    assert "bootstrap over 6 groups" in lines[0]
    assert lines[1].startswith("errors by group: 2 of 6 groups hold all 5 errors")
    assert "cb/y 4/4" in lines[1]
    (plain,) = accuracy_report(paths, labels, hits, None)
    assert plain.startswith("accuracy 0.7917 (95% interval") and "24 images" in plain


def test_group_regex_recorded_by_split(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    for c in range(2):
        for track in range(5):
            write_images(raw / f"k{c}", 3, prefix=f"{track:02d}_", seed=10 * c + track, label=c)
    dst = tmp_path / "split"
    split_dataset(raw, dst, val=0.4, seed=0, group_regex=r"^(\d+)_")
    assert recorded_group_regex([dst / "val"]) == r"^(\d+)_"
    assert resolve_group_regex("auto", [str(dst / "val")]) == r"^(\d+)_"
    assert resolve_group_regex("none", [str(dst / "val")]) is None
    assert recorded_group_regex([tmp_path / "raw" / "k0"]) is None  # no plan beside it
    assert recorded_group_regex([]) is None


def test_unusable_plans_mean_no_grouping(tmp_path: Path) -> None:
    (tmp_path / "a" / "val").mkdir(parents=True)
    (tmp_path / "a" / "split_plan.json").write_text("{not json")
    assert recorded_group_regex([tmp_path / "a" / "val"]) is None
    (tmp_path / "a" / "split_plan.json").write_text(json.dumps({"group_regex": "("}))
    assert recorded_group_regex([tmp_path / "a" / "val"]) is None  # does not compile
    # A plan that is a link (to somewhere else) is not the split's own record.
    (tmp_path / "elsewhere.json").write_text(json.dumps({"group_regex": "^(x)"}))
    (tmp_path / "b" / "val").mkdir(parents=True)
    (tmp_path / "b" / "split_plan.json").symlink_to(tmp_path / "elsewhere.json")
    assert recorded_group_regex([tmp_path / "b" / "val"]) is None
    # Two splits recorded differently: no single answer.
    (tmp_path / "c" / "val").mkdir(parents=True)
    (tmp_path / "c" / "split_plan.json").write_text(json.dumps({"group_regex": "^(y)"}))
    (tmp_path / "d" / "val").mkdir(parents=True)
    (tmp_path / "d" / "split_plan.json").write_text(json.dumps({"group_regex": "^(z)"}))
    assert recorded_group_regex([tmp_path / "c" / "val", tmp_path / "d" / "val"]) is None


def test_bad_group_regex_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="--group_regex '\\(' is not a valid regex"):
        resolve_group_regex("(", [])
