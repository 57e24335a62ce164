"""Evaluation: accuracy, top-k, per-class accuracy and confusion matrix, test-time views, ensembles,
and what each costs at inference.

The case studies warn that multi-crop and ensembles win benchmarks more than they help products:
they multiply the inference cost for a few tenths of a point. The report therefore puts the
accuracy gained beside the inference time multiplied.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from convnets.data.datasets import load_dataset
from convnets.data.loader import make_loader
from convnets.data.views import tta_views
from convnets.device import resolve_device
from convnets.errors import ConfigError
from convnets.weights import load_weights, read_metadata

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


class Ensemble(nn.Module):
    """Several models voting on one input: averaged probabilities (default), averaged logits, or votes.

    Args:
        models: the members; they must predict the same classes in the same order.
        combine: ``prob``, ``logit`` or ``vote`` (majority; ties go to the higher mean probability).
        weights: one weight per member (default equal).
    """

    def __init__(self, models: Sequence[nn.Module], combine: str = "prob", weights: Sequence[float] | None = None):
        super().__init__()
        if combine not in COMBINE:
            raise ConfigError(f"combine must be one of {', '.join(COMBINE)}, got {combine!r}")
        if weights is not None and len(weights) != len(models):
            raise ConfigError(f"{len(weights)} weights for {len(models)} models")
        self.members = nn.ModuleList(models)
        self.combine = combine
        w = torch.tensor(weights if weights is not None else [1.0] * len(models), dtype=torch.float32)
        self.register_buffer("weights", w / w.sum())

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
    """One evaluated model and the preprocessing its weights were trained with."""

    name: str
    model: nn.Module
    classes: list[str]
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    dataset: str = ""


def load_member(source: str | Path, device: torch.device | str = "cpu") -> Member:
    """A model from a run directory (its ``best.safetensors``) or a weights file with our metadata."""
    path = Path(source)
    if path.is_dir():
        path = path / "best.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{source}: neither a run directory with best.safetensors nor a weights file")
    meta = read_metadata(path)
    missing = [k for k in ("model", "classes", "input_size", "mean", "std") if k not in meta]
    if missing:
        raise ConfigError(f"{path}: its metadata lacks {', '.join(missing)}; evaluate needs weights saved by convnets")
    model = load_weights(path).to(device).eval()
    return Member(f"{meta['model']} ({Path(source).name})", model, list(meta["classes"]), tuple(meta["input_size"]),
                  tuple(meta["mean"]), tuple(meta["std"]), str(path), meta.get("dataset", ""))


def check_same_classes(members: Sequence[Member]) -> list[str]:
    """The shared class list; members trained on different classes cannot be averaged."""
    first = members[0]
    for other in members[1:]:
        if other.classes != first.classes:
            raise ConfigError(f"cannot ensemble models with different classes:\n  {first.name}: {first.classes}\n"
                             f"  {other.name}: {other.classes}")
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
    k = min(k, num_classes)
    pred = probs.argmax(1)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    per_class = (confusion.diag().float() / confusion.sum(1).clamp(min=1).float()).tolist()
    top_k = (probs.topk(k, dim=1).indices == labels[:, None]).any(1).float().mean().item()
    return Scores((pred == labels).float().mean().item(), top_k, per_class, confusion)


@dataclass
class MemberResult:
    name: str
    scores: Scores
    seconds: float
    images: int

    @property
    def ms_per_image(self) -> float:
        return 1000 * self.seconds / max(self.images, 1)


@dataclass
class EvalReport:
    """Per-member and ensemble results, with the inference cost of each."""

    classes: list[str]
    views: str
    combine: str
    members: list[MemberResult]
    ensemble: MemberResult | None
    top_k: int

    def table(self) -> str:
        best_single = max(self.members, key=lambda m: m.scores.accuracy)
        rows = [(m.name, m.scores, m.ms_per_image) for m in self.members]
        if self.ensemble:
            rows.append((self.ensemble.name, self.ensemble.scores, self.ensemble.ms_per_image))
        head = f"{'model':<36} {'accuracy':>9} {'top-' + str(self.top_k):>7} {'ms/image':>9} {'images/s':>9} " \
               f"{'cost x':>7} {'gain':>7}"
        lines = [f"test-time views: {self.views}" + (f"; ensemble combines {self.combine}" if self.ensemble else ""),
                 head, "-" * len(head)]
        for name, s, ms in rows:
            cost = ms / best_single.ms_per_image
            gain = 100 * (s.accuracy - best_single.scores.accuracy)
            lines.append(f"{name[:36]:<36} {s.accuracy:>9.4f} {s.top_k:>7.4f} {ms:>9.3f} {1000 / ms:>9,.0f} "
                         f"{cost:>6.2f}x {gain:>+6.2f}")
        lines.append("cost x: inference time relative to the best single model; gain: accuracy points over it.")
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


@torch.no_grad()
def member_probabilities(member: Member, data: str, *, data_dir: str | None, views: str, batch_size: int,
                         device: torch.device) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Probabilities of one member over the test split (file order), with its own preprocessing."""
    c, h, _ = member.input_size
    dataset = load_dataset(data, data_dir=data_dir, image_size=h, channels=c)
    dataset = dataclasses.replace(dataset, mean=member.mean, std=member.std)  # the weights' normalisation
    if dataset.classes != member.classes and len(dataset.classes) == len(member.classes):
        print(f"warning: {data} names its classes {dataset.classes}, {member.name} was trained on "
              f"{member.classes}; comparing by index")
    elif len(dataset.classes) != len(member.classes):
        raise ConfigError(f"{member.name} predicts {len(member.classes)} classes, {data} has {len(dataset.classes)}")
    loader = make_loader(dataset, "test", batch_size=batch_size, device=device)
    kwargs = view_kwargs(views, h, member.mean, member.std)
    probs, labels, seconds = [], [], 0.0
    for x, y in loader:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        p = tta(member.model, x, views, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - start
        probs.append(p.cpu())
        labels.append(y.cpu())
    return torch.cat(probs), torch.cat(labels), seconds


def evaluate(sources: Sequence[str | Path], data: str | None = None, *, data_dir: str | None = None,
             views: str = "none", combine: str = "prob", weights: Sequence[float] | None = None,
             batch_size: int = 256, top_k: int = 5, device: str | None = None) -> EvalReport:
    """Evaluate one model or an ensemble of several on the test split of ``data``.

    Args:
        sources: run directories or weights files (with convnets metadata).
        data: dataset name or folder; default: the dataset the first model was trained on.
        views: test-time views: none, mirror or ten-crop.
        combine: how an ensemble combines its members: prob, logit or vote.
        weights: ensemble weights, one per member.
    """
    dev = resolve_device(device)
    members = [load_member(s, dev) for s in sources]
    classes = check_same_classes(members)
    data = data or members[0].dataset
    if not data:
        raise ConfigError("no --data given and the weights do not say which dataset they were trained on")
    results, all_probs, labels = [], [], None
    for member in members:
        probs, member_labels, seconds = member_probabilities(member, data, data_dir=data_dir, views=views,
                                                             batch_size=batch_size, device=dev)
        if labels is not None and not torch.equal(labels, member_labels):
            raise ConfigError("the members' test sets differ in order or size; they cannot be ensembled")
        labels = member_labels
        all_probs.append(probs)
        results.append(MemberResult(member.name, scores(probs, labels, top_k), seconds, len(labels)))
    ensemble = None
    if len(members) > 1:
        w = torch.tensor(weights if weights is not None else [1.0] * len(members), dtype=torch.float32)
        if len(w) != len(members):
            raise ConfigError(f"{len(w)} ensemble weights for {len(members)} models")
        # Members already produced probabilities; their logs are logits up to a per-row constant,
        # which softmax and argmax ignore, so "logit" averaging is log-probability averaging here.
        combined = combine_outputs([p.clamp_min(1e-12).log() for p in all_probs], combine, w / w.sum())
        ensemble = MemberResult(f"ensemble of {len(members)}", scores(combined, labels, top_k),
                                sum(r.seconds for r in results), len(labels))
    return EvalReport(classes, views, combine, results, ensemble, min(top_k, len(classes)))


def write_report(report: EvalReport, out: Path) -> None:
    """``evaluation.txt``, ``evaluation.json`` and ``confusion.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.txt").write_text(report.table() + "\n\n" + report.confusion_text() + "\n")
    result = report.ensemble or report.members[0]
    payload = {
        "views": report.views, "combine": report.combine, "classes": report.classes,
        "results": [{"name": r.name, "accuracy": r.scores.accuracy, f"top{report.top_k}": r.scores.top_k,
                     "per_class": r.scores.per_class, "ms_per_image": r.ms_per_image}
                    for r in [*report.members, *([report.ensemble] if report.ensemble else [])]],
        "confusion": result.scores.confusion.tolist(),
    }
    (out / "evaluation.json").write_text(json.dumps(payload, indent=2) + "\n")
    plot_confusion(result.scores.confusion, report.classes, out / "confusion.png", result.name)


def plot_confusion(confusion: torch.Tensor, classes: list[str], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = confusion.float()
    rates = m / m.sum(1, keepdim=True).clamp(min=1)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n))
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            if confusion[i, j]:
                ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=f"{title}: confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
