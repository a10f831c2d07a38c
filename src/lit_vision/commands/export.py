"""``lit-vision export``: ONNX (fp32, optional int8), safetensors and the preprocessing contract."""

from __future__ import annotations

from lit_vision.commands.parsing import function_parser, parse
from lit_vision.export import run_export


def main(args: list[str]) -> int:
    """Parse :func:`lit_vision.export.run_export`'s options and export; 1 when parity fails."""
    report = run_export(**parse(function_parser("export", run_export, skip={"quiet"}), args))
    return 0 if report.get("parity_ok", True) else 1
