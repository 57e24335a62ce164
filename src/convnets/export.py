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

from convnets.models.base import ConvNet


class ExportMismatchError(RuntimeError):
    """The exported model's outputs differ from PyTorch's beyond the tolerance."""


def _require_onnxruntime():
    try:  # optional dependencies: the exporter needs onnx, running the model needs onnxruntime
        import onnx  # noqa: F401
        import onnxruntime
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(f"export needs onnx and onnxruntime ({err.name} is missing): "
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


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="export to ONNX (checked against PyTorch), optionally int8, with accuracy and latency",
        description="Export a run (or a registered model with random weights) to ONNX, check ONNX Runtime against "
        "PyTorch on real images, optionally quantize to int8 and measure the accuracy change on the test set.")
    p.add_argument("source", metavar="RUN_OR_MODEL")
    p.add_argument("--onnx", action="store_true", default=True, help="export to ONNX (the default and only format)")
    p.add_argument("--int8", action="store_true", help="also write a statically quantized int8 model")
    p.add_argument("--out", help="output directory (default: RUN/export or ./export-MODEL)")
    p.add_argument("--calibration-images", type=int, default=512)
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=run_export)

    p = subparsers.add_parser(
        "latency", help="batch-1 and batched latency of PyTorch eager and ONNX Runtime, beside params and MACs",
        description="Median latency over repeated runs on this machine, for each model: PyTorch eager fp32 and "
        "the exported ONNX model (fp32, and int8 with --int8).")
    p.add_argument("sources", nargs="+", metavar="RUN_OR_MODEL")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    p.add_argument("--input", help="CxHxW (default: the model's input size)")
    p.add_argument("--int8", action="store_true", help="also quantize (random calibration unless the run has data)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, help="CPU threads for both runtimes (default: all)")
    p.set_defaults(func=run_latency)


def run_export(args) -> int:
    from convnets.training.cli import parse_model_args

    model, meta = load_model_or_run(args.source, **parse_model_args(args.model_arg))
    path = Path(args.source)
    out = Path(args.out) if args.out else (path / "export" if path.is_dir() else Path(f"export-{model.name}"))
    data = dataset_images(meta, "test")
    check = data[0][:64] if data else torch.randn(8, *model.input_size)
    result = export_onnx(model, out / f"{model.name}.onnx", check)
    print(f"wrote {result.path}: max |ONNX - PyTorch| = {result.max_abs_diff:.2e} on {len(check)} "
          f"{'test images' if data else 'random inputs'} (largest logit {result.max_logit:.2f})")
    x1 = check[:1]
    rows = [("PyTorch eager fp32", torch_latency_ms(model, x1), None),
            ("ONNX Runtime fp32", onnx_latency_ms(result.path, x1), None)]
    if data:
        x, y = data
        rows[0] = (*rows[0][:2], accuracy_of(lambda b: model(b), x, y))
        sess = session(result.path)
        rows[1] = (*rows[1][:2], accuracy_of(lambda b: run_onnx(sess, b), x, y))
    if args.int8:
        calib = dataset_images(meta, "train", args.calibration_images)
        calib_x = calib[0] if calib else torch.randn(64, *model.input_size)
        int8_path = quantize_int8(result.path, out / f"{model.name}.int8.onnx", calib_x)
        acc = None
        if data:
            sess8 = session(int8_path)
            acc = accuracy_of(lambda b: run_onnx(sess8, b), *data)
        rows.append(("ONNX Runtime int8", onnx_latency_ms(int8_path, x1), acc))
        print(f"wrote {int8_path} (calibrated on {len(calib_x)} {'training images' if calib else 'random inputs'})")
    base = rows[0][1]
    print(f"\n{'runtime':<22} {'batch-1 ms':>10} {'speed-up':>9} {'accuracy':>9}")
    for name, ms, acc in rows:
        print(f"{name:<22} {ms:>10.2f} {base / ms:>8.2f}x {acc if acc is None else f'{acc:.4f}':>9}")
    if data and args.int8:
        print(f"int8 changes test accuracy by {100 * (rows[-1][2] - rows[0][2]):+.2f} points")
    return 0


def run_latency(args) -> int:
    from convnets.analysis import count
    from convnets.analysis.formatting import parse_size

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{'model':<24} {'params':>10} {'MACs':>9} {'batch':>5} {'eager ms':>9} {'onnx ms':>8} "
          + (f"{'int8 ms':>8} " if args.int8 else "") + f"{'images/s (best)':>15}")
    import tempfile

    for source in args.sources:
        model, meta = load_model_or_run(source)
        size = parse_size(args.input) if args.input else tuple(meta.get("input_size", model.input_size))
        counts = count(model, size)
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = export_onnx(model, Path(tmp) / "m.onnx", torch.randn(2, *size)).path
            int8_path = quantize_int8(onnx_path, Path(tmp) / "m8.onnx", torch.randn(32, *size)) if args.int8 else None
            for batch in args.batch:
                x = torch.randn(batch, *size)
                eager = torch_latency_ms(model, x, repeats=args.repeats)
                ort = onnx_latency_ms(onnx_path, x, repeats=args.repeats)
                q = onnx_latency_ms(int8_path, x, repeats=args.repeats) if int8_path else None
                best = min(t for t in (eager, ort, q) if t is not None)
                print(f"{model.name:<24} {counts.params / 1e6:>9.2f}M {counts.macs / 1e6:>8.1f}M {batch:>5} "
                      f"{eager:>9.2f} {ort:>8.2f} " + (f"{q:>8.2f} " if q is not None else "")
                      + f"{1000 * batch / best:>15,.0f}")
    print("\nMedian of repeated runs on this machine; MACs per image (see `convnets summary`).")
    return 0
