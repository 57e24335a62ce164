"""The worked cost examples of the case studies, for any numbers, each checked by counting.

Every formula is computed twice: once from the case studies' arithmetic
(``n_H' * n_W' * n_C' * f * f * n_C`` multiplications for a convolution) and once by building
the real ``nn.Conv2d`` layers on the meta device and counting them with
:func:`convnets.analysis.count`. A report prints both and whether they agree.

Shapes here are written the case studies' way, ``n_H x n_W x n_C`` (height, width, channels).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import nn

from convnets.analysis.counting import count
from convnets.analysis.formatting import check_whole, exact, render_table
from convnets.errors import ConfigError


def conv_output_size(n: int, f: int, p: int = 0, s: int = 1) -> int:
    """Output height (or width) of a convolution: ``floor((n + 2p - f) / s) + 1``.

    Args:
        n: input height or width.
        f: filter size.
        p: padding on each side.
        s: stride.

    Raises:
        ConfigError: a size, filter or stride below 1, a negative padding, or a filter larger than the
            padded input.
    """
    n, f = check_whole(n, "input size n"), check_whole(f, "filter size f")
    p, s = check_whole(p, "padding p", 0), check_whole(s, "stride s")
    size = (n + 2 * p - f) // s + 1
    if size < 1:
        raise ConfigError(
            f"(n + 2p - f)/s + 1 = ({n} + 2*{p} - {f})/{s} + 1 = {size}: the {f}x{f} filter does not fit "
            f"in the {n + 2 * p}-pixel padded input; use a smaller filter or more padding"
        )
    return size


def resolve_padding(padding: int | str, f: int) -> int:
    """Padding in pixels from an integer, ``"valid"`` (0) or ``"same"`` ((f - 1) / 2, odd f only)."""
    f = check_whole(f, "filter size f")
    if isinstance(padding, int) or str(padding).isdigit():
        return int(padding)
    if padding == "valid":
        return 0
    if padding == "same":
        if f % 2 == 0:
            raise ConfigError(f"'same' padding needs an odd filter size, got f={f}")
        return (f - 1) // 2
    raise ConfigError(f"padding must be an integer, 'same' or 'valid', got {padding!r}")


@dataclass(frozen=True)
class CostLine:
    """One computed figure: the formula with its numbers, the value, and the counter's figure.

    Attributes:
        label: what is computed ("5x5 conv on the bottleneck").
        formula: symbols and numbers, ``n_H'*n_W'*n_C'*f*f*n_C = 28*28*32*5*5*16``.
        value: the formula's result.
        counted: the same figure counted on real layers (None where nothing is counted).
    """

    label: str
    formula: str
    value: int
    counted: int | None = None

    @property
    def ok(self) -> bool:
        return self.counted is None or self.counted == self.value


@dataclass(frozen=True)
class CostReport:
    """A worked example: its lines and closing notes; ``str()`` gives the printed report."""

    title: str
    lines: tuple[CostLine, ...]
    notes: tuple[str, ...] = ()
    counted_as: str = "the MACs counted on real nn.Conv2d layers (meta device)"

    @property
    def ok(self) -> bool:
        """True when every formula equals the figure counted on the real layers."""
        return all(line.ok for line in self.lines)

    def value(self, label: str) -> int:
        """The value of the line called ``label``."""
        return next(line.value for line in self.lines if line.label == label)

    def __str__(self) -> str:
        rows = [
            [ln.label, ln.formula, exact(ln.value), "" if ln.counted is None else exact(ln.counted), _mark(ln)]
            for ln in self.lines
        ]
        table = render_table(
            ["", "formula", "value", "counted", "check"], rows, [False, False, True, True, False], "  "
        )
        uncounted = sum(line.counted is None for line in self.lines)
        too_large = "beyond what a PyTorch tensor can describe (2^63 bytes); the formulas are exact integer arithmetic"
        if uncounted == len(self.lines):
            check = f"Check: not counted: these sizes are {too_large}."
        elif uncounted:
            verdict = "match" if self.ok else "MISMATCH"
            check = (f"Check: the {len(self.lines) - uncounted} counted formula(s) {verdict} {self.counted_as}; "
                     f"{uncounted} not counted: {too_large}.")
        else:
            verdict = "all formulas match" if self.ok else "MISMATCH between formula and count"
            check = f"Check: {verdict} {self.counted_as}."
        return "\n".join([self.title, "", *table, "", *self.notes, check])


def _mark(line: CostLine) -> str:
    if line.counted is None:
        return ""
    return "ok" if line.ok else "DIFFERS"


@dataclass(frozen=True)
class Volume:
    """An activation volume ``n_H x n_W x n_C``."""

    h: int
    w: int
    c: int

    def __post_init__(self) -> None:
        for name, value in (("n_H", self.h), ("n_W", self.w), ("n_C", self.c)):
            check_whole(value, f"input volume {name}")

    def __str__(self) -> str:
        return f"{self.h}x{self.w}x{self.c}"


@dataclass(frozen=True)
class Conv:
    """A convolution layer as the case studies describe it: ``filters`` of ``f x f (x n_C/groups)``."""

    filters: int
    f: int
    p: int = 0
    s: int = 1
    groups: int = 1

    def __post_init__(self) -> None:
        check_whole(self.filters, "filters n_C'")
        check_whole(self.f, "filter size f")
        check_whole(self.p, "padding p", 0)
        check_whole(self.s, "stride s")
        check_whole(self.groups, "groups")

    def output(self, x: Volume) -> Volume:
        return Volume(
            conv_output_size(x.h, self.f, self.p, self.s), conv_output_size(x.w, self.f, self.p, self.s), self.filters
        )

    def multiplications(self, x: Volume) -> int:
        y = self.output(x)
        return y.h * y.w * y.c * self.f * self.f * (x.c // self.groups)

    def formula(self, x: Volume) -> str:
        y = self.output(x)
        in_sym = "n_C" if self.groups == 1 else f"n_C/{self.groups}"
        factors = [
            ("n_H'", y.h),
            ("n_W'", y.w),
            ("n_C'", y.c),
            ("f", self.f),
            ("f", self.f),
            (in_sym, x.c // self.groups),
        ]
        # Factors of 1 (a 1x1 filter, one input channel per depthwise filter) are left out, as the
        # case studies write 28*28*32*192 for a 1x1 convolution.
        kept = [(sym, v) for sym, v in factors if v != 1] or factors[:1]
        return "*".join(s for s, _ in kept) + " = " + "*".join(str(v) for _, v in kept)

    def module(self, in_channels: int) -> nn.Conv2d:
        return nn.Conv2d(in_channels, self.filters, self.f, self.s, self.p, groups=self.groups, bias=False)

    def describe(self) -> str:
        return f"{self.filters} filters {self.f}x{self.f}, padding {self.p}, stride {self.s}"


# The most bytes a PyTorch tensor can describe (its storage size is a signed 64-bit integer), in float32.
_MAX_ELEMENTS = (2**63 - 1) // 4


def _representable(x: Volume, *convs: Conv) -> bool:
    """Whether every tensor of ``convs`` applied to ``x`` (input, weights, outputs) has a size PyTorch can hold."""
    sizes = [x.h * x.w * x.c]
    for conv in convs:
        sizes.append(conv.filters * (x.c // conv.groups) * conv.f * conv.f)
        x = conv.output(x)
        sizes.append(x.h * x.w * x.c)
    return max(sizes) <= _MAX_ELEMENTS


def counted_macs(x: Volume, *convs: Conv) -> int | None:
    """MACs of ``convs`` applied in sequence to ``x``, counted on real (meta-device) layers.

    None where a tensor would be too large for PyTorch to describe at all (the formulas, exact
    integer arithmetic, still hold): nothing is counted then.
    """
    if not _representable(x, *convs):
        return None
    layers = []
    channels = x.c
    with torch.device("meta"):
        for conv in convs:
            layers.append(conv.module(channels))
            channels = conv.filters
    return count(nn.Sequential(*layers), input_size=(x.c, x.h, x.w)).macs


def counted_output(x: Volume, conv: Conv) -> Volume | None:
    """The output volume of a real ``nn.Conv2d`` run on the meta device (None: too large for PyTorch)."""
    if not _representable(x, conv):
        return None
    with torch.device("meta"):
        out = conv.module(x.c)(torch.empty(1, x.c, x.h, x.w))
    return Volume(out.shape[2], out.shape[3], out.shape[1])


def _conv_line(label: str, x: Volume, conv: Conv) -> CostLine:
    return CostLine(label, conv.formula(x), conv.multiplications(x), counted_macs(x, conv))


def output_size(n: int, f: int, p: int = 0, s: int = 1) -> CostReport:
    """``floor((n + 2p - f) / s) + 1``, checked against a real convolution's output."""
    size = conv_output_size(n, f, p, s)
    out = counted_output(Volume(n, n, 1), Conv(1, f, p, s))
    got = None if out is None else out.h
    formula = f"floor((n + 2p - f)/s) + 1 = floor(({n} + 2*{p} - {f})/{s}) + 1"
    line = CostLine("output size", formula, size, got)
    note = f"A {f}x{f} filter, padding {p}, stride {s} maps {n}x{n} to {size}x{size}."
    title = f"Convolution output size: n={n}, f={f}, p={p}, s={s}"
    return CostReport(title, (line,), (note,), counted_as="the output size of a real nn.Conv2d (meta device)")


