"""Every registered model counted at its default input, beside its published figures.

Counting all 51 models on the meta device takes seconds; their figures only change with the code,
so the package ships them (``counts.json``, written by :func:`write_shipped_counts` and checked
against a fresh count of every model by the test suite) and ``convnets list`` reads them. A model
registered by the user, or one whose default input differs from the shipped one, is counted.
"""

from __future__ import annotations

import functools
import json
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from convnets.analysis.counting import COUNTING_RULE, count
from convnets.analysis.formatting import exact, human, render_table, rounded
from convnets.models.base import ConvNet
from convnets.registry import Published, create_model, list_models, model_entry

MARKS = {"exact": "=", "rounded": "~", "differs": "!=", "none": ""}
SHIPPED_COUNTS = Path(__file__).with_name("counts.json")


def build_for_counting(name: str, **kwargs) -> ConvNet:
    """Build a registered model on the meta device (no memory, no initialisation cost).

    A builder that needs real values while building (a boolean-mask index) cannot run on meta;
    it is built on the CPU instead, which only such small models need.
    """
    try:
        with torch.device("meta"):
            return create_model(name, **kwargs)
    except NotImplementedError:
        return create_model(name, **kwargs)


def agreement(ours: int, published: int | None, is_exact: bool) -> str:
    """How our count compares with a published figure: "exact", "rounded", "differs" or "none".

    A rounded figure (``724_000_000`` for "0.724G") matches when ours rounds to it: the
    tolerance is half a unit of its last nonzero digit.
    """
    if published is None:
        return "none"
    if is_exact:
        return "exact" if ours == published else "differs"
    digits = str(abs(published))
    unit = 10 ** (len(digits) - len(digits.rstrip("0")))
    return "rounded" if 2 * abs(ours - published) <= unit else "differs"


@dataclass(frozen=True)
class CatalogRow:
    """One model of ``convnets list``.

    Attributes:
        name: registry name.
        family: model family.
        input_size: default (C, H, W).
        params: our trainable-parameter count.
        macs: our MACs at ``input_size``.
        published: the registry's published figures, if any.
        params_match: :func:`agreement` of the parameter counts.
        macs_match: :func:`agreement` of the MACs.
    """

    name: str
    family: str
    input_size: tuple[int, int, int]
    params: int
    macs: int
    published: Published | None
    params_match: str
    macs_match: str

    @property
    def differs(self) -> bool:
        return "differs" in (self.params_match, self.macs_match)


def catalog_row(name: str, recount: bool = False) -> CatalogRow:
    """One registered model at its default input, compared with its published figures.

    The shipped figures are used unless ``recount`` (or the model is not among them).
    """
    entry = model_entry(name)
    shipped = None if recount else shipped_counts().get(entry.name)
    if shipped and tuple(shipped["input_size"]) == entry.input_size:
        params, macs = shipped["params"], shipped["macs"]
    else:
        counts = count(build_for_counting(name), entry.input_size)
        params, macs = counts.params, counts.macs
    pub = entry.published
    params_match = agreement(params, pub and pub.params, bool(pub) and pub.is_exact("params"))
    macs_match = agreement(macs, pub and pub.macs, bool(pub) and pub.is_exact("macs"))
    return CatalogRow(name, entry.family, entry.input_size, params, macs, pub, params_match, macs_match)


def catalog(pattern: str = "*", recount: bool = False) -> list[CatalogRow]:
    """:func:`catalog_row` for every registered model matching ``pattern``."""
    return [catalog_row(name, recount) for name in list_models(pattern)]


@functools.cache
def shipped_counts() -> dict[str, dict]:
    """The figures shipped with the package: model name -> input_size, params, MACs.

    {} when the file is absent or damaged (a broken install): every model is then counted, as with ``--recount``.
    """
    try:
        counts = json.loads(SHIPPED_COUNTS.read_text())
    except (OSError, ValueError):
        return {}
    return counts if isinstance(counts, dict) else {}


def write_shipped_counts(path: Path = SHIPPED_COUNTS) -> dict[str, dict]:
    """Count every registered model afresh and write the figures ``convnets list`` ships with."""
    rows = {r.name: {"input_size": list(r.input_size), "params": r.params, "macs": r.macs}
            for r in catalog(recount=True)}
    lines = [f"  {json.dumps(name)}: {json.dumps(row)}" for name, row in rows.items()]  # one model a line
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    shipped_counts.cache_clear()
    return rows


def render_catalog(rows: Sequence[CatalogRow]) -> str:
    """The ``convnets list`` table, a legend, and the exact figures of every difference."""
    table = [_cells(r) for r in rows]
    headers = ["Model", "Family", "Input", "Params", "MACs", "Published params", "Published MACs"]
    lines = render_table(headers, table, [False, False, False, True, True, True, True])
    lines += [
        "",
        f"{len(rows)} models; params and MACs at each model's default input (C x H x W), batch 1.",
        "Published figures: = equal to ours, ~ ours rounds to the published (rounded) figure, != differs.",
        *_differences(rows),
    ]
    lines += textwrap.wrap(f"Counting rule: {COUNTING_RULE}", width=100, subsequent_indent="  ")
    return "\n".join(lines)


def _cells(r: CatalogRow) -> list[str]:
    pub = r.published
    size = "x".join(str(d) for d in r.input_size)
    return [
        r.name,
        r.family,
        size,
        human(r.params),
        human(r.macs),
        _published_cell(pub and pub.params, r.params_match, pub and pub.is_exact("params")),
        _published_cell(pub and pub.macs, r.macs_match, pub and pub.is_exact("macs")),
    ]


def _published_cell(value: int | None, match: str, is_exact: bool) -> str:
    if value is None:
        return "-"
    return f"{human(value) if is_exact else rounded(value)} {MARKS[match]}"


def _differences(rows: Sequence[CatalogRow]) -> list[str]:
    lines = []
    for r in rows:
        for figure, ours, match in (("params", r.params, r.params_match), ("MACs", r.macs, r.macs_match)):
            if match == "differs":
                theirs = getattr(r.published, figure.lower())
                lines.append(
                    f"  {r.name} {figure}: ours {exact(ours)}, published {exact(theirs)} ({r.published.source})"
                )
    return ["Differences:", *lines] if lines else []
