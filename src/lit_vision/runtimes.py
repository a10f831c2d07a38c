"""The exported runtimes: the deployable graph, its ONNX/TorchScript/safetensors writers, loaders.

``onnx`` and ``safetensors`` are optional dependencies, imported only when used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lit_vision.errors import ExportError
from lit_vision.models import ImageClassifier
from lit_vision.spec import INPUT_NAME

OUTPUT_NAMES = ("probs", "logits")


class ExportWrapper(nn.Module):
    """The deployable graph: uint8 RGB NCHW pixels in, ``(probs, logits)`` out.

    The classifier already normalises inside ``forward``, so the exported file needs only
    decoded, resized pixels; no mean/std step can be forgotten or duplicated downstream.
    """

    def __init__(self, model: ImageClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Probabilities and logits (float32) for uint8 RGB NCHW ``images``."""
        logits = self.model(images).float()
        return logits.softmax(dim=1), logits


def export_onnx(
    wrapper: ExportWrapper, path: Path, image_size: int, *, opset: int = 18, dynamo: bool = True
) -> Path:
    """Write an ONNX file with a dynamic batch axis.

    The default is torch's current exporter (``torch.export`` + onnxscript, ``dynamo=True``;
    the batch axis is a ``torch.export.Dim``), writing one self-contained file.
    ``dynamo=False`` selects the legacy TorchScript-based exporter, deprecated in torch 2.9+:
    kept for graphs the new one cannot capture, and its deprecation warning is shown.

    Args:
        wrapper: The graph to export.
        path: The ``.onnx`` file to write.
        image_size: Side of the (square) input.
        opset: ONNX opset (18 or newer for the dynamo exporter).
        dynamo: Use the dynamo-based exporter (default); ``False`` for the legacy one.

    Returns:
        ``path``, after ``onnx.checker`` accepted it.
    """
    # Batch 2, not 1: an example of size 1 would specialise the batch axis to a constant.
    example = torch.zeros(2, 3, image_size, image_size, dtype=torch.uint8)
    kwargs: dict[str, Any] = {
        "input_names": [INPUT_NAME],
        "output_names": list(OUTPUT_NAMES),
        "opset_version": opset,
        "dynamo": dynamo,
    }
    if dynamo:
        kwargs["dynamic_shapes"] = {"images": {0: torch.export.Dim("batch", min=1, max=4096)}}
        kwargs["external_data"] = False  # one file, weights inside (models here are < 2 GB)
        kwargs["verbose"] = False  # no progress lines on stdout
    else:
        kwargs["dynamic_axes"] = {
            INPUT_NAME: {0: "batch"},
            **{n: {0: "batch"} for n in OUTPUT_NAMES},
        }
    torch.onnx.export(wrapper, (example,), str(path), **kwargs)
    import onnx

    onnx.checker.check_model(str(path))
    return path


def export_torchscript(wrapper: ExportWrapper, path: Path, image_size: int) -> Path:
    """Write a traced TorchScript file (opt-in: TorchScript is deprecated in torch 2.9+).

    Loads with ``torch.jit.load``, no lit_vision needed. torch's deprecation warnings of
    ``torch.jit.trace``/``torch.jit.load`` are shown, not silenced.

    Args:
        wrapper: The graph to trace.
        path: The file to write.
        image_size: Side of the (square) example input.

    Returns:
        ``path``.
    """
    example = torch.zeros(2, 3, image_size, image_size, dtype=torch.uint8)
    # Tracing inspects every attribute; Lightning's ``trainer`` property raises when no trainer
    # is attached unless the module is flagged as being scripted (as ``to_torchscript`` does).
    wrapper.model._jit_is_scripting = True
    try:
        with torch.no_grad():
            traced = torch.jit.trace(wrapper, example, check_trace=False)
            traced = torch.jit.freeze(traced.eval())
    finally:
        wrapper.model._jit_is_scripting = False
    traced.save(str(path))
    return path


def export_safetensors(model: ImageClassifier, path: Path, contract: dict[str, Any]) -> Path:
    """Write the model's ``state_dict`` as safetensors, with the contract's essentials as metadata.

    ``mean``/``std`` are not in the state dict (non-persistent buffers), so they travel in the
    metadata and the JSON contract. Loads with ``safetensors.torch.load_file`` into
    ``model.load_state_dict(..., strict=True)`` of the same class.

    Args:
        model: The classifier.
        path: The file to write.
        contract: The preprocessing contract (``spec.preprocessing_contract``).

    Returns:
        ``path``.

    Raises:
        ImportError: safetensors is not installed.
    """
    try:
        from safetensors.torch import save_file
    except ImportError as err:
        raise ImportError(
            f"safetensors export needs safetensors: pip install safetensors ({err})"
        ) from None
    # save_file refuses non-contiguous tensors and tensors sharing storage (tied weights);
    # a contiguous CPU copy of each gives every key its own storage and keeps all keys.
    tensors = {
        k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()
    }
    metadata = {
        # "pt" is what the ecosystem's loaders (transformers, timm) check "format" for.
        "format": "pt",
        "lit_vision_format": str(contract["format"]),
        "model_class": str(contract["model_class"]),
        "class_names": json.dumps(contract["class_names"]),
        "num_classes": str(contract["num_classes"]),
        "image_size": str(contract["image_size"]),
        "mean": json.dumps(contract["mean"]),
        "std": json.dumps(contract["std"]),
    }
    save_file(tensors, str(path), metadata=metadata)
    return path


def check_safetensors(model: ImageClassifier, path: Path) -> int:
    """Reload a safetensors file and compare every tensor bitwise with the model's state dict.

    Args:
        model: The classifier the file was written from.
        path: The safetensors file.

    Returns:
        The number of tensors checked.

    Raises:
        ExportError: A key is missing or extra, or a tensor differs.
    """
    from safetensors.torch import load_file

    loaded = load_file(str(path))
    state = model.state_dict()
    if set(loaded) != set(state):
        raise ExportError(f"{path}: keys differ from the model's state dict")
    for k, v in state.items():
        if not torch.equal(loaded[k], v.detach().cpu()):
            raise ExportError(f"{path}: tensor {k} differs from the model's")
    return len(loaded)


def onnx_session(path: str | Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session with ``threads`` intra-op threads (default: torch's count)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
