"""Means, 95% confidence intervals over seeds, paired differences between arms, and the verdict rule.

Every training experiment runs each arm with several seeds. A seed fixes the initialisation, the
training subset, the data order and the augmentation draws (``TrainConfig.seed``), so two arms
run with the same seed differ only in what the arm changes: their difference per seed is a paired
measurement, and the spread of those differences (not of the arms' accuracies) says whether the
arms are told apart. The interval is Student's t interval over seeds; the verdict rule is the one
written in ``docs/RESULTS.md``:

- **reproduced**: the claimed direction holds and the paired 95% interval excludes zero;
- **contradicted**: the opposite direction holds and the interval excludes zero;
- **inconclusive**: otherwise (including a single seed, whose interval is unbounded).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from convnets.errors import ConfigError

# Two-sided 95% quantiles of Student's t, t_{0.975}(df) for df = 1..30 (from scipy.stats.t.ppf,
# checked in tests/test_experiments_stats.py). Larger df use the Cornish-Fisher expansion below.
T975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
        2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
        2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272)
Z975 = 1.959964  # the normal quantile the t quantiles tend to

VERDICTS = ("reproduced", "contradicted", "inconclusive")


def t_quantile(df: int) -> float:
    """The two-sided 95% quantile of Student's t with ``df`` degrees of freedom (``df`` >= 1).

    Exact to 6 decimals up to 30 (the table); beyond, the Cornish-Fisher expansion in 1/df, within
    1e-4 of the exact value there and closer as df grows.
    """
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ConfigError(f"degrees of freedom must be a whole number >= 1, got {df!r}")
    if df <= len(T975):
        return T975[df - 1]
    z = Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` values and its 95% t interval ``[low, high]`` (unbounded for one value)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def format(self, scale: float = 1.0, digits: int = 2) -> str:
        """``mean [low, high]`` with every number times ``scale`` (100 for points of accuracy)."""
        if self.n < 2:
            return f"{self.mean * scale:.{digits}f} (1 seed)"
        return f"{self.mean * scale:.{digits}f} [{self.low * scale:.{digits}f}, {self.high * scale:.{digits}f}]"

    def to_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n}


def _numbers(values: Sequence[float], what: str) -> list[float]:
    values = list(values)
    if not values:
        raise ConfigError(f"{what}: no values (an arm with no finished seed)")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise ConfigError(f"{what}: expected finite numbers, got {values!r}")
    return [float(v) for v in values]


def mean_interval(values: Sequence[float]) -> Interval:
    """The mean of ``values`` (one per seed) and its 95% t interval: mean +- t(n-1) * sd / sqrt(n)."""
    values = _numbers(values, "mean_interval")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return Interval(mean, -math.inf, math.inf, 1)
    half = t_quantile(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return Interval(mean, mean - half, mean + half, len(values))


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> Interval:
    """The 95% interval of ``b - a`` over the seeds both arms ran: the mean of the per-seed differences.

    Args:
        a: the reference arm's value by seed.
        b: the compared arm's value by seed.

    Raises:
        ConfigError: the arms share no seed (nothing is paired).
    """
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ConfigError(f"paired_difference: the arms share no seed (seeds {sorted(a)} and {sorted(b)})")
    return mean_interval([b[s] - a[s] for s in seeds])


def verdict(difference: Interval, claimed: int = 1) -> str:
    """The verdict on a claim about a paired difference, by the rule in docs/RESULTS.md.

    Args:
        difference: the paired interval of (claimed better arm - the other).
        claimed: +1 when the claim says the difference is positive, -1 when it says negative.

    Returns:
        ``reproduced`` when the claimed direction holds with the interval excluding zero,
        ``contradicted`` when the opposite holds with the interval excluding zero, else ``inconclusive``.
    """
    if claimed not in (1, -1):
        raise ConfigError(f"claimed must be +1 or -1, got {claimed!r}")
    if difference.n < 2 or not difference.excludes_zero():
        return "inconclusive"
    return "reproduced" if (difference.mean > 0) == (claimed > 0) else "contradicted"


def summarise(by_seed: Mapping[str, Mapping[int, float]], claims: Sequence[tuple[str, str, int]]
              ) -> dict[str, dict]:
    """Each arm's mean and interval, and each claimed comparison's paired interval and verdict.

    Args:
        by_seed: ``{arm: {seed: value}}``.
        claims: ``(arm, reference, direction)``: the claim that ``arm - reference`` has the sign of
            ``direction``.

    Returns:
        ``{"arms": {arm: Interval dict}, "comparisons": [{arm, reference, claimed, difference, verdict}]}``.
    """
    arms = {arm: mean_interval(list(values.values())).to_dict() for arm, values in by_seed.items()}
    comparisons = []
    for arm, reference, direction in claims:
        for name in (arm, reference):
            if name not in by_seed:
                raise ConfigError(f"summarise: no arm {name!r}; arms: {', '.join(by_seed)}")
        diff = paired_difference(by_seed[reference], by_seed[arm])
        comparisons.append({"arm": arm, "reference": reference, "claimed": direction, "difference": diff.to_dict(),
                            "verdict": verdict(diff, direction)})
    return {"arms": arms, "comparisons": comparisons}


def overall(verdicts: Sequence[str]) -> str:
    """One verdict from several that a claim needs together: reproduced only when all are; contradicted
    when any is; inconclusive otherwise."""
    if not verdicts or any(v not in VERDICTS for v in verdicts):
        raise ConfigError(f"expected verdicts among {VERDICTS}, got {list(verdicts)!r}")
    if "contradicted" in verdicts:
        return "contradicted"
    return "reproduced" if all(v == "reproduced" for v in verdicts) else "inconclusive"
