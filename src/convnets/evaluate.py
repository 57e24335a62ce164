"""Evaluation: accuracy, top-k, per-class accuracy and confusion matrix, test-time views, ensembles,
and what each costs at inference.

The case studies warn that multi-crop and ensembles win benchmarks more than they help products:
they multiply the inference cost for a few tenths of a point. The report therefore puts the
accuracy gained beside the inference time multiplied.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from convnets.analysis.formatting import check_whole
from convnets.data.datasets import DATASET_NAMES, Dataset, load_dataset
from convnets.data.loader import make_loader
from convnets.data.preprocess import Preprocessing
from convnets.data.views import TTA_VIEWS, tta_views
from convnets.device import resolve_device
from convnets.errors import ConfigError, ConfigMismatchError, DataError, RunDirectoryError, WeightsError
from convnets.training.report import displayable
from convnets.training.rundir import kind_of
from convnets.weights import WeightSpec, atomic_write, get_weights, load, load_weights, read_metadata
from convnets.weights.io import check_writable

COMBINE = ("prob", "logit", "vote")


def view_kwargs(views: str, image_size: int, mean: Sequence[float], std: Sequence[float]) -> dict:
    """Ten-crop for small images: pad by 1/8 of the side (4 px at 32) with black and take crops of the
    original size, so the corners are the shifts a pad-and-crop-trained net saw in training."""
    if views != "ten-crop":
        return {}
    return {"pad": max(1, image_size // 8), "fill": [-m / s for m, s in zip(mean, std, strict=True)]}


@torch.no_grad()
def tta(model: nn.Module, x: torch.Tensor, views: str = "none", **view_args) -> torch.Tensor:
    """Class probabilities of ``x`` (N, K), averaged over test-time views (none, mirror, ten-crop).

    The views are batched as one (V*N) forward pass, then folded back and averaged.
    """
    stacked = tta_views(x, views, **view_args)
    v, n = stacked.shape[:2]
    probs = F.softmax(model(stacked.flatten(0, 1)).float(), dim=1)
    return probs.view(v, n, -1).mean(0)


def ensemble_weights(weights: Sequence[float] | None, members: int) -> torch.Tensor:
    """One weight per member, normalised to sum to 1 (equal weights for None).

    Raises:
        ConfigError: a count other than one per member, a weight that is not a finite number >= 0,
            or weights that are all zero (they would weigh nothing and report a meaningless accuracy).
    """
    if weights is None:
        return torch.full((members,), 1.0 / members)
    try:
        values = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise ConfigError(f"ensemble weights must be numbers, one per model; got {weights!r}") from None
    if len(values) != members:
        raise ConfigError(f"{len(values)} ensemble weights for {members} model{'s' * (members != 1)}; "
                          "give one weight per model")
    if not all(math.isfinite(w) and w >= 0 for w in values) or not sum(values) > 0:
        raise ConfigError(f"ensemble weights must be finite numbers >= 0, at least one of them > 0; got {values}")
    w = torch.tensor(values, dtype=torch.float64)
    return (w / w.sum()).float()


class Ensemble(nn.Module):
    """Several models voting on one input: averaged probabilities (default), averaged logits, or votes.

    Args:
        models: the members; they must predict the same classes in the same order.
        combine: ``prob``, ``logit`` or ``vote`` (majority; ties go to the higher mean probability).
        weights: one weight per member, each >= 0 (default equal); they are normalised to sum to 1.
    """

    def __init__(self, models: Sequence[nn.Module], combine: str = "prob", weights: Sequence[float] | None = None):
        super().__init__()
        if combine not in COMBINE:
            raise ConfigError(f"combine must be one of {', '.join(COMBINE)}, got {combine!r}")
        if not models:
            raise ConfigError("an ensemble needs at least one model")
        self.members = nn.ModuleList(models)
        self.combine = combine
        self.register_buffer("weights", ensemble_weights(weights, len(models)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return combine_outputs([m(x) for m in self.members], self.combine, self.weights)


def combine_outputs(logits: Sequence[torch.Tensor], combine: str, weights: torch.Tensor) -> torch.Tensor:
    """Combined scores (N, K) of several members' logits; argmax is the ensemble's prediction."""
    stacked = torch.stack([t.float() for t in logits])  # (M, N, K)
    w = weights.to(stacked.device).view(-1, 1, 1)
    if combine == "logit":
        return (stacked * w).sum(0)
    probs = (F.softmax(stacked, dim=2) * w).sum(0)
    if combine == "prob":
        return probs
    votes = (F.one_hot(stacked.argmax(2), stacked.shape[2]).float() * w).sum(0)
    return votes + probs * 1e-6  # the mean probability only breaks ties


@dataclass
class Member:
    """One evaluated model and the preprocessing its weights were trained with.

    Attributes:
        data, data_dir: the dataset it was trained on, as training was given it (a run's
            ``config.json``), else the dataset name in the weights' metadata.
        preprocessing: how its images are prepared (the weights' recipe; ``input_size``, ``mean``
            and ``std`` are its fields).
    """

    name: str
    model: nn.Module
    classes: list[str]
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    dataset: str = ""
    data: str = ""
    data_dir: str | None = None
    preprocessing: Preprocessing | None = None


def weights_path(source: str | Path) -> Path:
    """The weights file of a run directory (its ``best.safetensors``) or ``source`` itself when it is a file."""
    if not isinstance(source, str | os.PathLike):
        got = f"a {type(source).__name__} model" if isinstance(source, nn.Module) else repr(source)
        raise ConfigError(f"a model to evaluate is a run directory or a weights file saved by convnets, got {got}"
                          + (" (save it with convnets.weights.save_weights(model, PATH, metadata))"
                             if isinstance(source, nn.Module) else ""))
    path = Path(source)
    if path.is_dir():
        if (path / "best.safetensors").is_file():
            return path / "best.safetensors"
        if (path / "last.safetensors").is_file():  # not taken in its place: the user asked for the run's best
            raise RunDirectoryError(f"{source}: the run has no best.safetensors (removed?) but has last.safetensors, "
                                    f"the weights of its last epoch: give {path / 'last.safetensors'} to use those")
        why = ("a run stopped before its first epoch ended has no weights yet" if (path / "config.json").is_file()
               else "it is not a convnets run")
        raise RunDirectoryError(f"{source}: a directory without best.safetensors ({why}); give a run directory "
                                "or a .safetensors file saved by convnets")
    if not path.is_file():
        raise FileNotFoundError(f"{source}: neither a run directory with best.safetensors nor a weights file "
                                "(no such file or directory)")
    return path


def _check_metadata(meta: dict, path: Path) -> None:
    """Evaluation needs the preprocessing fields; their values were checked by ``read_metadata``."""
    needed = ("model", "classes") if "preprocessing" in meta else ("model", "classes", "input_size", "mean", "std")
    missing = [k for k in needed if k not in meta]
    if missing:
        raise WeightsError(f"{path}: its metadata lacks {', '.join(missing)}; evaluate needs weights saved by convnets "
                           "(a run's best.safetensors)")
    if not meta["classes"]:
        raise WeightsError(f"{path}: its metadata names no classes")


def trained_data(source: str | Path, meta: dict) -> tuple[str, str | None]:
    """Where the model's data was: a run's ``config.json`` has what training was given, the metadata only a name."""
    config = Path(source) / "config.json"
    if config.is_file():
        try:
            values = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            values = {}
        if isinstance(values, dict) and isinstance(values.get("data"), str):
            data_dir = values.get("data_dir")
            return values["data"], data_dir if isinstance(data_dir, str) else None
    return str(meta.get("dataset", "")), None


def registered_weights(source: object) -> WeightSpec | None:
    """The registry's spec for a ``MODEL:TAG`` source (``resnet20:fashion-mnist``); None for a path.

    A path that exists wins over a name of that spelling.

    Raises:
        WeightsError: ``MODEL:TAG`` names weights that are not registered (the message lists the known tags).
    """
    if not isinstance(source, str) or source.count(":") != 1 or "/" in source or "\\" in source:
        return None
    model, tag = source.split(":")
    if not model or not tag or Path(source).exists():
        return None
    return get_weights(model, tag)


def _registered_member(spec: WeightSpec, device: torch.device | str) -> Member:
    """A model with registered weights: the registry's spec says its classes and preprocessing."""
    model = load(spec.tag, model_name=spec.model, new_head=False).to(device).eval()
    classes = list(spec.categories) or [str(i) for i in range(spec.num_classes)]
    data = spec.tag if spec.tag in DATASET_NAMES else ""  # our own weights are tagged with their dataset
    return Member(f"{spec.model} ({spec.tag})", model, classes, spec.input_size, spec.mean, spec.std,
                  f"{spec.model}:{spec.tag}", spec.dataset, data)