def conv_cost(x: Volume, conv: Conv) -> CostReport:
    """Multiplications of one convolution: ``n_H' * n_W' * n_C' * f * f * n_C``."""
    y = conv.output(x)
    params = (conv.f * conv.f * (x.c // conv.groups) + 1) * conv.filters
    notes = (
        f"Weights: (f*f*n_C + 1 bias) * n_C' = ({conv.f}*{conv.f}*{x.c // conv.groups} + 1) * {conv.filters}"
        f" = {exact(params)} parameters.",
    )
    line = _conv_line("multiplications", x, conv)
    return CostReport(f"Convolution: {x} -> {conv.describe()} -> {y}", (line,), notes)


def one_by_one(x: Volume, filters: int) -> CostReport:
    """A 1x1 convolution that shrinks (or grows) the number of channels at the same n_H x n_W."""
    conv = Conv(filters, 1)
    report = conv_cost(x, conv)
    verb = "shrinks" if filters < x.c else "sets"
    note = (
        f"A 1x1 convolution {verb} n_C from {x.c} to {filters} and keeps {x.h}x{x.w}; pooling would shrink "
        "n_H and n_W instead. Each output pixel is a fully connected layer across the channels."
    )
    return CostReport(f"1x1 convolution: {x} -> {conv.output(x)}", report.lines, (*report.notes, note))


def inception_bottleneck(x: Volume, filters: int = 32, f: int = 5, bottleneck: int = 16) -> CostReport:
    """A "same" ``f x f`` convolution computed directly, and after a 1x1 bottleneck."""
    check_whole(bottleneck, "bottleneck channels")
    big = Conv(filters, f, resolve_padding("same", f))
    squeeze = Conv(bottleneck, 1)
    mid = squeeze.output(x)
    naive = _conv_line(f"naive {f}x{f} conv", x, big)
    first = _conv_line(f"1x1 conv to {bottleneck}", x, squeeze)
    second = _conv_line(f"{f}x{f} conv on {mid}", mid, big)
    total = CostLine(
        "bottleneck total",
        f"{exact(first.value)} + {exact(second.value)}",
        first.value + second.value,
        counted_macs(x, squeeze, big),
    )
    ratio = Fraction(total.value, naive.value)
    fewer = (f"{naive.value / total.value:.1f}x fewer multiplications" if ratio <= 1 else
             f"{float(ratio):.1f}x more multiplications: a bottleneck this wide saves nothing")
    notes = (f"The bottleneck costs {float(ratio):.4f} of the naive conv ({fewer}) for the same {big.output(x)} "
             "output.",)
    title = f"Inception: {x} -> {filters} filters {f}x{f} 'same', directly vs through a 1x1 bottleneck of {bottleneck}"
    return CostReport(title, (naive, first, second, total), notes)


def depthwise_separable(x: Volume, filters: int = 5, f: int = 3, p: int = 0, s: int = 1) -> CostReport:
    """A normal convolution vs depthwise (one ``f x f`` filter per channel) + pointwise (1x1)."""
    normal = Conv(filters, f, p, s)
    depthwise = Conv(x.c, f, p, s, groups=x.c)
    pointwise = Conv(filters, 1)
    mid = depthwise.output(x)
    lines = (
        _conv_line("normal conv", x, normal),
        _conv_line("depthwise", x, depthwise),
        _conv_line("pointwise", mid, pointwise),
    )
    dw, pw = lines[1].value, lines[2].value
    total = CostLine("separable total", f"{exact(dw)} + {exact(pw)}", dw + pw, counted_macs(x, depthwise, pointwise))
    ratio = Fraction(total.value, lines[0].value)
    identity = Fraction(1, filters) + Fraction(1, f * f)
    notes = (
        f"Ratio: {exact(total.value)} / {exact(lines[0].value)} = {float(ratio):.4f};"
        f" 1/n_C' + 1/f^2 = 1/{filters} + 1/{f * f} = {float(identity):.4f}"
        f" ({'equal' if ratio == identity else 'NOT equal'}, exactly {ratio}).",
    )
    title = f"Depthwise-separable vs normal convolution: {x} -> {normal.describe()} -> {normal.output(x)}"
    return CostReport(title, (*lines, total), notes)
