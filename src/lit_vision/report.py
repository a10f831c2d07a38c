"""The run report: report.json -> report.md, one function per section."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lit_vision.evaluation import WEAK_MARGIN, weak_classes
from lit_vision.runinfo import environment_info

__all__ = [
    "environment_info",
    "evaluation_from_confusion",
    "render_markdown",
    "top_confusions",
    "weak_classes",
    "write_report",
]


def evaluation_from_confusion(cm: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro averages, per-class precision/recall/F1/support and the weak classes.

    The same numbers as scikit-learn's ``precision_recall_fscore_support(zero_division=0)``
    on the predictions the matrix counts; ``balanced_accuracy`` is the macro recall over the
    classes with images (scikit-learn's ``balanced_accuracy_score``), and ``weak_classes``
    are :func:`weak_classes`.

    Args:
        cm: ``cm[true, pred]`` counts, ``(C, C)``.
        class_names: Names in label order (``C`` of them).
    """
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    p = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    r = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = support + predicted  # 2tp + fp + fn
    f = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    total = int(cm.sum())
    present = support > 0
    balanced = float(r[present].mean()) if present.any() else None
    return {
        "images": total,
        "accuracy": float(tp.sum() / total) if total else None,
        "balanced_accuracy": balanced,
        "macro_precision": float(p.mean()),
        "macro_recall": float(r.mean()),
        "macro_f1": float(f.mean()),
        "per_class": [
            {
                "class": str(c),
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": int(support[i]),
            }
            for i, c in enumerate(class_names)
        ],
        "weak_classes": weak_classes(cm, class_names, balanced),
    }


