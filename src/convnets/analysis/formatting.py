"""Number and table formatting shared by the summary, ``convnets list`` and ``convnets cost``."""

from __future__ import annotations

import numbers
import re
from collections.abc import Sequence

from convnets.errors import ConfigError

_UNITS = ((10**18, "E"), (10**15, "P"), (10**12, "T"), (10**9, "G"), (10**6, "M"), (10**3, "K"))


def human(n: int | float) -> str:
    """A count with an SI suffix and two decimals: ``138357544 -> "138.36M"``, ``999 -> "999"``."""
    for scale, unit in _UNITS:
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:,}" if isinstance(n, int) else f"{n:.2f}"


def rounded(n: int) -> str:
    """A published rounded figure with its own digits only: ``724_000_000 -> "724M"``, ``3_858_000_000 -> "3.858G"``."""
    for scale, unit in _UNITS:
        if abs(n) >= scale:
            return f"{n / scale:.6f}".rstrip("0").rstrip(".") + unit
    return str(n)


def exact(n: int) -> str:
    """An exact integer with thousands separators: ``15470264320 -> "15,470,264,320"``."""
    return f"{n:,}"


def both(n: int) -> str:
    """Human-readable and exact together: ``"138.36M (138,357,544)"``; small numbers once."""
    short = human(n)
    return short if short == exact(n) else f"{short} ({exact(n)})"


def shape_str(shape: tuple) -> str:
    """A tensor shape as PyTorch prints it, ``[1, 64, 56, 56]``; nested shapes joined by spaces."""
    if not shape:
        return "-"
    if isinstance(shape[0], tuple):
        return " ".join(shape_str(s) for s in shape)
    return "[" + ", ".join(str(d) for d in shape) + "]"


def parse_size(text: str, n: int = 3, order: str = "CxHxW") -> tuple[int, ...]:
    """Parse a size written ``3x224x224`` into a tuple of ``n`` positive integers.

    Args:
        text: ``n`` positive integers separated by ``x`` (``3x224x224``), or commas.
        n: how many numbers are expected.
        order: what the numbers mean, used in the error message only.

    Raises:
        ValueError: a message naming the expected form.
    """
    parts = text.lower().replace(",", "x").replace("*", "x").split("x")
    # ASCII digits only: int() would also read "3_2" as 32 and other scripts' digits, a typo passing as a size.
    values = tuple(int(p) for p in parts) if all(re.fullmatch(r"\s*[0-9]+\s*", p) for p in parts) else ()
    if len(values) != n or min(values, default=0) < 1:
        example = "x".join(["3", "224", "224"][:n]) if order == "CxHxW" else "x".join(["28", "28", "192"][:n])
        raise ConfigError(f"bad size {text!r}: expected {n} positive integers {order}, e.g. {example}")
    return values


def check_whole(value: object, name: str, low: int = 1) -> int:
    """``value`` as an ``int`` if it is a whole number >= ``low``, else a ConfigError naming ``name`` and the range.

    Floats are refused rather than truncated (an input size of 32.7 is a mistake, not 32); so are bools.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ConfigError(f"{name} must be a whole number >= {low}, got {value!r}")
    return int(value)


def render_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None, indent: str = ""
) -> list[str]:
    """Lines of a plain-text table: a header, a rule, then the rows, columns padded to fit.

    Args:
        headers: column titles.
        rows: cells, already formatted as strings.
        right: per column, True to right-align (numbers); defaults to left-aligned.
        indent: prefix of every line.
    """
    right = right or [False] * len(headers)
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=False)]

    def line(cells: Sequence[str]) -> str:
        padded = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)]
        return (indent + "  ".join(padded)).rstrip()

    rule = indent + "  ".join("-" * w for w in widths)
    return [line(headers), rule, *(line(r) for r in rows)]
