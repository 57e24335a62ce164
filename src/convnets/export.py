"""Deployment: ONNX export checked against PyTorch, int8 quantization, and latency measurement.

The deploy path is ONNX Runtime: it folds BatchNorm into the convolutions, fuses activations
and runs int8 kernels, which is where a CPU's speed-up over eager PyTorch comes from.
Every exported file is checked on real inputs: a difference from PyTorch beyond the tolerance
is an error that reports it, never a silent success.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from convnets.analysis.formatting import check_whole
from convnets.errors import (
    ConfigError,
    ConfigMismatchError,
    ExportMismatchError,
    MissingDependencyError,
    RunDirectoryError,
)
from convnets.models.base import ConvNet

STAGING_PREFIX = ".convnets-export-"  # + pid: the temporary directory an export writes in before renaming


def _require_onnxruntime():
    try:  # optional dependencies: the exporter needs onnx, running the model needs onnxruntime
        import onnx  # noqa: F401
        import onnxruntime
    except ModuleNotFoundError as err:
        raise MissingDependencyError(f"export needs onnx and onnxruntime ({err.name} is missing): "
                                  "pip install 'convnets[deploy]'") from err
    return onnxruntime


class _Logits(nn.Module):
    """The model's logits, ``forward_head(forward_features(x))``, without GoogLeNet's ``return_aux`` branch.

    The input check inside ``forward_features`` only reads the traced input's shape and type in
    Python and adds no operation to the graph, whose batch dimension stays dynamic.
    """

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


def _is_our_onnx(path: Path) -> bool:
    """Whether ``path`` is an ONNX file exported by convnets (which may be replaced by a new export)."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (OSError, ValueError, DecodeError):
        return False
    if any(prop.key == "convnets" for prop in proto.metadata_props):
        return True
    # Files exported before the mark existed: our exporter names the graph's input and output so.
    return [i.name for i in proto.graph.input] == ["images"] and [o.name for o in proto.graph.output] == ["logits"]


def check_export_targets(*paths: str | Path) -> None:
    """Refuse, before any work, outputs that would replace a file convnets did not write.

    An export writes only its own named files (``MODEL.onnx``, ``MODEL.int8.onnx``) into a
    directory and leaves everything else there alone; an existing file of one of those names is
    replaced only when it is an earlier export of convnets.

    Raises:
        ConfigError: a target that is not a path ending in ``.onnx`` (a ``.pt`` name would promise a PyTorch file).
        RunDirectoryError: the output directory is a file, or a target exists and is not ours.
    """
    for path in paths:
        if not isinstance(path, (str, os.PathLike)) or Path(path).suffix.lower() != ".onnx":
            raise ConfigError(f"an ONNX export is written to a path ending in .onnx; got {path!r}")
        try:
            str(path).encode("utf-8")
        except UnicodeEncodeError:  # a folder named in Latin-1: PyTorch's exporter and ONNX Runtime take only UTF-8
            shown = os.fsencode(Path(path).parent).decode("utf-8", "backslashreplace")
            raise ConfigError(f"{shown}: the ONNX tools cannot write into a folder whose name is not UTF-8; choose "
                              "another --out") from None
    for path in map(Path, paths):
        if path.parent.exists() and not path.parent.is_dir():
            raise RunDirectoryError(f"{path.parent}: the output directory (--out) is a file")
        if path.is_dir():
            raise RunDirectoryError(f"{path}: a directory is where the exported file goes; choose another --out")
        if path.exists() and not _is_our_onnx(path):
            raise RunDirectoryError(f"{path} exists and is not an ONNX file exported by convnets; choose another "
                                    "--out or move it")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        return True
    return True