def load_member(source: str | Path, device: torch.device | str = "cpu") -> Member:
    """A model from a run directory (its ``best.safetensors``), a weights file with our metadata, or the
    registered weights ``MODEL:TAG`` (``resnet20:fashion-mnist``, ``resnet18:imagenet``).

    Raises:
        FileNotFoundError: ``source`` does not exist.
        RunDirectoryError: a directory without weights.
        WeightsError: not a safetensors file, or one without the metadata convnets saves; unknown weights name.
    """
    spec = registered_weights(source)
    if spec is not None:
        return _registered_member(spec, device)
    path = weights_path(source)
    meta = read_metadata(path)
    _check_metadata(meta, path)
    model = load_weights(path).to(device).eval()
    data, data_dir = trained_data(source, meta)
    prep = Preprocessing.from_metadata(meta)
    return Member(f"{meta['model']} ({Path(source).name})", model, list(meta["classes"]), (prep.channels, *prep.size),
                  prep.mean, prep.std, str(path), str(meta.get("dataset", "")), data, data_dir, prep)


def check_same_classes(members: Sequence[Member]) -> list[str]:
    """The shared class list; members trained on different classes cannot be averaged."""
    first = members[0]
    for other in members[1:]:
        if other.classes != first.classes:
            raise ConfigMismatchError(f"cannot ensemble models with different classes:\n  {first.name}: "
                                      f"{first.classes}\n  {other.name}: {other.classes}")
    return first.classes


