"""The run report's pieces: per-class metrics from a confusion matrix, the title, the sections."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import precision_recall_fscore_support

from lit_vision.evaluation import WorstMistakes
from lit_vision.figures import confusion_matrix
from lit_vision.report import evaluation_from_confusion, render_markdown, top_confusions
from lit_vision.runinfo import version_name


def test_evaluation_from_confusion_matches_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 5, 200)
    preds = np.where(
        rng.random(200) < 0.6, targets, rng.integers(0, 4, 200)
    )  # class 4 never predicted
    ev = evaluation_from_confusion(confusion_matrix(targets, preds, 5), list("abcde"))
    p, r, f, s = precision_recall_fscore_support(targets, preds, labels=range(5), zero_division=0)
    assert ev["images"] == 200 and ev["accuracy"] == pytest.approx(np.mean(targets == preds))
    assert [c["precision"] for c in ev["per_class"]] == pytest.approx(p)
    assert [c["recall"] for c in ev["per_class"]] == pytest.approx(r)
    assert [c["f1"] for c in ev["per_class"]] == pytest.approx(f)
    assert [c["support"] for c in ev["per_class"]] == list(s)
    assert ev["macro_f1"] == pytest.approx(f.mean())


def test_empty_confusion_matrix_has_no_accuracy() -> None:
    ev = evaluation_from_confusion(np.zeros((2, 2), np.int64), ["a", "b"])
    assert ev["images"] == 0 and ev["accuracy"] is None and ev["macro_f1"] == 0.0


def test_top_confusions_most_frequent_first() -> None:
    cm = np.array([[5, 2, 0], [7, 1, 1], [0, 0, 3]])
    assert top_confusions(cm, ["a", "b", "c"], k=2) == [
        {"true": "b", "pred": "a", "count": 7},
        {"true": "a", "pred": "b", "count": 2},
    ]


@pytest.mark.parametrize(
    ("version", "name"),
    [(0, "version_0"), (12, "version_12"), ("version_3", "version_3"), (None, "")],
)
def test_report_title_names_the_version_once(version: int | str | None, name: str) -> None:
    # A resumed run's logger carries the folder name ("version_0") as its version.
    assert version_name(version) == name
    title = render_markdown(
        {"run": {"name": "gtsrb_cnn", "version": version_name(version)}}
    ).splitlines()[0]
    assert title == f"# Run report: gtsrb_cnn {name}".rstrip() and "version_version" not in title


def test_render_markdown_without_data_says_what_did_not_run() -> None:
    md = render_markdown({})
    for text in (
        "## Environment",
        "not recorded",
        "not run",
        "No comparison recorded",
        "No validation or test predictions",
    ):
        assert text in md


def test_worst_mistakes_keeps_the_highest_losses() -> None:
    worst = WorstMistakes(2)
    images = torch.arange(4, dtype=torch.uint8).view(4, 1, 1, 1).expand(4, 3, 2, 2)
    logits = torch.tensor([[5.0, 0.0], [0.0, 1.0], [0.0, 4.0], [3.0, 0.0]])
    worst.add(images, logits, torch.tensor([0, 0, 0, 1]))  # rows 1, 2, 3 wrong; 2 is the worst
    assert [int(x[1][0, 0, 0]) for x in worst.items] == [2, 3]
    assert [(x[2], x[3]) for x in worst.items] == [(0, 1), (1, 0)]


def test_lock_info_hashes_the_lock_and_compares_pins(tmp_path) -> None:
    from importlib import metadata

    from lit_vision.runinfo import lock_info

    torch_version = metadata.version("torch")
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"# pinned\ntorch=={torch_version}\nnumpy==0.0.1\n")
    info = lock_info(lock)
    assert info["sha256"] == __import__("hashlib").sha256(lock.read_bytes()).hexdigest()
    assert not info["matches"] and info["differences"] == [
        f"numpy 0.0.1 (locked) vs {metadata.version('numpy')}"
    ]
    lock.write_text(f"torch=={torch_version}\n")
    assert lock_info(lock)["matches"]
    assert lock_info(tmp_path / "absent.lock") is None
