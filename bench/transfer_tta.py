"""Time to accuracy of transfer recipes, whole `fit` commands measured in one run.

Runs `python -m lit_vision fit --config C --data.root ROOT` for each config in turn (same
machine, same minutes), notes the wall time at which each epoch ended (the run's own
"lit_vision epoch N" lines), reads each epoch's val/acc from the run's report.json, and prints
per config: the whole command's wall time, the time at which val/acc first reached the
threshold, the best val/acc, and peak RSS (the process tree, sampled every 0.2 s); then the
ratios against the first config.

    python bench/transfer_tta.py --data /tmp/lv/catsdogs --threshold 0.97 \
        --configs configs/transfer.yaml configs/catsdogs_transfer.yaml
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
EPOCH_LINE = re.compile(r"lit_vision epoch (\d+):")


def _peak_rss(proc: psutil.Process, out: list[int], stop: threading.Event) -> None:
    """Sample the RSS of ``proc`` and its children until ``stop``; keep the largest sum."""
    while not stop.is_set():
        try:
            tree = [proc, *proc.children(recursive=True)]
            out[0] = max(out[0], sum(p.memory_info().rss for p in tree))
        except psutil.Error:
            pass
        time.sleep(0.2)


def run(config: str, root: str, threshold: float, extra: list[str]) -> dict:
    """One whole `fit` command: wall time, per-epoch end times, val/acc history, peak RSS."""
    with tempfile.TemporaryDirectory(prefix="tta-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "lit_vision",
            "fit",
            "--config",
            config,
            "--data.root",
            root,
            "--trainer.logger.init_args.save_dir",
            tmp,
            "--trainer.enable_progress_bar",
            "false",
            *extra,
        ]
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        peak, stop = [0], threading.Event()
        sampler = threading.Thread(target=_peak_rss, args=(psutil.Process(proc.pid), peak, stop))
        sampler.start()
        ends: dict[int, float] = {}
        for line in proc.stdout or []:
            if m := EPOCH_LINE.search(line):
                ends[int(m.group(1))] = time.perf_counter() - start
        proc.wait()
        wall = time.perf_counter() - start
        stop.set()
        sampler.join()
        reports = list(Path(tmp).rglob("report.json"))
        history = json.loads(reports[0].read_text())["history"] if reports else []
    accs = {h["epoch"]: h.get("val/acc") for h in history if h.get("val/acc") is not None}
    reached = [ends[e] for e, a in sorted(accs.items()) if a >= threshold and e in ends]
    return {
        "config": config,
        "rc": proc.returncode,
        "wall_s": round(wall, 1),
        "epochs": len(accs),
        "best_val_acc": max(accs.values(), default=None),
        "time_to_threshold_s": round(reached[0], 1) if reached else None,
        "peak_rss_gb": round(peak[0] / 2**30, 2),
    }


def main() -> None:
    """Run every config and print the table and the ratios against the first."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="split folder (train/ val/)")
    p.add_argument(
        "--configs", nargs="+", default=["configs/transfer.yaml", "configs/catsdogs_transfer.yaml"]
    )
    p.add_argument("--threshold", type=float, default=0.97)
    p.add_argument("--extra", nargs="*", default=[], help="options passed to every fit")
    args = p.parse_args()
    rows = [run(c, args.data, args.threshold, args.extra) for c in args.configs]
    print(json.dumps(rows, indent=2))
    base = rows[0]
    for r in rows[1:]:
        for key in ("wall_s", "time_to_threshold_s", "peak_rss_gb"):
            if base[key] and r[key]:
                print(f"{r['config']} / {base['config']}: {key} x{r[key] / base[key]:.2f}")


if __name__ == "__main__":
    main()