@dataclass
class Scores:
    """Accuracy figures of one set of predictions."""

    accuracy: float
    top_k: float
    per_class: list[float]
    confusion: torch.Tensor = field(repr=False)


def scores(probs: torch.Tensor, labels: torch.Tensor, k: int = 5) -> Scores:
    num_classes = probs.shape[1]
    k = min(check_whole(k, "top_k"), num_classes)
    pred = probs.argmax(1)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    per_class = (confusion.diag().float() / confusion.sum(1).clamp(min=1).float()).tolist()
    top_k = (probs.topk(k, dim=1).indices == labels[:, None]).any(1).float().mean().item()
    return Scores((pred == labels).float().mean().item(), top_k, per_class, confusion)


@dataclass
class MemberResult:
    """The scores of one model (or the ensemble) and what they cost.

    Attributes:
        model_seconds: time in the network's forward passes (every test-time view), nothing else.
        total_seconds: wall time of the whole pass over the test split: reading, decoding and
            normalising the images, and the model.
        images: test images evaluated.
    """

    name: str
    scores: Scores
    model_seconds: float
    total_seconds: float
    images: int

    @property
    def model_ms_per_image(self) -> float:
        """The model's own time per test image, in milliseconds."""
        return 1000 * self.model_seconds / max(self.images, 1)

    @property
    def images_per_second(self) -> float:
        """End-to-end throughput: test images per second, decoding and preprocessing included."""
        return self.images / self.total_seconds if self.total_seconds > 0 else float("inf")


TIMING_NOTE = (
    "model ms/image: the network's forward passes alone (all test-time views), per test image.\n"
    "images/s end-to-end: test images per second including reading, decoding and normalising them, with the model.\n"
    "cost x: model time relative to the best single model; gain: accuracy points over it."
)