@contextlib.contextmanager
def _staging(directory: Path) -> Iterator[Path]:
    """A temporary directory inside ``directory``, removed afterwards whatever happens.

    Files are written and checked there and renamed into place only when complete, so an
    interrupted or failed export leaves no half-written .onnx. One left by a killed export
    (its process gone) is removed by the next export into the same directory.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if os.name == "posix":  # elsewhere os.kill(pid, 0) would not be a harmless question
        for stale in directory.glob(f"{STAGING_PREFIX}*"):
            pid = stale.name.removeprefix(STAGING_PREFIX).partition("-")[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=directory) as tmp:
        yield Path(tmp)


def _mark(path: Path, **props: str) -> None:
    """Record in the file that convnets wrote it (ONNX metadata), so a later export may replace it."""
    import onnx

    from convnets import __version__

    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {"convnets": __version__, **props})
    onnx.save(proto, str(path))


def _max_opset() -> int:
    from torch.onnx import _constants  # the TorchScript exporter's own limit

    return getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", _constants.ONNX_MAX_OPSET)


def _check_batch(images: object, name: str) -> torch.Tensor:
    if not (isinstance(images, torch.Tensor) and images.dim() == 4 and len(images) and images.is_floating_point()):
        is_tensor = isinstance(images, torch.Tensor)
        got = f"shape {tuple(images.shape)} {images.dtype}" if is_tensor else type(images).__name__
        raise ConfigError(f"{name} must be a float batch of images (N, C, H, W) with N >= 1, got {got}")
    images = images.detach().cpu().float()
    if not torch.isfinite(images).all():  # a comparison or an int8 range of NaN means nothing
        raise ConfigError(f"{name} hold NaN or infinite values ({int((~torch.isfinite(images)).sum())} of "
                          f"{images.numel()}); give real images")
    return images


def export_onnx(model: ConvNet, path: str | Path, check_inputs: torch.Tensor, *, opset: int = 17,
                tolerance: float = 1e-3) -> ExportResult:
    """Export ``model`` (eval mode, dynamic batch) and compare ONNX Runtime with PyTorch on ``check_inputs``.

    The file is written and checked under a temporary name and renamed to ``path`` only once it
    matches PyTorch; an existing ``path`` is replaced only when convnets exported it.

    Raises:
        ConfigError: not a convnets model, or an argument out of its range.
        InputShapeError: ``check_inputs`` of a shape the model does not take.
        RunDirectoryError: ``path`` exists and is not an export of convnets.
        ExportMismatchError: max |onnx - torch| > ``tolerance`` x max(1, max |logit|); no file is left.
    """
    _require_onnxruntime()
    if not isinstance(model, ConvNet):
        raise ConfigError(f"export_onnx takes a convnets model (convnets.create_model or load_weights), got "
                          f"{type(model).__name__}")
    check_inputs = _check_batch(check_inputs, "check_inputs")
    opset = check_whole(opset, "opset", 7)
    if opset > _max_opset():
        raise ConfigError(f"opset must be from 7 to {_max_opset()}, got {opset}")
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance > 0):
        raise ConfigError(f"tolerance must be a finite number > 0, got {tolerance!r}")
    path = Path(path)
    check_export_targets(path)
    # A copy in eval mode: the exporter runs the module it is given, and a module left in training
    # mode would update the user's BatchNorm statistics while being traced.
    model = copy.deepcopy(model).cpu().float().eval()  # the fp32 export, whatever the type it was trained in
    model.check_input(check_inputs)
    with torch.no_grad():
        expected = model(check_inputs)
    with _staging(path.parent) as tmp:
        staged = tmp / path.name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(_Logits(model).eval(), (check_inputs[:1],), str(staged), dynamo=False,
                              opset_version=opset, input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
        _mark(staged)
        result = compare(path, expected, run_onnx(session(staged), check_inputs), tolerance)
        os.replace(staged, path)
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
    (a few hundred training images), which is what keeps the accuracy loss small. Like
    :func:`export_onnx`, the file appears only once complete and replaces only an export of ours.

    Raises:
        ConfigError: an empty or malformed calibration batch, or ``batch_size`` below 1.
        RunDirectoryError: ``out_path`` exists and is not an export of convnets.
    """
    _require_onnxruntime()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    calibration = _check_batch(calibration, "calibration")
    batch_size = check_whole(batch_size, "batch_size")
    check_export_targets(out_path)
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path}: no such ONNX file to quantize")
    if out_path.resolve() == onnx_path.resolve():
        raise ConfigError(f"{out_path}: the int8 model would replace the fp32 model it is made from; give another "
                          "output path")
    _check_quantizable(onnx_path, calibration)
    batches = [b.numpy().astype(np.float32) for b in calibration.split(batch_size)]
    with _staging(out_path.parent) as tmp:
        prepared, staged = tmp / "prepared.onnx", tmp / out_path.name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(staged), _Calibration(batches, "images"), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        _mark(staged, quantized="int8")
        os.replace(staged, out_path)
    return out_path


def _check_quantizable(path: Path, calibration: torch.Tensor) -> None:
    """Refuse, before any work, a file that is not an fp32 ONNX model, or calibration images it does not take.

    Raises:
        ConfigError: not an ONNX model, one quantized already, or images of another (C, H, W) than its input.
    """
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (OSError, ValueError, DecodeError) as err:
        raise ConfigError(f"{path}: not an ONNX model ({str(err).splitlines()[0][:120]})") from err
    if any(prop.key == "quantized" for prop in proto.metadata_props) or any(
            node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in proto.graph.node):
        raise ConfigError(f"{path} is quantized already: quantize the fp32 export (MODEL.onnx)")
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] if proto.graph.input else []
    if len(dims) == 4 and all(dims[1:]) and tuple(dims[1:]) != tuple(calibration.shape[1:]):
        raise ConfigError(f"the calibration images are {'x'.join(map(str, calibration.shape[1:]))}; {path.name} "
                          f"takes {'x'.join(map(str, dims[1:]))} (C x H x W)")


