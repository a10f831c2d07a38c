"""The run report: environment, dataset, timings, model and metrics as report.json and report.md."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

PACKAGES = (
    "torch", "torchvision", "lightning", "torchmetrics", "albumentations", "numpy", "timm",
    "scikit-learn", "tensorboard", "matplotlib", "pillow", "jsonargparse", "lit_vision",
)


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_info() -> dict[str, Any]:
    """Python, package versions, CUDA and devices, CPU and memory of this machine."""
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
        memory_gb = round(psutil.virtual_memory().total / 1024**3, 1)
    except ImportError:  # psutil is a dependency, but the report must never fail a run
        physical, memory_gb = None, None
    cuda = torch.cuda.is_available()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "torch_threads": torch.get_num_threads(),
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if cuda else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "cpu": cpu_model(),
        "cpu_cores_logical": os.cpu_count(),
        "cpu_cores_physical": physical,
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": memory_gb,
    }


def image_size_stats(paths: Sequence[str], max_files: int = 300) -> dict[str, Any] | None:
    """Width/height range and most common size of up to ``max_files`` evenly spaced images."""
    if not paths or max_files <= 0:
        return None
    from PIL import Image

    step = max(1, len(paths) // max_files)
    sizes = []
    for p in paths[::step][:max_files]:
        try:
            with Image.open(p) as im:  # reads the header only
                sizes.append(im.size)
        except OSError:
            continue
    if not sizes:
        return None
    w = np.array([s[0] for s in sizes])
    h = np.array([s[1] for s in sizes])
    values, counts = np.unique(np.stack([w, h], 1), axis=0, return_counts=True)
    common = values[counts.argmax()]
    return {
        "sampled": len(sizes),
        "width": [int(w.min()), int(np.median(w)), int(w.max())],
        "height": [int(h.min()), int(np.median(h)), int(h.max())],
        "most_common": f"{int(common[0])}x{int(common[1])}",
        "most_common_share": round(float(counts.max() / len(sizes)), 3),
    }


def dataset_summary(datamodule: Any, max_size_files: int = 300) -> dict[str, Any]:
    """Classes, images per split and class, raw image sizes and input size of a DataModule.

    Works on any DataModule with ``root`` and ``classes`` laid out as ``ROOT/SPLIT/CLASS/*``;
    others get what can be read from their attributes.
    """
    from lit_vision.data import list_samples

    classes = list(getattr(datamodule, "classes", []) or [])
    out: dict[str, Any] = {
        "type": f"{type(datamodule).__module__}.{type(datamodule).__qualname__}",
        "root": str(getattr(datamodule, "root", "")) or None,
        "num_classes": len(classes) or None,
        "classes": classes,
        "input_size": getattr(datamodule, "image_size", None),
        "batch_size": getattr(datamodule, "batch_size", None),
        "splits": {},
    }
    root = getattr(datamodule, "root", None)
    if root is None or not classes:
        return out
    for split in ("train", "val", "test"):
        split_dir = Path(root) / split
        if not split_dir.is_dir():
            continue
        samples = list_samples(split_dir, classes)
        counts = np.bincount([t for _, t in samples], minlength=len(classes))
        out["splits"][split] = {
            "images": len(samples),
            "per_class": {c: int(n) for c, n in zip(classes, counts, strict=True)},
            "min_per_class": int(counts.min()),
            "max_per_class": int(counts.max()),
            "sizes": image_size_stats([p for p, _ in samples], max_size_files),
        }
    return out


def per_class_metrics(targets: np.ndarray, preds: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro averages and per-class precision/recall/F1/support (scikit-learn)."""
    from sklearn.metrics import precision_recall_fscore_support

    labels = list(range(len(class_names)))
    p, r, f, s = precision_recall_fscore_support(targets, preds, labels=labels, zero_division=0)
    return {
        "images": int(len(targets)),
        "accuracy": float(np.mean(targets == preds)) if len(targets) else None,
        "macro_precision": float(p.mean()),
        "macro_recall": float(r.mean()),
        "macro_f1": float(f.mean()),
        "per_class": [
            {"class": str(c), "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(class_names)
        ],
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
        out.append({"true": str(class_names[i]), "pred": str(class_names[j]), "count": int(off[i, j])})
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


def render_markdown(r: dict[str, Any]) -> str:
    """The report as markdown; sections without data say what did not run."""
    L: list[str] = []
    run = r.get("run", {})
    L += [f"# Run report: {run.get('name', 'lit_vision')} {run.get('version', '')}".rstrip(), ""]
    L += [f"- status: **{run.get('status', '?')}**, stages: {', '.join(run.get('stages', [])) or '—'}",
          f"- started {run.get('started', '—')}, report written {run.get('updated', '—')}",
          f"- log directory: `{run.get('log_dir', '—')}` (resolved config: `config.yaml` there)",
          f"- process command: `{run.get('command', '—')}`",
          *[f"- {fn} started from checkpoint `{path}`" for fn, path in run.get("loaded_checkpoints", {}).items()],
          f"- precision {run.get('precision', '—')}, accelerator {run.get('accelerator', '—')}, "
          f"devices {run.get('devices', '—')}, strategy {run.get('strategy', '—')}, seed {run.get('seed', '—')}", ""]

    env = r.get("environment", {})
    L += ["## Environment", ""]
    if env:
        pk = env.get("packages", {})
        L += [f"- Python {env.get('python')} on {env.get('platform')}",
              "- " + ", ".join(f"{k} {v}" for k, v in pk.items() if v),
              f"- CPU: {env.get('cpu')} — {env.get('cpu_cores_physical')} physical / "
              f"{env.get('cpu_cores_logical')} logical cores ({env.get('cpus_usable')} usable), "
              f"{env.get('memory_gb')} GB RAM, torch threads {env.get('torch_threads')}",
              f"- CUDA: {'available, ' + str(env.get('cuda_version')) + ', cuDNN ' + str(env.get('cudnn_version')) if env.get('cuda_available') else 'not available'}"
              + (f"; GPUs: {', '.join(env['gpus'])}" if env.get("gpus") else ""), ""]

    ds = r.get("dataset", {})
    L += ["## Dataset", ""]
    if ds.get("splits"):
        L += [f"- root `{ds.get('root')}`, {ds.get('num_classes')} classes, model input "
              f"{ds.get('input_size')} px, batch size {ds.get('batch_size')}"]
        names = ds.get("classes", [])
        L += [f"- classes: {', '.join(names[:60])}{' …' if len(names) > 60 else ''}", ""]
        rows = []
        for split, s in ds["splits"].items():
            sz = s.get("sizes") or {}
            rows.append([split, s["images"], s["min_per_class"], s["max_per_class"],
                         "{}–{}".format(*sz["width"][::2]) if sz else "—",
                         "{}–{}".format(*sz["height"][::2]) if sz else "—",
                         f"{sz['most_common']} ({sz['most_common_share']:.0%})" if sz else "—"])
        L += _table(["split", "images", "min/class", "max/class", "width", "height", "most common size"], rows)
        L += ["", "(image sizes from up to 300 evenly spaced files per split)", ""]
    else:
        L += ["not recorded (DataModule without root/classes)", ""]

    t = r.get("timing", {})
    L += ["## Time per stage", ""]
    rows = [["data preparation (DataModule.setup: " + k + ")", _seconds(v)] for k, v in t.get("data_setup", {}).items()]
    if not t.get("data_setup"):
        rows.append(["data preparation", "not measured (DataModule not built by the lit_vision CLI)"])
    fitted = bool({"fit", "validate"} & set(run.get("stages", [])))
    for name, ph in t.get("train_phases", {}).items():
        rows.append([f"training, phase `{name}` (epochs {ph['epochs'][0]}–{ph['epochs'][-1]}, "
                     f"{ph['images']} images, {ph['trainable_params']:,} trainable params)",
                     _seconds(ph["seconds"])])
    if fitted:
        rows.append(["validation (all epochs, sanity check excluded)", _seconds(t.get("validation"))])
    rows.append(["test", _seconds(t.get("test")) if t.get("test") is not None else "not run"])
    if t.get("insight_overhead"):
        rows.append(["figures and report (this callback; not in training time)", _seconds(t["insight_overhead"])])
    if "fit" in run.get("stages", []):
        rows.append(["fit wall time (training + validation + overhead)", _seconds(t.get("fit_wall"))])
    L += _table(["stage", "time"], rows)
    if t.get("train_images_per_s"):
        L += ["", f"Training throughput: **{t['train_images_per_s']:.0f} images/s** "
              "(loader + forward + backward + step, validation excluded)."]
    L += [""]

    m = r.get("model", {})
    L += ["## Model", ""]
    if m:
        L += [f"- `{m.get('class')}`: {m.get('total_params', 0):,} parameters, "
              f"{m.get('trainable_params', 0):,} trainable at the end, {m.get('size_mb', 0):.2f} MB (fp32)",
              "- hyperparameters: `" + json.dumps(m.get("hparams", {}), default=str) + "`", ""]
        if m.get("summary"):
            L += ["```", m["summary"], "```", ""]
    sel = r.get("model_selection")
    L += ["## Why this model", ""]
    if sel:
        L += [sel.get("statement", ""), ""] + sel.get("table_md", "").splitlines() + [""]
    else:
        L += ["No comparison recorded for this run. `python -m lit_vision compare` trains several "
              "candidates on the same split and budget and appends the ranked table here.", ""]

    L += ["## Metrics", ""]
    ck = r.get("checkpoints", {})
    if ck.get("best") or ck.get("last"):
        L += [f"- best checkpoint ({ck.get('monitor')} = {_fmt(ck.get('best_score'))}): `{ck.get('best') or '—'}`",
              f"- last checkpoint: `{ck.get('last') or '—'}`", ""]
    final = r.get("final_metrics", {})
    if final:
        L += _table(["metric", "value"], [[k, v] for k, v in sorted(final.items())]) + [""]
    hist = r.get("history", [])
    if hist:
        keys = [k for k in ("train/loss_epoch", "train/acc", "val/loss", "val/acc", "val/f1") if any(k in h for h in hist)]
        lr_keys = sorted({k for h in hist for k in h if k.startswith("lr/")})[:2]
        L += ["Per epoch:", ""]
        L += _table(["epoch", "phase", *keys, *[f"{k} (epoch start)" for k in lr_keys], "train s"],
                    [[h["epoch"], h.get("phase", "—"), *[h.get(k) for k in keys],
                      *[_fmt(h.get(k), 6) for k in lr_keys], _fmt(h.get("train_seconds"), 1)] for h in hist])
        L += [""]
    for stage in ("val", "test"):
        ev = r.get("evaluation", {}).get(stage)
        if not ev:
            continue
        L += [f"### Per class on {stage} ({ev['when']}, {ev['images']} images)", "",
              f"accuracy {_fmt(ev['accuracy'])}, macro precision {_fmt(ev['macro_precision'])}, "
              f"macro recall {_fmt(ev['macro_recall'])}, macro F1 {_fmt(ev['macro_f1'])}", ""]
        L += _table(["class", "precision", "recall", "F1", "support"],
                    [[c["class"], c["precision"], c["recall"], c["f1"], c["support"]] for c in ev["per_class"]])
        if ev.get("top_confusions"):
            L += ["", "Most frequent confusions: " + "; ".join(
                f"{c['true']} → {c['pred']} ×{c['count']}" for c in ev["top_confusions"])]
        L += [""]
    if not r.get("evaluation"):
        L += ["No validation or test predictions were collected.", ""]
    L += ["TensorBoard (`tensorboard --logdir " + str(Path(run.get("log_dir", ".")).parent.parent) + "`): "
          "CUSTOM SCALARS (train vs val on shared axes), SCALARS (learning rate, phase), IMAGES "
          "(confusion matrix, worst misclassified), HPARAMS (hyperparameters with final metrics).", ""]
    return "\n".join(L)