@dataclass
class EvalReport:
    """Per-member and ensemble results, with the inference cost of each.

    Attributes:
        skipped: test files that could not be decoded and were left out, as (path, reason).
        sources: what was evaluated, as :func:`source_key` names each (absolute paths, or tags).
    """

    classes: list[str]
    views: str
    combine: str
    members: list[MemberResult]
    ensemble: MemberResult | None
    top_k: int
    data: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def table(self) -> str:
        best_single = max(self.members, key=lambda m: m.scores.accuracy)
        rows = [*self.members, *([self.ensemble] if self.ensemble else [])]
        head = (f"{'model':<36} {'accuracy':>9} {'top-' + str(self.top_k):>7} {'model ms/image':>14} "
                f"{'images/s end-to-end':>19} {'cost x':>7} {'gain':>7}")
        images = rows[0].images
        first = f"{self.data}: {images:,} test images" if self.data else f"{images:,} test images"
        if self.skipped:
            first += f" ({len(self.skipped)} unreadable files left out, e.g. {self.skipped[0][0]})"
        first += f"; test-time views: {self.views}" + (f"; ensemble combines {self.combine}" if self.ensemble else "")
        lines = [first, head, "-" * len(head)]
        for r in rows:
            cost = r.model_seconds / best_single.model_seconds if best_single.model_seconds > 0 else float("nan")
            gain = 100 * (r.scores.accuracy - best_single.scores.accuracy)
            lines.append(f"{r.name[:36]:<36} {r.scores.accuracy:>9.4f} {r.scores.top_k:>7.4f} "
                         f"{r.model_ms_per_image:>14.3f} {r.images_per_second:>19,.0f} {cost:>6.2f}x {gain:>+6.2f}")
        lines.append(TIMING_NOTE)
        return "\n".join(lines)

    def confusion_text(self) -> str:
        result = self.ensemble or self.members[0]
        m = result.scores.confusion
        width = max(5, len(str(int(m.max()))) + 1)
        names = [c[:12] for c in self.classes]
        lines = [f"confusion matrix of {result.name} (rows: true class, columns: predicted)",
                 " " * 13 + "".join(f"{i:>{width}}" for i in range(len(names)))]
        for i, row in enumerate(m.tolist()):
            acc = result.scores.per_class[i]
            lines.append(f"{i:>2} {names[i]:<10}" + "".join(f"{v:>{width}}" for v in row) + f"   {acc:.3f}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """What ``evaluation.json`` holds."""
        result = self.ensemble or self.members[0]
        return {
            "views": self.views, "combine": self.combine, "classes": self.classes, "data": self.data,
            "sources": self.sources,
            "results": [{"name": r.name, "accuracy": r.scores.accuracy, f"top{self.top_k}": r.scores.top_k,
                         "per_class": r.scores.per_class, "images": r.images,
                         "model_ms_per_image": r.model_ms_per_image, "images_per_second": r.images_per_second,
                         "model_seconds": r.model_seconds, "total_seconds": r.total_seconds}
                        for r in [*self.members, *([self.ensemble] if self.ensemble else [])]],
            "timing": TIMING_NOTE,
            "skipped_files": [list(item) for item in self.skipped],
            "confusion": result.scores.confusion.tolist(),
        }


def _synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read afterwards has seen it (GPUs run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@torch.no_grad()
def member_probabilities(member: Member, dataset: Dataset, *, views: str, batch_size: int,
                         device: torch.device, channels_last: bool = True,
                         num_workers: int | None = None) -> tuple[torch.Tensor, torch.Tensor, float, float, list]:
    """Probabilities of one member over the test split (file order), with its own preprocessing.

    Args:
        channels_last: run the model and its inputs in the channels-last memory format (the same
            outputs up to float rounding): faster on the CPU (``benchmarks/bench_evaluate.py``), and
            what training uses on every device by default.
        num_workers: decoding processes for an image folder (see below for the default).

    Returns:
        probabilities (N, K), labels (N,), the model's seconds, the whole pass's seconds, and the
        test files that could not be decoded.

    On the CPU an image folder is decoded in this process, between the model's batches, rather
    than by worker processes running beside it: decoders sharing the cores with the model made
    its measured time many times its own (the model's clock would count their work). On a GPU
    the workers decode while the GPU computes, and the model's clock stops at a synchronisation.
    """
    dataset = dataclasses.replace(dataset, mean=member.mean, std=member.std)  # the weights' normalisation
    workers = (0 if device.type == "cpu" else None) if num_workers is None else num_workers
    loader = make_loader(dataset, "test", batch_size=batch_size, device=device, num_workers=workers)
    kwargs = view_kwargs(views, member.input_size[1], member.mean, member.std)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = member.model.to(memory_format=memory_format)
    probs, labels, model_seconds = [], [], 0.0
    start = time.perf_counter()
    for x, y in loader:
        x = x.contiguous(memory_format=memory_format)  # part of the batch's preparation, not the model's time
        _synchronize(device)  # the batch's own preparation is not the model's time
        begin = time.perf_counter()
        p = tta(model, x, views, **kwargs)
        _synchronize(device)
        model_seconds += time.perf_counter() - begin
        probs.append(p.cpu())
        labels.append(y.cpu())
    total_seconds = time.perf_counter() - start
    if not labels:
        raise DataError(f"{dataset.source or dataset.name}: no test image could be read "
                        f"({len(loader.bad_files)} unreadable files)")
    probs = torch.cat(probs)
    broken = int((~torch.isfinite(probs).all(1)).sum())
    if broken:  # argmax would still pick a class for them: an accuracy that means nothing
        raise DataError(f"{member.name} gives NaN or infinite outputs for {broken} of {len(probs)} test images of "
                        f"{dataset.source or dataset.name}: images with NaN or infinite pixels (float TIFFs?), or "
                        "values beyond what the model's number type holds")
    return probs, torch.cat(labels), model_seconds, total_seconds, list(loader.bad_files)


def _test_data(member: Member, data: str, data_dir: str | None, given: bool) -> Dataset:
    """The dataset at the member's input size, its classes checked against the member's."""
    c, h, w = member.input_size
    try:
        # Only the test split: normalisation comes from the weights' metadata, not from training images.
        # A recipe, where the weights have one, sets the size and channels itself.
        dataset = load_dataset(data, data_dir=data_dir, image_size=(h, w), channels=c,
                               preprocessing=member.preprocessing, splits=("test",))
    except FileNotFoundError as err:
        if given:
            raise
        raise DataError(f"{member.name} was trained on {data!r}, which is not found from here ({err}); "
                        "pass --data with its location") from err
    if len(dataset.classes) != len(member.classes):
        raise ConfigMismatchError(
            f"{member.name} predicts {len(member.classes)} classes ({_preview(member.classes)}) but {data} has "
            f"{len(dataset.classes)} ({_preview(dataset.classes)}); evaluate it on the data it was trained on"
            + (f" ({member.data})" if member.data else ""))
    if not same_classes(member.classes, dataset.classes):
        # Labels are compared by index: the same count under other names (digits' 0-9 against Fashion-MNIST's
        # garments) made an accuracy that measures nothing, printed after a warning; export refuses it too.
        raise ConfigMismatchError(
            f"{member.name} predicts the classes {_preview(member.classes)} but {data} has "
            f"{_preview(dataset.classes)}: evaluate it on the data it was trained on"
            + (f" ({member.data})" if member.data else "") + ", or name the folders as its classes")
    return dataset


def same_classes(model: Sequence[str], data: Sequence[str]) -> bool:
    """Whether data labelled by index ``data`` gives ``model``'s classes: the same names in the same order, or
    ImageNet's folders named by WordNet id (``n01440764``...), whose sorted order is the 1000 classes' output order
    (``weights/imagenet_classes.txt``)."""
    from convnets.weights import IMAGENET_CLASSES

    if list(model) == list(data):
        return True
    return (tuple(model) == tuple(IMAGENET_CLASSES) and len(data) == len(model)
            and all(re.fullmatch(r"n\d{8}", str(c)) for c in data) and list(data) == sorted(data))


def _preview(names: Sequence[str], shown: int = 4) -> str:
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def evaluate(sources: str | Path | Sequence[str | Path], data: str | None = None, *, data_dir: str | None = None,
             views: str = "none", combine: str = "prob", weights: Sequence[float] | None = None,
             batch_size: int = 256, top_k: int = 5, device: str | None = None) -> EvalReport:
    """Evaluate one model or an ensemble of several on the test split of ``data``.

    Every argument is checked before a model or a dataset is loaded.

    Args:
        sources: run directories or weights files (with convnets metadata); one or several.
        data: dataset name or folder; default: the dataset the first model was trained on.
        views: test-time views: none, mirror or ten-crop.
        combine: how an ensemble combines its members: prob, logit or vote.
        weights: ensemble weights, one per member, each >= 0 and not all 0.
        batch_size: images per forward pass, >= 1.
        top_k: the k of top-k accuracy, >= 1 (more than the classes counts as all of them).
        device: cpu, cuda, cuda:N or mps (default: the best present).

    Raises:
        ConfigError: an argument out of its range; members or data that do not fit together.
        FileNotFoundError, RunDirectoryError, WeightsError, DataError: a source or the data cannot be used.
    """
    one = isinstance(sources, str | os.PathLike | nn.Module) or not isinstance(sources, Iterable)
    sources = [sources] if one else list(sources)
    if not sources:
        raise ConfigError("evaluate needs at least one run directory or weights file")
    if views not in TTA_VIEWS:
        raise ConfigError(f"views must be one of {', '.join(TTA_VIEWS)}, got {views!r}")
    if combine not in COMBINE:
        raise ConfigError(f"combine must be one of {', '.join(COMBINE)}, got {combine!r}")
    batch_size, top_k = check_whole(batch_size, "batch_size"), check_whole(top_k, "top_k")
    member_weights = ensemble_weights(weights, len(sources))
    for source in sources:  # each one exists and is a run, a file or registered before the first is loaded
        registered_weights(source) or weights_path(source)
    dev = resolve_device(device)
    members = [load_member(s, dev) for s in sources]
    classes = check_same_classes(members)
    given = bool(data)
    if not given:
        data, data_dir = members[0].data, data_dir or members[0].data_dir
    if not data:
        raise ConfigError("no --data given and the weights do not say which dataset they were trained on")
    datasets: dict[object, Dataset] = {}
    results, all_probs, labels, skipped = [], [], None, []
    for member in members:
        key = member.preprocessing or member.input_size  # members prepared alike share one loaded dataset
        if key not in datasets:
            datasets[key] = _test_data(member, data, data_dir, given)
        probs, member_labels, model_s, total_s, bad = member_probabilities(
            member, datasets[key], views=views, batch_size=batch_size, device=dev)
        if labels is not None and not torch.equal(labels, member_labels):
            raise ConfigMismatchError("the members' test sets differ in order or size; they cannot be ensembled")
        labels, skipped = member_labels, skipped or bad
        all_probs.append(probs)
        results.append(MemberResult(member.name, scores(probs, labels, top_k), model_s, total_s, len(labels)))
    ensemble = None
    if len(members) > 1:
        # Members already produced probabilities; their logs are logits up to a per-row constant,
        # which softmax and argmax ignore, so "logit" averaging is log-probability averaging here.
        combined = combine_outputs([p.clamp_min(1e-12).log() for p in all_probs], combine, member_weights)
        ensemble = MemberResult(f"ensemble of {len(members)}", scores(combined, labels, top_k),
                                sum(r.model_seconds for r in results), sum(r.total_seconds for r in results),
                                len(labels))
    return EvalReport(classes, views, combine, results, ensemble, min(top_k, len(classes)), str(data), skipped,
                      [source_key(s) for s in sources])


REPORT_FILES = ("evaluation.txt", "evaluation.json", "confusion.png")


def _is_our_report(directory: Path) -> bool:
    """Whether ``directory/evaluation.json`` was written by :func:`write_report` (it vouches for the others)."""
    try:
        payload = json.loads((directory / "evaluation.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(payload, dict) and {"views", "combine", "classes", "results"} <= payload.keys()


def default_report_dir(sources: str | Path | Sequence[str | Path]) -> Path:
    """``runs/evaluate/NAME`` in the working directory, as training writes to ``runs/``: a folder of the user's.

    Never beside the weights, which may be in convnets' installed package or the download cache. NAME is
    the run directory's name; for a file in a run directory the run's name, and the file's name without its
    suffix unless it is the run's ``best.safetensors`` (``seed0-last``, ``seed0-last-ema``); for another
    file, its name without its suffix; ``MODEL-TAG`` for registered weights. An ensemble's names are joined
    with ``+`` (a long list is cut to the first name, ``+N-more`` and a hash of them all). A report there from
    other sources is never replaced: the next free ``NAME-2``, ``NAME-3``... is taken, as ``convnets train``
    numbers its default run directories; only the same sources' earlier report is.

    Raises:
        RunDirectoryError: NAME and its 998 numbered siblings all hold other reports or files.
    """
    sources = [sources] if isinstance(sources, str | os.PathLike) else list(sources)
    base = Path("runs", "evaluate", _capped("+".join(_report_name(s) for s in sources), len(sources)))
    keys = [source_key(s) for s in sources]
    for folder in [base] + [base.with_name(f"{base.name}-{i}") for i in range(2, 1000)]:
        if not any((folder / name).exists() or (folder / name).is_symlink() for name in REPORT_FILES):
            return folder
        if _is_our_report(folder) and _report_sources(folder) == keys:
            return folder
    raise RunDirectoryError(f"{base} and its 998 numbered siblings all hold other reports: pass --out")


# Room for "-999" and a file system's 255-byte names.
_NAME_BYTES = 200


def _capped(name: str, count: int) -> str:
    """``name``, or when over :data:`_NAME_BYTES` its first part, ``+N-more`` and a hash of the whole name."""
    # surrogateescape: a run folder not named in UTF-8 counts, and hashes, as its bytes.
    if len(name.encode("utf-8", "surrogateescape")) <= _NAME_BYTES:
        return name
    import hashlib

    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    first = name.split("+")[0].encode("utf-8", "surrogateescape")[:_NAME_BYTES - 32].decode(errors="ignore")
    return f"{first}+{count - 1}-more-{digest}" if count > 1 else f"{first}-{digest}"


def source_key(source: str | Path) -> str:
    """What a report records of a source: its absolute path, or the registered weights' ``MODEL:TAG``."""
    path = Path(source)
    return str(path.resolve()) if path.exists() else _registered_name(source)


def _registered_name(source: str | Path) -> str:
    """``MODEL:TAG`` as the registry spells it (``LeNet5:Fashion-MNIST`` is ``lenet5:fashion-mnist``), else as given."""
    try:
        spec = registered_weights(source)
    except WeightsError:  # unknown weights: refused where they are loaded
        spec = None
    return f"{spec.model}:{spec.tag}" if spec is not None else os.fspath(source)


def _report_sources(directory: Path) -> list[str] | None:
    """The sources an earlier report in ``directory`` records (None before reports recorded them)."""
    try:
        sources = json.loads((directory / "evaluation.json").read_text(encoding="utf-8")).get("sources")
    except (OSError, ValueError, AttributeError):
        return None
    return sources if isinstance(sources, list) else None


def _report_name(source: str | Path) -> str:
    path = Path(source)
    if path.is_dir():
        return path.resolve().name or "root"
    if path.is_file():
        path = path.resolve()
        if kind_of(path.parent) != "train":
            return path.stem
        run = path.parent.name
        return run if path.stem == "best" else f"{run}-{path.stem}"
    return _registered_name(source).replace(":", "-")  # MODEL:TAG (":" cannot be in a Windows file name)


def _protected_folders() -> list[tuple[str, Path]]:
    """Folders a report never goes into: convnets' installed package and the weights download cache."""
    import convnets
    from convnets.weights import cache_root

    folders = [("convnets' installed package", Path(convnets.__file__).resolve().parent)]
    with contextlib.suppress(ConfigError):  # $CONVNETS_CACHE names no usable folder: nothing is cached there
        folders.append(("the weights download cache", cache_root().resolve()))
    return folders


def check_report_dir(out: str | Path, force: bool = False) -> Path:
    """``out`` if :func:`write_report` may write there: it only replaces its own earlier report (or, with
    ``force``, any file of the report's names), and never writes into convnets' package or the weights cache.

    Raises:
        RunDirectoryError: ``out`` is a file, is inside convnets' package or the weights cache, holds a
            folder of a report file's name, or a file of the report's names not written by convnets (unless
            ``force``).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunDirectoryError(f"{out}: the report directory (--out) is a file")
    for what, folder in _protected_folders():
        if out.resolve().is_relative_to(folder):
            raise RunDirectoryError(f"{out} is inside {what} ({folder}); write the report to a folder of yours "
                                    "with --out")
    folders = [name for name in REPORT_FILES if (out / name).is_dir()]
    if folders:  # even --force does not replace a folder with a file (found before evaluating, not after)
        raise RunDirectoryError(f"{out / folders[0]} is a directory, where the report writes a file; "
                                "choose another --out, or move it")
    taken = [name for name in REPORT_FILES if (out / name).exists()]
    if taken and not force and not _is_our_report(out):
        raise RunDirectoryError(f"{out / taken[0]} exists and is not an evaluation report of convnets; "
                                "choose another --out, move it, or pass --force to replace it")
    check_writable(out, out)  # a read-only --out is found before the evaluation, not after it
    return out


def write_report(report: EvalReport, out: str | Path, force: bool = False) -> Path:
    """``evaluation.txt``, ``evaluation.json`` and ``confusion.png`` in ``out``, each written whole or not at all.

    Only an earlier report of convnets is replaced, or with ``force`` any file of those names
    (:func:`check_report_dir`).
    """
    out = check_report_dir(out, force)
    out.mkdir(parents=True, exist_ok=True)
    result = report.ensemble or report.members[0]
    # The JSON first: it vouches for the other two as ours, so a run stopped between the files
    # can be re-run into the same directory.
    payload = json.dumps(report.to_dict(), indent=2) + "\n"
    atomic_write(out / "evaluation.json", lambda tmp: Path(tmp).write_text(payload, encoding="utf-8"))
    text = report.table() + "\n\n" + report.confusion_text() + "\n"
    atomic_write(out / "evaluation.txt", lambda tmp: Path(tmp).write_text(text, encoding="utf-8",
                                                                          errors="surrogateescape"))
    plot_confusion(result.scores.confusion, report.classes, out / "confusion.png", result.name)
    return out


# The most classes the confusion picture names and counts cell by cell (see plot_confusion).
CONFUSION_LABELLED = 60


def plot_confusion(confusion: torch.Tensor, classes: list[str], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes, title = [displayable(c) for c in classes], displayable(title)  # class folders not named in UTF-8
    m = confusion.float()
    rates = m / m.sum(1, keepdim=True).clamp(min=1)
    n = len(classes)
    # A cell per class pair grows the figure with n: ImageNet's 1000 classes made a 60,000-pixel square (13 GB
    # to draw) after the whole evaluation. Past CONFUSION_LABELLED classes the figure stops growing and shows
    # the rates alone, by class index; evaluation.txt and evaluation.json hold the counts.
    side = min(n, CONFUSION_LABELLED)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * side, 0.8 + 0.5 * side))
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    if n <= CONFUSION_LABELLED:
        for i in range(n):
            for j in range(n):
                if confusion[i, j]:
                    ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
        ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), classes, fontsize=8)
        ax.set(xlabel="predicted", ylabel="true")
    else:
        ax.set(xlabel=f"predicted (class index of {n})", ylabel="true (class index)")
    ax.set(title=f"{title}: confusion matrix")
    with warnings.catch_warnings():
        # Class names in a script the font lacks (CJK) are drawn as boxes; the text report has them.
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path
