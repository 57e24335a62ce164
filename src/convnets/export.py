"""Deployment: ONNX export checked against PyTorch, int8 quantization, and latency measurement.

The deploy path is ONNX Runtime: it folds BatchNorm into the convolutions, fuses activations
and runs int8 kernels, which is where a CPU's speed-up over eager PyTorch comes from.
Every exported file is checked on real inputs: a difference from PyTorch beyond the tolerance
is an error that reports it, never a silent success.
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from convnets.errors import ExportMismatchError, MissingDependencyError
from convnets.models.base import ConvNet


def _require_onnxruntime():
    try:  # optional dependencies: the exporter needs onnx, running the model needs onnxruntime
        import onnx  # noqa: F401
        import onnxruntime
    except ModuleNotFoundError as err:
        raise MissingDependencyError(f"export needs onnx and onnxruntime ({err.name} is missing): "
                                  "pip install 'convnets[deploy]'") from err
    return onnxruntime


class _Logits(nn.Module):
    """The model without its Python-side input check, which tracing would freeze into constants."""

    def __init__(self, model: ConvNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x))


@dataclass
class ExportResult:
    path: Path
    max_abs_diff: float
    max_logit: float


def session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session with every graph optimisation on."""
    ort = _require_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(sess, x: torch.Tensor) -> torch.Tensor:
    name = sess.get_inputs()[0].name
    return torch.from_numpy(sess.run(None, {name: x.detach().cpu().numpy().astype(np.float32)})[0])


def export_onnx(model: ConvNet, path: str | Path, check_inputs: torch.Tensor, *, opset: int = 17,
                tolerance: float = 1e-3) -> ExportResult:
    """Export ``model`` (eval mode, dynamic batch) and compare ONNX Runtime with PyTorch on ``check_inputs``.

    Raises:
        ExportMismatchError: max |onnx - torch| > ``tolerance`` x max(1, max |logit|).
    """
    _require_onnxruntime()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A copy in eval mode: the exporter runs the module it is given, and a module left in training
    # mode would update the user's BatchNorm statistics while being traced.
    model = copy.deepcopy(model).cpu().eval()
    check_inputs = check_inputs.cpu().float()
    model.check_input(check_inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(_Logits(model).eval(), (check_inputs[:1],), str(path), dynamo=False, opset_version=opset,
                          input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    with torch.no_grad():
        expected = model(check_inputs)
    got = run_onnx(session(path), check_inputs)
    result = compare(path, expected, got, tolerance)
    return result


def compare(path: Path, expected: torch.Tensor, got: torch.Tensor, tolerance: float) -> ExportResult:
    diff = (expected - got).abs().max().item()
    scale = expected.abs().max().item()
    if not diff <= tolerance * max(1.0, scale):  # also catches NaN
        raise ExportMismatchError(f"{path}: ONNX Runtime output differs from PyTorch by {diff:.3g} "
                                  f"(largest logit {scale:.3g}, tolerance {tolerance:g} relative)")
    return ExportResult(path, diff, scale)


class _Calibration:
    """Feeds calibration batches to ONNX Runtime's static quantizer."""

    def __init__(self, batches: list[np.ndarray], name: str) -> None:
        self._it: Iterator[np.ndarray] = iter(batches)
        self.name = name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {self.name: batch}

    def rewind(self) -> None:  # required by newer onnxruntime versions
        pass


def quantize_int8(onnx_path: str | Path, out_path: str | Path, calibration: torch.Tensor,
                  batch_size: int = 32) -> Path:
    """Static int8 quantization (QDQ, per-channel int8 weights, uint8 activations) calibrated on real images.

    Calibration sets each activation's int8 range from the values it takes on ``calibration``
    (a few hundred training images), which is what keeps the accuracy loss small.
    """
    _require_onnxruntime()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    prepared = out_path.with_suffix(".prep.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
    batches = [b.numpy().astype(np.float32) for b in calibration.cpu().split(batch_size)]
    quantize_static(str(prepared), str(out_path), _Calibration(batches, "images"), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    prepared.unlink(missing_ok=True)
    return out_path


def median_latency_ms(fn: Callable[[], object], *, repeats: int = 30, warmup: int = 5,
                      max_seconds: float = 20.0) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` runs after ``warmup`` (capped in time)."""
    for _ in range(warmup):
        fn()
    times, start = [], time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
        if time.perf_counter() - start > max_seconds and len(times) >= 3:
            break
    return statistics.median(times)


def torch_latency_ms(model: nn.Module, x: torch.Tensor, **kwargs) -> float:
    """Eager PyTorch fp32 inference latency (eval mode, no grad)."""
    model.eval()

    def run() -> None:
        with torch.inference_mode():
            model(x)

    return median_latency_ms(run, **kwargs)


def onnx_latency_ms(path: str | Path, x: torch.Tensor, **kwargs) -> float:
    sess = session(path)
    name = sess.get_inputs()[0].name
    feed = {name: x.numpy().astype(np.float32)}
    return median_latency_ms(lambda: sess.run(None, feed), **kwargs)


# ---- what the commands build on


def load_model_or_run(source: str, **model_kwargs) -> tuple[ConvNet, dict]:
    """A run directory or weights file (trained model, with its metadata), or a registered name (random weights)."""
    from convnets.registry import create_model
    from convnets.weights import load_weights, read_metadata

    path = Path(source)
    if path.is_dir():
        path = path / "best.safetensors"
    if path.is_file():
        return load_weights(path).eval(), read_metadata(path)
    if path.suffix or "/" in source:
        raise FileNotFoundError(f"{source}: no such run directory or weights file")
    return create_model(source, **model_kwargs).eval(), {}


def dataset_images(meta: dict, split: str, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Normalised images and labels of the dataset the weights were trained on (None without metadata)."""
    if not meta.get("dataset"):
        return None
    import dataclasses

    from convnets.data.datasets import load_dataset
    from convnets.data.loader import make_loader

    c, h, _ = meta["input_size"]
    ds = load_dataset(meta["dataset"], image_size=h, channels=c)
    ds = dataclasses.replace(ds, mean=tuple(meta["mean"]), std=tuple(meta["std"]))
    xs, ys, seen = [], [], 0
    for x, y in make_loader(ds, split, batch_size=512, shuffle=split == "train", seed=0):
        xs.append(x)
        ys.append(y)
        seen += len(y)
        if limit and seen >= limit:
            break
    return torch.cat(xs)[:limit], torch.cat(ys)[:limit]


def accuracy_of(predict: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> float:
    correct = sum((predict(xb).argmax(1) == yb).sum().item() for xb, yb in zip(x.split(256), y.split(256),
                                                                              strict=True))
    return correct / len(y)
