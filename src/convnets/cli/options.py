"""Option parsing shared by the commands: KEY=VALUE lists and numbers with a range.

Ranges that the Python API also needs are checked in the library (``TrainConfig``, ``evaluate``...);
the types here are for options that exist only on the command line, so that argparse names the
option and its allowed range in its own ``convnets CMD: error: argument --X: ...`` line.
"""

from __future__ import annotations

import argparse
import ast
import math
import re
from collections.abc import Callable
from typing import Any

from convnets.analysis.formatting import parse_size
from convnets.errors import ConfigError


def parse_key_values(items: list[str], option: str) -> dict[str, Any]:
    """``["small_input=true", "width=0.5", "shortcut=A", "crop_scale=(0.3, 1)"]`` -> a dict of Python values.

    Values are Python literals (numbers, tuples, quoted strings), ``true``/``false``/``null`` in any
    case, or else taken as a bare string (``shortcut=A``). A key given twice is refused.
    """
    out: dict[str, Any] = {}
    written: dict[str, str] = {}  # each key as typed
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ConfigError(f"{option} takes KEY=VALUE, got {item!r}")
        if key in written:  # which one was meant? Keeping the last without a word would be a guess
            raise ConfigError(f"{option} {key} is given twice ({written[key]!r} and {item!r}); keep one")
        written[key] = item
        words = {"true": True, "false": False, "null": None, "none": None}
        if value.lower() in words:
            out[key] = words[value.lower()]
            continue
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            out[key] = value
    return out


def parse_model_args(items: list[str]) -> dict[str, Any]:
    """``--model-arg KEY=VALUE`` options as builder keyword arguments."""
    return parse_key_values(items, "--model-arg")


# What a number may look like on the command line: ASCII digits, no "_". Python's int() and float() also read
# "1_0" as 10 and other scripts' digits ("١٠"), a typo passing as a number. nan and inf pass here so that
# the library's own check names the field and its range.
_WHOLE_TEXT = re.compile(r"\s*[+-]?[0-9]+\s*")
_REAL_TEXT = re.compile(r"\s*[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[+-]?[0-9]+)?|inf(?:inity)?|nan)\s*",
                        re.IGNORECASE)


def integer(text: str) -> int:
    """An argparse type: a whole number in ASCII digits (ranges are checked where the value is used)."""
    if not _WHOLE_TEXT.fullmatch(text):
        raise argparse.ArgumentTypeError(f"must be a whole number; got {text!r}")
    return int(text)


def real(text: str) -> float:
    """An argparse type: a number in ASCII digits, ``1e-3`` or ``.5`` (ranges are checked where it is used)."""
    if not _REAL_TEXT.fullmatch(text):
        raise argparse.ArgumentTypeError(f"must be a number; got {text!r}")
    return float(text)


def number(kind: type = int, low: float | None = None, high: float | None = None) -> Callable[[str], Any]:
    """An argparse type: an ``int`` or finite ``float`` from ``low`` to ``high`` (inclusive; None: unbounded)."""
    noun = "a whole number" if kind is int else "a number"
    bounds = f" from {low} to {high}" if low is not None and high is not None else (
        f" >= {low}" if low is not None else (f" <= {high}" if high is not None else ""))

    def parse(text: str) -> Any:
        try:
            value = (integer if kind is int else real)(text)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"must be {noun}{bounds}; got {text!r}") from None
        if (kind is float and not math.isfinite(value)) or (low is not None and value < low) or (
                high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {noun}{bounds}; got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


def path_text(text: str) -> str:
    """An argparse type: a path that is not empty (``--out "$DIR"`` with DIR unset must not mean the default)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"must be a path; got {text!r} (leave the option out for the default)")
    return text


def size_type(n: int, order: str) -> Callable[[str], tuple[int, ...]]:
    def parse(text: str) -> tuple[int, ...]:
        try:
            return parse_size(text, n, order)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def layout_type(text: str) -> str:
    """An argparse type: a layout :func:`convnets.weights.load` takes (``timm:tf_efficientnet_b0``, ``keras:vgg16``)."""
    from convnets.weights import LAYOUT_NAMES

    if text not in LAYOUT_NAMES:
        raise argparse.ArgumentTypeError(f"unknown layout {text!r}; known: {', '.join(LAYOUT_NAMES)}")
    return text


def add_layout_option(p: argparse.ArgumentParser, dest: str = "layout") -> None:
    """``--layout NAME``: the peer layout of a weights file whose keys cannot tell it (timm's tf_efficientnet_bN
    has the keys of its efficientnet_bN); detected from the keys when not given."""
    p.add_argument("--layout", dest=dest, type=layout_type, metavar="NAME",
                   help="the peer layout of the weights file when its keys cannot tell it, e.g. "
                   "timm:tf_efficientnet_b0 (same keys as timm:efficientnet_b0); default: detected from the keys")
