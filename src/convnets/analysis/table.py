"""The layer table: output shape, parameters and MACs of every layer, and the per-stage pattern."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from convnets.analysis.counting import COUNTING_RULE, ROOT, Counts, LayerCount, count
from convnets.analysis.formatting import both, check_whole, exact, human, render_table, shape_str

DEFAULT_DEPTH = 4  # deep enough for stages.2.1.conv1, the layer level of every family


@dataclass(frozen=True)
class SummaryRow:
    """One row of the layer table.

    Attributes:
        path: module path (``stages.2.1.conv1``).
        type_name: class name of the module.
        output_shape: shape of its output, batch first; () when it never ran.
        params: parameters it holds (children included).
        macs: MACs of its calls (children included).
        calls: how many times it ran (0 for modules skipped at inference, e.g. auxiliary heads).
    """

    path: str
    type_name: str
    output_shape: tuple
    params: int
    macs: int
    calls: int


@dataclass(frozen=True)
class StageRow:
    """The output of one top-level part of the model (stem, each stage, head).

    Attributes:
        name: ``input``, ``stem``, ``stages.0``, ..., ``head``.
        shape: output shape without the batch dimension, (C, H, W) or (features,).
        reduction: input height / output height (the stage's total stride), None when flat.
        params: parameters of the part.
        macs: MACs of the part.
    """

    name: str
    shape: tuple
    reduction: int | None
    params: int
    macs: int

    @property
    def pattern(self) -> str:
        """The shape as the case studies write it: ``n_H x n_W x n_C``, or the vector length."""
        if len(self.shape) == 3:
            c, h, w = self.shape
            return f"{h} x {w} x {c}"
        return " x ".join(str(d) for d in self.shape) or "-"


@dataclass(frozen=True, repr=False)
class Summary:
    """A counted model, as rows; ``str()`` gives the printed table.

    Attributes:
        name: model name (registry name or class name).
        counts: the full counting result (every module, totals).
        rows: the layer table rows, in execution order.
        stages: the per-stage rows (input, stem, each stage, head).
        depth: the deepest module path level shown in ``rows``.
    """

    name: str
    counts: Counts
    rows: tuple[SummaryRow, ...]
    stages: tuple[StageRow, ...]
    depth: int

    @property
    def params(self) -> int:
        return self.counts.params

    @property
    def macs(self) -> int:
        return self.counts.macs

    @property
    def flops(self) -> int:
        return self.counts.flops

    def __str__(self) -> str:
        return "\n".join(_render(self))

    # A REPL or notebook shows the repr: make that the table too, as ``print`` would.
    __repr__ = __str__


def summary(
    model: nn.Module, input_size: Sequence[int] | None = None, depth: int = DEFAULT_DEPTH, batch: int = 1
) -> Summary:
    """Count ``model`` on the meta device and lay out one row per layer.

    The model is left untouched (see :func:`convnets.analysis.count`).

    Args:
        model: the model; a :class:`~convnets.ConvNet` also gets the per-stage section.
        input_size: (C, H, W); defaults to ``model.input_size``.
        depth: module paths with up to this many components are shown (``stages.2.1.conv1`` is
            4); a module is split into its children only while it has no parameters or MACs of
            its own, so the rows always add up to the totals.
        batch: batch size N the MACs are counted for.

    Returns:
        A :class:`Summary`; ``print(summary(model))`` shows the table.

    Raises:
        ConfigError, InputShapeError: as for :func:`~convnets.analysis.count`, or a ``depth`` below 1.
    """
    depth = check_whole(depth, "depth")
    counts = count(model, input_size, batch)
    records = {r.path: r for r in counts.layers}
    children = _children(counts.layers)
    rows = tuple(_row(r) for r in _frontier(records[ROOT], children, depth))
    name = getattr(model, "name", "") or type(model).__name__
    strides = {info.name: info.reduction for info in getattr(model, "stage_info", [])}
    return Summary(name, counts, rows, _stages(counts, children, strides), depth)


def _children(layers: list[LayerCount]) -> dict[str, list[LayerCount]]:
    # counts.layers is in execution order, so each child list is too.
    children: dict[str, list[LayerCount]] = {}
    for rec in layers:
        if rec.path != ROOT:
            parent = rec.path.rpartition(".")[0] or ROOT
            children.setdefault(parent, []).append(rec)
    return children


def _frontier(rec: LayerCount, children: dict[str, list[LayerCount]], depth: int) -> list[LayerCount]:
    """The modules shown as rows: expand while within ``depth`` and nothing would be hidden."""
    expand = rec.depth < depth and rec.path in children and rec.own_params == 0 and rec.self_macs == 0
    if rec.path != ROOT and rec.calls == 0:
        # A module that never ran is one "(not run)" row (GoogLeNet's auxiliary heads), not a
        # subtree of them; one without parameters (an unused identity) has nothing to show.
        return [rec] if rec.params else []
    if not expand:
        return [rec]
    return [row for child in children[rec.path] for row in _frontier(child, children, depth)]


def _row(rec: LayerCount) -> SummaryRow:
    return SummaryRow(rec.path, rec.type_name, rec.output_shape, rec.params, rec.macs, rec.calls)


def _stages(counts: Counts, children: dict[str, list[LayerCount]], strides: dict[str, int]) -> tuple[StageRow, ...]:
    """Input, then each top-level part, with ``stages`` opened into its stages.

    The reduction is the model's own stage stride where it declares one (LeNet's valid
    convolutions make 32 -> 5 a stride of 4), else input height / output height when exact.
    """
    parts = []
    for rec in children.get(ROOT, []):
        parts.extend(children[rec.path] if rec.path == "stages" and rec.path in children else [rec])
    height = counts.input_size[1] if len(counts.input_size) == 3 else None
    rows = [StageRow("input", counts.input_size, 1 if height else None, 0, 0)]
    for rec in parts:
        if rec.calls == 0 or not rec.output_shape or isinstance(rec.output_shape[0], tuple):
            continue
        shape = rec.output_shape[1:]
        reduction = strides.get(rec.path)
        if reduction is None and height and len(shape) == 3 and height % shape[1] == 0:
            reduction = height // shape[1]
        rows.append(StageRow(rec.path, shape, reduction, rec.params, rec.macs))
    return tuple(rows)


def _render(s: Summary) -> list[str]:
    c = s.counts
    size = "x".join(str(d) for d in c.input_size)
    lines = [f"{s.name}: input {size} (C x H x W), batch {c.batch}, depth {s.depth}", ""]
    table = [
        [r.path, r.type_name, shape_str(r.output_shape) if r.calls else "(not run)", exact(r.params), exact(r.macs)]
        for r in s.rows
    ]
    table.append(["Total", "", shape_str(c.output_shape), exact(_total_params(c)), exact(c.macs)])
    layer_lines = render_table(["Layer", "Type", "Output shape", "Params", "MACs"], table, [False] * 3 + [True] * 2)
    lines += [*layer_lines[:-1], layer_lines[1], layer_lines[-1]]  # a rule above the total
    lines += ["", "Stages: n_H and n_W shrink while n_C grows", ""]
    lines += render_table(
        ["Part", "n_H x n_W x n_C", "Reduction", "Params", "MACs"],
        [
            [r.name, r.pattern, f"/{r.reduction}" if r.reduction else "", human(r.params), human(r.macs)]
            for r in s.stages
        ],
        [False, False, True, True, True],
    )
    return lines + [""] + _footer(c)


def _total_params(c: Counts) -> int:
    return c.params + c.frozen_params


def _footer(c: Counts) -> list[str]:
    lines = [f"Params: {both(c.params)} trainable"]
    if c.frozen_params:
        lines[0] += f", {both(c.frozen_params)} frozen"
    if c.unused_params:
        lines.append(f"  of which {both(c.unused_params)} in modules not run by this forward pass")
    lines += [
        f"MACs:   {both(c.macs)} for a batch of {c.batch}",
        f"FLOPs:  {both(c.flops)} (= 2 x MACs)",
        f"Input:  {'x'.join(str(d) for d in c.input_size)} (C x H x W), counted on the meta device in eval mode",
    ]
    return lines + textwrap.wrap(f"Rule:   {COUNTING_RULE}", width=100, subsequent_indent=" " * 8)
