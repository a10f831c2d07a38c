"""What ``lit-vision compare`` measured, ranked and reported: table, winner, plot, files."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lit_vision.figures import plt
from lit_vision.report import environment_info, render_markdown


@dataclass
class Result:
    """What ``compare`` measured for one experiment."""

    name: str
    config: str
    overrides: list[str]
    status: str = "ok"
    model: str | None = None
    eval_split: str | None = None
    accuracy: float | None = None
    macro_f1: float | None = None
    best_val_acc: float | None = None
    params: int | None = None
    trainable_params: int | None = None
    train_seconds: float | None = None
    fit_seconds: float | None = None
    train_images_per_s: float | None = None
    epochs: int | None = None
    image_size: int | None = None
    latency_ms: float | None = None
    log_dir: str | None = None
    best_checkpoint: str | None = None
    error: str | None = None
    rank: int | None = None


def rank(results: list[Result], by: str = "acc") -> list[Result]:
    """Successful results ranked best first (metric, then the other metric, then latency).

    Args:
        results: Every experiment's result; failed ones go last, unranked.
        by: ``acc`` or ``f1``.

    Returns:
        The results, ``rank`` set on the successful ones.
    """
    ok = [r for r in results if r.status == "ok"]
    first, second = ("accuracy", "macro_f1") if by == "acc" else ("macro_f1", "accuracy")
    ok.sort(
        key=lambda r: (-(getattr(r, first) or 0), -(getattr(r, second) or 0), r.latency_ms or 1e9)
    )
    for i, r in enumerate(ok, 1):
        r.rank = i
    return ok + [r for r in results if r.status != "ok"]


def _f(x: Any, fmt: str) -> str:
    """``x`` formatted with ``fmt``, a dash for ``None``."""
    return "—" if x is None else format(x, fmt)


def table_markdown(results: list[Result]) -> str:
    """The ranked comparison as a markdown table."""
    lines = [
        "| rank | experiment | model | eval | accuracy | macro-F1 | best val acc | params | "
        "train time | train img/s | latency ms/img (batch 1) | input px | epochs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.status != "ok":
            lines.append(f"| — | {r.name} | failed: {r.error} | | | | | | | | | | |")
            continue
        lines.append(
            f"| {r.rank} | {r.name} | {r.model} | {r.eval_split} | {_f(r.accuracy, '.4f')} "
            f"| {_f(r.macro_f1, '.4f')} | {_f(r.best_val_acc, '.4f')} | {r.params / 1e6:.2f} M "
            f"| {_f(r.train_seconds, '.0f')} s | {_f(r.train_images_per_s, '.0f')} "
            f"| {_f(r.latency_ms, '.2f')} | {r.image_size} | {r.epochs} |"
        )
    return "\n".join(lines)


def winner_statement(results: list[Result], by: str) -> str:
    """One sentence naming the winner and its margin over the runner-up."""
    ok = [r for r in results if r.status == "ok"]
    if not ok:
        return "No experiment finished."
    w = ok[0]
    metric = "accuracy" if by == "acc" else "macro-F1"
    value = w.accuracy if by == "acc" else w.macro_f1
    text = f"Winner: **{w.name}** ({w.model}) with {metric} {value:.4f} on {w.eval_split}"
    if len(ok) > 1:
        r2 = ok[1]
        v2 = r2.accuracy if by == "acc" else r2.macro_f1
        text += (
            f", {100 * (value - v2):+.2f} points over {r2.name} ({v2:.4f}); "
            f"{w.params / 1e6:.2f} M vs {r2.params / 1e6:.2f} M parameters, "
            f"{_f(w.latency_ms, '.2f')} vs {_f(r2.latency_ms, '.2f')} ms per image"
        )
    return text + "."


def plot(results: list[Result], path: Path, by: str) -> None:
    """Ranked accuracy bars and an accuracy-vs-latency scatter (marker area ~ parameters)."""
    ok = [r for r in results if r.status == "ok"]
    if not ok:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 0.5 * len(ok) + 3), dpi=100)
    names = [r.name for r in ok][::-1]
    acc = [r.accuracy for r in ok][::-1]
    f1 = [r.macro_f1 for r in ok][::-1]
    y = np.arange(len(ok))
    a.barh(y - 0.2, acc, 0.4, label="accuracy")
    a.barh(y + 0.2, f1, 0.4, label="macro-F1")
    a.set_yticks(y, names, fontsize=8)
    lo = max(0.0, min(acc + f1) - 0.05)
    a.set_xlim(lo, 1.0)
    a.legend(loc="lower right")
    a.set_title(f"ranked by {by} on {ok[0].eval_split} (best at top)")
    biggest = max(x.params for x in ok)
    for r in ok:
        b.scatter(r.latency_ms or 0, r.accuracy, s=40 + 400 * (r.params / biggest), alpha=0.6)
        b.annotate(
            r.name,
            (r.latency_ms or 0, r.accuracy),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    b.set_xscale("log")
    b.set_xlabel("latency ms / image (batch 1, log scale)")
    b.set_ylabel("accuracy")
    b.set_title("accuracy vs latency (marker area ~ parameters)")
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def comparison_markdown(
    ranked: list[Result], root: str, budget: str, statement: str, table: str, seconds: float
) -> str:
    """``compare.md``: budget, machine, the table, the winner and the val/ caveat."""
    env = environment_info()
    eval_split = next((r.eval_split for r in ranked if r.eval_split), "val")
    caveat = (
        ""
        if eval_split == "test"
        else "\n\nEvaluated on val/, which also picked each run's best checkpoint: optimistic "
        "for every candidate alike. Add a test split (`split --test 0.1`) for an unbiased number."
    )
    pkgs = env["packages"]
    return "\n".join(
        [
            f"# Comparison on `{root}`",
            "",
            f"- budget per experiment: `{budget}`; seed 0; total wall time {seconds:.0f} s",
            f"- machine: {env['cpu']}, {env['cpus_usable']} usable cores"
            + (f", GPUs {', '.join(env['gpus'])}" if env["gpus"] else "")
            + f"; torch {pkgs['torch']}, lightning {pkgs['lightning']}, timm {pkgs['timm']}",
            "- train time excludes validation; latency is the median of batch-1 forward passes "
            "on the training device, uint8 input, after warm-up",
            "",
            table,
            "",
            statement + caveat,
            "",
            "![comparison](compare.png)",
            "",
        ]
    )


def write_comparison(
    ranked: list[Result],
    out: Path,
    *,
    root: str,
    budget: list[str],
    rank_by: str,
    seconds: float,
) -> str:
    """Write ``compare.{md,csv,json,png}`` into ``out`` and each run's "Why this model".

    Args:
        ranked: The ranked results (see ``rank``).
        out: The output folder.
        root: The split folder every experiment used.
        budget: The trainer options every experiment shared.
        rank_by: ``acc`` or ``f1``.
        seconds: Wall time of the whole comparison.

    Returns:
        The markdown written to ``compare.md``.
    """
    budget_text = " ".join(budget) or "each config's own"
    statement = winner_statement(ranked, rank_by)
    table = table_markdown(ranked)
    md = comparison_markdown(ranked, root, budget_text, statement, table, seconds)
    (out / "compare.md").write_text(md)
    with open(out / "compare.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(asdict(ranked[0]).keys()))
        writer.writeheader()
        for r in ranked:
            row = {k: (" ".join(v) if isinstance(v, list) else v) for k, v in asdict(r).items()}
            writer.writerow(row)
    summary = {
        "root": root,
        "budget": budget,
        "rank_by": rank_by,
        "winner": ranked[0].name if ranked[0].status == "ok" else None,
        "statement": statement,
        "results": [asdict(r) for r in ranked],
    }
    (out / "compare.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(ranked, out / "compare.png", rank_by)
    annotate_run_reports(ranked, out, budget_text, statement, table)
    return md


def annotate_run_reports(
    ranked: list[Result], out: Path, budget: str, statement: str, table: str
) -> None:
    """Add to each run's ``report.json``/``report.md`` why it was (or was not) chosen."""
    n_ok = sum(x.status == "ok" for x in ranked)
    for r in ranked:
        rpath = Path(r.log_dir) / "report.json" if r.log_dir else None
        if rpath is None or not rpath.is_file():
            continue
        rep = json.loads(rpath.read_text())
        rep["model_selection"] = {
            "statement": f"This run ({r.name}) ranked **{r.rank} of {n_ok}** "
            f"in `lit-vision compare` (budget `{budget}`, table in `{out / 'compare.md'}`). "
            f"{statement}",
            "table_md": table,
        }
        rpath.write_text(json.dumps(rep, indent=2) + "\n")
        (rpath.parent / "report.md").write_text(render_markdown(rep))
