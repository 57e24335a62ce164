"""Fit a network to a device: measure candidate scalings and keep the largest that meets a latency budget.

This is what EfficientNet's compound scaling (and MobileNet's width and resolution multipliers)
are for: one family, many sizes, and the right one depends on the hardware it runs on. The
candidates are measured here, on this machine, not estimated from MACs: depthwise convolutions,
memory traffic and thread scheduling make MACs a poor predictor of latency on a CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from convnets.analysis import count
from convnets.analysis.formatting import check_whole
from convnets.errors import ConfigError
from convnets.export import torch_latency_ms
from convnets.models.efficientnet import efficientnet_scaled
from convnets.models.mobilenet import MobileNetV1, MobileNetV2

FAMILIES = ("efficientnet", "mobilenet_v1", "mobilenet_v2")
PHIS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
WIDTHS = (0.25, 0.5, 0.75, 1.0, 1.4)
RESOLUTIONS = (128, 160, 192, 224)


@dataclass
class Candidate:
    """One scaling of a family: its description, builder arguments, size, cost and measured latency."""

    label: str
    build: dict
    input_size: tuple[int, int, int]
    params: int = 0
    macs: int = 0
    latency_ms: float = float("nan")


def candidates(family: str, num_classes: int = 1000) -> list[Candidate]:
    """The scalings tried for a family, from smallest to largest MACs."""
    if family not in FAMILIES:
        raise ConfigError(f"--family must be one of {', '.join(FAMILIES)}, got {family!r}")
    out = []
    if family == "efficientnet":
        for phi in PHIS:
            out.append(Candidate(f"phi={phi:g}", {"phi": phi}, (3, 0, 0)))  # input size set by the scaling
    else:
        for width in WIDTHS:
            for res in RESOLUTIONS:
                out.append(Candidate(f"width={width:g} res={res}", {"width": width, "image_size": res},
                                     (3, res, res)))
    with torch.device("meta"):
        for c in out:
            model = build(family, c.build, num_classes)
            c.input_size = model.input_size
            counts = count(model)
            c.params, c.macs = counts.params, counts.macs
    return sorted(out, key=lambda c: c.macs)


def build(family: str, args: dict, num_classes: int = 1000):
    if family == "efficientnet":
        return efficientnet_scaled(args["phi"], num_classes=num_classes)
    cls = MobileNetV1 if family == "mobilenet_v1" else MobileNetV2
    return cls(num_classes, width=args["width"], image_size=args["image_size"])


def fit_device(family: str, latency_ms: float, batch: int = 1, repeats: int = 10,
               num_classes: int = 1000) -> tuple[Candidate | None, list[Candidate]]:
    """Measure every candidate (PyTorch eager, this machine) and pick the largest within ``latency_ms``.

    Candidates are measured from the smallest up; once two in a row exceed the budget by more
    than 2x, larger ones are not run (they would only be slower). Returns the pick (None when
    nothing meets the budget) and the measured table.

    Raises:
        ConfigError: an unknown family, a budget that is not a positive number of milliseconds, or a
            batch, repeat count or class count below 1; all checked before anything is measured.
    """
    if isinstance(latency_ms, bool) or not isinstance(latency_ms, (int, float)) or not (
            math.isfinite(latency_ms) and latency_ms > 0):
        raise ConfigError(f"latency_ms must be a finite number of milliseconds > 0, got {latency_ms!r}")
    batch, repeats = check_whole(batch, "batch"), check_whole(repeats, "repeats")
    num_classes = check_whole(num_classes, "num_classes")
    measured, over = [], 0
    for c in candidates(family, num_classes):
        model = build(family, c.build, num_classes).eval()
        c.latency_ms = torch_latency_ms(model, torch.randn(batch, *c.input_size), repeats=repeats, warmup=2)
        measured.append(c)
        over = over + 1 if c.latency_ms > 2 * latency_ms else 0
        if over >= 2:
            break
    fitting = [c for c in measured if c.latency_ms <= latency_ms]
    return (max(fitting, key=lambda c: c.macs) if fitting else None), measured
