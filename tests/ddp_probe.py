"""Run ``python -m lit_vision`` while recording, per process, the images decoded and the cache files mapped.

Used by test_ddp.py (and bench/scale.py) as ``python tests/ddp_probe.py fit ...``: Lightning
starts the other DDP ranks with the same script, so every process records into
``$LV_PROBE_DIR/PID.json`` at exit: ``decoded`` (one entry per image file PIL decoded),
``mapped`` (``.npy`` files memory-mapped) and ``peak_rss_mb``.
"""

from __future__ import annotations

import atexit
import json
import os
import resource
import sys
from pathlib import Path

import numpy as np
from PIL import ImageFile

_decoded: list[str] = []
_mapped: list[str] = []
_load, _np_load = ImageFile.ImageFile.load, np.load


def _counting_load(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
    if not getattr(self, "_probe_seen", False) and getattr(self, "filename", ""):
        self._probe_seen = True  # one decode per opened image, however often load() is called
        _decoded.append(str(self.filename))
    return _load(self, *args, **kwargs)


def _recording_np_load(file, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
    if kwargs.get("mmap_mode"):
        _mapped.append(str(file))
    return _np_load(file, *args, **kwargs)


def _write() -> None:
    out = Path(os.environ["LV_PROBE_DIR"]) / f"{os.getpid()}.json"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rank = os.environ.get("LOCAL_RANK", "0")
    record = {"rank": rank, "decoded": _decoded, "mapped": _mapped, "peak_rss_mb": peak}
    out.write_text(json.dumps(record))


if __name__ == "__main__":
    ImageFile.ImageFile.load = _counting_load
    np.load = _recording_np_load
    atexit.register(_write)
    from lit_vision.__main__ import main

    raise SystemExit(main(sys.argv[1:]))
