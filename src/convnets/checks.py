"""Rules for the values a config field or builder argument takes, each with the words that say so.

One rule states both the test and the allowed range, so the error always names what would have
been accepted: ``epochs must be a whole number >= 1; got 'three'``. :class:`~convnets.training.TrainConfig`
and :func:`~convnets.registry.create_model` check with these before any work starts.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from convnets.errors import ConfigError


@dataclass(frozen=True)
class Rule:
    """What a value must be.

    Attributes:
        test: True for an acceptable value.
        allowed: the acceptable values in words, completing "NAME must be ...".
    """

    test: Callable[[Any], bool]
    allowed: str

    def check(self, name: str, value: Any, where: str = "") -> None:
        """Raise a :class:`ConfigError` naming ``name`` and the allowed values unless ``value`` passes.

        Args:
            name: the field or argument, as the user wrote it.
            value: its value.
            where: what to put before the message ("config.json: ", "resnet20: ").
        """
        if not self.test(value):
            raise ConfigError(f"{where}{name} must be {self.allowed}; got {value!r}")

    def or_none(self, meaning: str) -> Rule:
        """This rule, also accepting None (``meaning`` says what None does)."""
        return Rule(lambda v: v is None or self.test(v), f"{self.allowed}, or None ({meaning})")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # True is an int to Python, not to a user


def _is_number(value: Any) -> bool:
    # Ints are finite however large (and too large for math.isfinite, which converts them to float).
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


def whole(low: int, high: int | None = None, *, note: str = "") -> Rule:
    """A whole number from ``low`` to ``high`` (inclusive; None: no upper bound). Booleans are refused."""
    words = f"a whole number >= {low}" if high is None else f"a whole number from {low} to {high:,}"
    return Rule(lambda v: _is_int(v) and low <= v and (high is None or v <= high),
                words + (f" ({note})" if note else ""))


def number(*, gt: float | None = None, ge: float | None = None, lt: float | None = None,
           le: float | None = None, note: str = "") -> Rule:
    """A finite number (int or float, not a boolean) within the given bounds; ``note`` is added in brackets."""
    bounds = [(gt, ">", lambda v, b: v > b), (ge, ">=", lambda v, b: v >= b),
              (lt, "<", lambda v, b: v < b), (le, "<=", lambda v, b: v <= b)]
    given = [(b, sign, test) for b, sign, test in bounds if b is not None]
    words = " and ".join(f"{sign} {b:g}" for b, sign, _ in given) or "a number"
    return Rule(lambda v: _is_number(v) and all(test(v, b) for b, _, test in given),
                words + (f" ({note})" if note else ""))


def choice(*options: str, quoted: bool = False) -> Rule:
    """One of the strings ``options``, listed bare (``sgd, adamw``) or ``quoted`` (``'A', 'B'``)."""
    words = ", ".join(repr(o) if quoted else o for o in options)
    return Rule(lambda v: isinstance(v, str) and v in options, f"one of {words}")


FLAG = Rule(lambda v: isinstance(v, bool), "true or false")
TEXT = Rule(lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string")


def pathlike(what: str = "a path") -> Rule:
    """A non-empty string or ``os.PathLike``; ``what`` says what it names ("a dataset name or folder")."""
    return Rule(lambda v: isinstance(v, str | os.PathLike) and str(os.fspath(v)).strip() != "",
                f"{what} (a non-empty string)")