def top_confusions(cm: np.ndarray, class_names: Sequence[str], k: int = 10) -> list[dict[str, Any]]:
    """The ``k`` most frequent (true, predicted) mistakes."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None)[::-1][:k]
    out = []
    for flat in order:
        i, j = divmod(int(flat), cm.shape[1])
        if off[i, j] == 0:
            break
        out.append(
            {"true": str(class_names[i]), "pred": str(class_names[j]), "count": int(off[i, j])}
        )
    return out


def write_report(report: dict[str, Any], folder: str | Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` into ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / "report.json"
    json_path.write_text(json.dumps(report, indent=2, default=_jsonable) + "\n")
    md_path = folder / "report.md"
    md_path.write_text(render_markdown(report))
    return json_path, md_path


def _jsonable(x: Any) -> Any:
    if isinstance(x, (np.generic, torch.Tensor)):
        return x.item() if getattr(x, "ndim", 0) == 0 else x.tolist()
    if isinstance(x, Path):
        return str(x)
    return repr(x)


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _seconds(s: float | None) -> str:
    if s is None:
        return "—"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min ({s:.0f} s)"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return lines


def _header(r: dict[str, Any]) -> list[str]:
    run = r.get("run", {})
    return [
        f"# Run report: {run.get('name', 'lit_vision')} {run.get('version', '')}".rstrip(),
        "",
        f"- status: **{run.get('status', '?')}**, stages: {', '.join(run.get('stages', [])) or '—'}",
        f"- started {run.get('started', '—')}, report written {run.get('updated', '—')}",
        f"- log directory: `{run.get('log_dir', '—')}` (resolved config: `config.yaml` there)",
        f"- process command: `{run.get('command', '—')}`",
        *[
            f"- {fn} started from checkpoint `{path}`"
            for fn, path in run.get("loaded_checkpoints", {}).items()
        ],
        f"- precision {run.get('precision', '—')}, accelerator {run.get('accelerator', '—')}, "
        f"devices {run.get('devices', '—')}, strategy {run.get('strategy', '—')}, seed {run.get('seed', '—')}",
        "",
    ]


def _environment(r: dict[str, Any]) -> list[str]:
    env = r.get("environment", {})
    if not env:
        return ["## Environment", ""]
    pk = env.get("packages", {})
    cuda = (
        f"available, {env.get('cuda_version')}, cuDNN {env.get('cudnn_version')}"
        if env.get("cuda_available")
        else "not available"
    )
    lock = env.get("lock")
    locked = (
        f"- `{lock['file']}` sha256 {lock['sha256'][:16]}...: "
        + (
            "the environment matches it"
            if lock["matches"]
            else "differs: " + "; ".join(lock["differences"])
        )
        if lock
        else "- no lock file beside the package (not run from the source tree)"
    )
    return [
        "## Environment",
        "",
        f"- Python {env.get('python')} on {env.get('platform')}",
        locked,
        "- " + ", ".join(f"{k} {v}" for k, v in pk.items() if v),
        f"- CPU: {env.get('cpu')} — {env.get('cpu_cores_physical')} physical / "
        f"{env.get('cpu_cores_logical')} logical cores ({env.get('cpus_usable')} usable), "
        f"{env.get('memory_gb')} GB RAM, torch threads {env.get('torch_threads')}",
        f"- CUDA: {cuda}" + (f"; GPUs: {', '.join(env['gpus'])}" if env.get("gpus") else ""),
        "",
    ]


def _dataset(r: dict[str, Any]) -> list[str]:
    ds = r.get("dataset", {})
    if not ds.get("splits"):
        return ["## Dataset", "", "not recorded (DataModule without root/classes)", ""]
    names = ds.get("classes", [])
    out = [
        "## Dataset",
        "",
        f"- root `{ds.get('root')}`, {ds.get('num_classes')} classes, model input "
        f"{ds.get('input_size')} px, batch size {ds.get('batch_size')}",
        f"- classes: {', '.join(names[:60])}{' …' if len(names) > 60 else ''}",
        "",
    ]
    rows = []
    for split, s in ds["splits"].items():
        sz = s.get("sizes") or {}
        rows.append(
            [
                split,
                s["images"],
                s["min_per_class"],
                s["max_per_class"],
                "{}–{}".format(*sz["width"][::2]) if sz else "—",
                "{}–{}".format(*sz["height"][::2]) if sz else "—",
                f"{sz['most_common']} ({sz['most_common_share']:.0%})" if sz else "—",
            ]
        )
    out += _table(
        ["split", "images", "min/class", "max/class", "width", "height", "most common size"], rows
    )
    return [*out, "", "(image sizes from up to 300 evenly spaced files per split)", ""]


def _timing(r: dict[str, Any]) -> list[str]:
    run, t = r.get("run", {}), r.get("timing", {})
    setup = t.get("data_setup", {})
    rows = [[f"data preparation (DataModule.setup: {k})", _seconds(v)] for k, v in setup.items()]
    if not setup:
        rows.append(
            ["data preparation", "not measured (DataModule not built by the lit_vision CLI)"]
        )
    for name, ph in t.get("train_phases", {}).items():
        rows.append(
            [
                f"training, phase `{name}` (epochs {ph['epochs'][0]}–{ph['epochs'][-1]}, "
                f"{ph['images']} images, {ph['trainable_params']:,} trainable params)",
                _seconds(ph["seconds"]),
            ]
        )
    if {"fit", "validate"} & set(run.get("stages", [])):
        rows.append(
            ["validation (all epochs, sanity check excluded)", _seconds(t.get("validation"))]
        )
    rows.append(["test", _seconds(t.get("test")) if t.get("test") is not None else "not run"])
    if t.get("insight_overhead"):
        rows.append(
            [
                "figures and report (this callback; not in training time)",
                _seconds(t["insight_overhead"]),
            ]
        )
    if "fit" in run.get("stages", []):
        rows.append(
            ["fit wall time (training + validation + overhead)", _seconds(t.get("fit_wall"))]
        )
    out = ["## Time per stage", "", *_table(["stage", "time"], rows)]
    if t.get("train_images_per_s"):
        out += [
            "",
            f"Training throughput: **{t['train_images_per_s']:.0f} images/s** "
            "(loader + forward + backward + step, validation excluded).",
        ]
    return [*out, ""]


def _model(r: dict[str, Any]) -> list[str]:
    m = r.get("model", {})
    out = ["## Model", ""]
    if m:
        out += [
            f"- `{m.get('class')}`: {m.get('total_params', 0):,} parameters, "
            f"{m.get('trainable_params', 0):,} trainable at the end, {m.get('size_mb', 0):.2f} MB (fp32)",
            "- hyperparameters: `" + json.dumps(m.get("hparams", {}), default=str) + "`",
            "",
        ]
        if m.get("summary"):
            out += ["```", m["summary"], "```", ""]
    sel = r.get("model_selection")
    out += ["## Why this model", ""]
    if sel:
        return out + [sel.get("statement", ""), "", *sel.get("table_md", "").splitlines(), ""]
    return out + [
        "No comparison recorded for this run. `python -m lit_vision compare` trains several "
        "candidates on the same split and budget and appends the ranked table here.",
        "",
    ]


def _metrics(r: dict[str, Any]) -> list[str]:
    out = ["## Metrics", ""]
    ck = r.get("checkpoints", {})
    if ck.get("best") or ck.get("last"):
        out += [
            f"- best checkpoint ({ck.get('monitor')} = {_fmt(ck.get('best_score'))}): `{ck.get('best') or '—'}`",
            f"- last checkpoint: `{ck.get('last') or '—'}`",
            "",
        ]
    final = r.get("final_metrics", {})
    if final:
        out += [*_table(["metric", "value"], [[k, v] for k, v in sorted(final.items())]), ""]
    hist = r.get("history", [])
    if hist:
        keys = [
            k
            for k in ("train/loss_epoch", "train/acc", "val/loss", "val/acc")
            + ("val/balanced_acc", "val/f1")
            if any(k in h for h in hist)
        ]
        lr_keys = sorted({k for h in hist for k in h if k.startswith("lr/")})[:2]
        out += ["Per epoch:", ""]
        out += _table(
            ["epoch", "phase", *keys, *[f"{k} (epoch start)" for k in lr_keys], "train s"],
            [
                [
                    h["epoch"],
                    h.get("phase", "—"),
                    *[h.get(k) for k in keys],
                    *[_fmt(h.get(k), 6) for k in lr_keys],
                    _fmt(h.get("train_seconds"), 1),
                ]
                for h in hist
            ],
        )
        out += [""]
    return out


def _evaluation(r: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for stage in ("val", "test"):
        ev = r.get("evaluation", {}).get(stage)
        if not ev:
            continue
        out += [
            f"### Per class on {stage} ({ev['when']}, {ev['images']} images)",
            "",
            f"accuracy {_fmt(ev['accuracy'])}, balanced accuracy "
            f"{_fmt(ev.get('balanced_accuracy'))}, macro precision {_fmt(ev['macro_precision'])}, "
            f"macro recall {_fmt(ev['macro_recall'])}, macro F1 {_fmt(ev['macro_f1'])}",
            "",
            _weak_line(ev),
            "",
        ]
        out += _table(
            ["class", "precision", "recall", "F1", "support"],
            [
                [c["class"], c["precision"], c["recall"], c["f1"], c["support"]]
                for c in ev["per_class"]
            ],
        )
        if ev.get("top_confusions"):
            out += [
                "",
                "Most frequent confusions: "
                + "; ".join(
                    f"{c['true']} → {c['pred']} ×{c['count']}" for c in ev["top_confusions"]
                ),
            ]
        out += [""]
    if not r.get("evaluation"):
        out += ["No validation or test predictions were collected.", ""]
    logdir = Path(r.get("run", {}).get("log_dir", ".")).parent.parent
    return [
        *out,
        f"TensorBoard (`tensorboard --logdir {logdir}`): "
        "CUSTOM SCALARS (train vs val on shared axes), SCALARS (learning rate, phase), IMAGES "
        "(confusion matrix, worst misclassified), HPARAMS (hyperparameters with final metrics).",
        "",
    ]


def _weak_line(ev: dict[str, Any]) -> str:
    """One line naming the weak classes of an evaluation (or saying there are none)."""
    weak = ev.get("weak_classes") or []
    margin = f"more than {WEAK_MARGIN * 100:.0f} points below the balanced accuracy"
    if not weak:
        return f"Weak classes: none (no class's recall is {margin})."
    return f"**Weak classes** (recall {margin}): " + "; ".join(
        f"{w['class']} (recall {w['recall']:.2f} of {w['support']}"
        + (f", mostly taken for {w['confused_with']})" if w["confused_with"] else ")")
        for w in weak
    )


def _calibration(r: dict[str, Any]) -> list[str]:
    cal = r.get("calibration")
    if not cal:
        return []
    return [
        "## Calibration (temperature scaling on val)",
        "",
        f"The checkpoints record temperature T = {_fmt(cal.get('temperature'))}, fitted on "
        f"{cal.get('images')} validation images; `predict` reports softmax(logits / T). "
        f"Expected calibration error ({cal.get('bins')} bins): {_fmt(cal.get('ece_before'))} "
        f"before, {_fmt(cal.get('ece_after'))} after; NLL {_fmt(cal.get('nll_before'))} -> "
        f"{_fmt(cal.get('nll_after'))}.",
        "",
        "![reliability diagram](reliability.png)",
        "",
    ]


SECTIONS = (
    _header,
    _environment,
    _dataset,
    _timing,
    _model,
    _metrics,
    _calibration,
    _evaluation,
)


def render_markdown(r: dict[str, Any]) -> str:
    """The report as markdown; sections without data say what did not run.

    Args:
        r: The report dict (what ``report.json`` holds).
    """
    return "\n".join(line for section in SECTIONS for line in section(r))