def median_latency_ms(fn: Callable[[], object], *, repeats: int = 30, warmup: int = 5,
                      max_seconds: float = 20.0) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` runs after ``warmup`` (capped in time).

    Raises:
        ConfigError: ``repeats`` below 1, ``warmup`` below 0, or a time cap that is not a positive number.
    """
    repeats, warmup = check_whole(repeats, "repeats"), check_whole(warmup, "warmup", 0)
    if not (isinstance(max_seconds, (int, float)) and max_seconds > 0):
        raise ConfigError(f"max_seconds must be a number > 0, got {max_seconds!r}")
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


@torch.no_grad()
def settle_batchnorm(model: nn.Module, x: torch.Tensor) -> None:
    """Running statistics of a freshly built model's BatchNorm layers, measured on ``x`` (the model left in eval mode).

    At their initial values (mean 0, variance 1) the layers scale nothing in eval mode, and with PyTorch's
    initialisation the signal of MobileNet and EfficientNet shrinks about tenfold per stage: their
    outputs are the classifier's bias, the same for every input (features ~1e-8). An export check on
    them compares constants and would pass a graph that ignores its input.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: this one batch's statistics
    model.train()
    try:
        model(x)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.eval()


def load_model_or_run(source: str, **model_kwargs) -> tuple[ConvNet, dict]:
    """A run directory or weights file (trained model, with its metadata), or a registered name (random weights).

    Raises:
        FileNotFoundError: a path that does not exist.
        RunDirectoryError: a directory that is not a finished run.
        ConfigError: builder arguments given for trained weights (they are fixed by the weights).
        UnknownModelError: a name that is not registered.
    """
    from convnets.evaluate import weights_path
    from convnets.registry import create_model
    from convnets.weights import load_weights, read_metadata
    from convnets.weights.files import file_format

    path = Path(source)
    if path.exists():
        path = weights_path(path)
        if model_kwargs:
            raise ConfigError(f"--model-arg applies to a registered model name; the weights in {source} fix its "
                              f"architecture (got {', '.join(model_kwargs)})")
        if file_format(path) == "keras":  # refused as not ours before its weights are converted (or misfit)
            read_metadata(path)
        return load_weights(path).eval(), read_metadata(path)
    if path.suffix or "/" in source or os.sep in source:
        raise FileNotFoundError(f"{source}: no such run directory or weights file")
    return create_model(source, **model_kwargs).eval(), {}


def dataset_images(meta: dict, split: str, limit: int | None = None, *, data: str | None = None,
                   data_dir: str | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Normalised images and labels of the dataset the weights were trained on (None without metadata).

    Args:
        meta: the weights' metadata (input size, normalisation, classes, dataset name).
        split: ``train`` or ``test``.
        limit: at most this many images (>= 1); the whole split by default.
        data, data_dir: where the dataset is (default: the name in ``meta``).

    Raises:
        ConfigMismatchError: the data has other classes than the model (their number, names or order).
    """
    if limit is not None:
        limit = check_whole(limit, "limit")
    data = data or meta.get("dataset")
    if not data or not ("input_size" in meta or "preprocessing" in meta):
        return None
    import dataclasses

    from convnets.data.datasets import load_dataset
    from convnets.data.loader import make_loader
    from convnets.data.preprocess import Preprocessing
    from convnets.evaluate import same_classes

    prep = Preprocessing.from_metadata(meta)  # the weights' recipe: what the model was trained and evaluated on
    ds = load_dataset(data, data_dir=data_dir, preprocessing=prep)
    if "classes" in meta and len(meta["classes"]) != len(ds.classes):
        raise ConfigMismatchError(f"the model predicts {len(meta['classes'])} classes but {data} has "
                                  f"{len(ds.classes)}; pass the --data it was trained on")
    # Labels are compared by index: the same count under other names (digits' 0-9 against Fashion-MNIST's
    # garments) would make an accuracy that measures nothing.
    if "classes" in meta and not same_classes(meta["classes"], ds.classes):
        raise ConfigMismatchError(f"the model predicts the classes {_few(meta['classes'])} but {data} has "
                                  f"{_few(ds.classes)}; pass the --data it was trained on")
    ds = dataclasses.replace(ds, mean=prep.mean, std=prep.std)
    xs, ys, seen = [], [], 0
    for x, y in make_loader(ds, split, batch_size=512, shuffle=split == "train", seed=0):
        xs.append(x)
        ys.append(y)
        seen += len(y)
        if limit and seen >= limit:
            break
    return torch.cat(xs)[:limit], torch.cat(ys)[:limit]


def _few(names: list[str], shown: int = 4) -> str:
    """``names`` for a message: the first ``shown`` and how many more."""
    more = f", ... ({len(names)} in all)" if len(names) > shown else ""
    return "[" + ", ".join(map(repr, names[:shown])) + more + "]"


def accuracy_of(predict: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> float:
    correct = sum((predict(xb).argmax(1) == yb).sum().item() for xb, yb in zip(x.split(256), y.split(256),
                                                                              strict=True))
    return correct / len(y)
