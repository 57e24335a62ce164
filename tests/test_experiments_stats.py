"""Means, t intervals, paired differences and the verdict rule, against hand-computed numbers and scipy."""

from __future__ import annotations

import math

import pytest

from convnets.errors import ConfigError
from convnets.experiments.stats import (
    Interval,
    mean_interval,
    overall,
    paired_difference,
    summarise,
    t_quantile,
    verdict,
)


def test_t_quantiles_match_scipy() -> None:
    from scipy.stats import t  # scikit-learn's dependency, so always installed beside convnets

    for df in range(1, 31):
        assert t_quantile(df) == pytest.approx(float(t.ppf(0.975, df)), abs=1e-6), df
    for df in (31, 40, 60, 120, 1000):  # the expansion beyond the table
        assert t_quantile(df) == pytest.approx(float(t.ppf(0.975, df)), abs=1e-4), df


def test_mean_interval_by_hand() -> None:
    # [0.80, 0.82, 0.84]: mean 0.82, sd 0.02, se 0.02 / sqrt(3) = 0.0115470, t(2) = 4.302653
    got = mean_interval([0.80, 0.82, 0.84])
    assert got.mean == pytest.approx(0.82)
    assert got.half_width == pytest.approx(4.302653 * 0.02 / math.sqrt(3))
    assert (got.low, got.high) == pytest.approx((0.770317, 0.869683), abs=1e-6)
    assert got.n == 3 and got.format(100) == "82.00 [77.03, 86.97]"


def test_one_seed_has_an_unbounded_interval_and_no_verdict() -> None:
    got = mean_interval([0.9])
    assert got.mean == 0.9 and got.low == -math.inf and got.high == math.inf
    assert verdict(got) == "inconclusive" and got.format(100) == "90.00 (1 seed)"


def test_pairing_tells_apart_what_the_arms_spreads_do_not() -> None:
    a = {0: 0.80, 1: 0.82, 2: 0.81}
    b = {0: 0.83, 1: 0.84, 2: 0.85}
    # Per seed: 0.03, 0.02, 0.04 -> mean 0.03, sd 0.01, half width 4.302653 * 0.01 / sqrt(3) = 0.024841
    diff = paired_difference(a, b)
    assert diff.mean == pytest.approx(0.03)
    assert (diff.low, diff.high) == pytest.approx((0.005159, 0.054841), abs=1e-6)
    assert verdict(diff, +1) == "reproduced" and verdict(diff, -1) == "contradicted"
    # The arms' own intervals overlap ([0.785, 0.835] and [0.815, 0.865]): unpaired, no verdict.
    ia, ib = mean_interval(list(a.values())), mean_interval(list(b.values()))
    assert ia.high > ib.low


def test_a_difference_whose_interval_holds_zero_is_inconclusive() -> None:
    # Per seed: 0.03, -0.01, 0.02 -> mean 0.013333, sd 0.020817, half width 0.051712
    diff = paired_difference({0: 0.5, 1: 0.5, 2: 0.5}, {0: 0.53, 1: 0.49, 2: 0.52})
    assert diff.mean == pytest.approx(0.013333, abs=1e-6)
    assert diff.half_width == pytest.approx(0.051712, abs=1e-6)
    assert verdict(diff, +1) == verdict(diff, -1) == "inconclusive"


def test_only_shared_seeds_are_paired() -> None:
    diff = paired_difference({0: 0.1, 1: 0.2, 5: 0.9}, {0: 0.2, 1: 0.3, 7: 0.0})
    assert diff.n == 2 and diff.mean == pytest.approx(0.1) and diff.half_width == pytest.approx(0.0, abs=1e-12)
    assert verdict(diff) == "reproduced"  # the same gain on both seeds: a zero-width interval excludes zero


def test_summarise_and_overall() -> None:
    got = summarise({"plain": {0: 0.6, 1: 0.62, 2: 0.61}, "resnet": {0: 0.8, 1: 0.79, 2: 0.83}},
                    [("resnet", "plain", +1)])
    assert got["arms"]["plain"]["mean"] == pytest.approx(0.61)
    (comparison,) = got["comparisons"]
    assert comparison["verdict"] == "reproduced"
    assert comparison["difference"]["mean"] == pytest.approx((0.2 + 0.17 + 0.22) / 3)
    assert overall(["reproduced", "reproduced"]) == "reproduced"
    assert overall(["reproduced", "inconclusive"]) == "inconclusive"
    assert overall(["reproduced", "contradicted"]) == "contradicted"


@pytest.mark.parametrize("call", [
    lambda: t_quantile(0), lambda: t_quantile(2.5), lambda: t_quantile(True),
    lambda: mean_interval([]), lambda: mean_interval([0.5, math.nan]), lambda: mean_interval(["0.5"]),
    lambda: paired_difference({0: 0.1}, {1: 0.2}),
    lambda: verdict(Interval(0.1, 0.05, 0.15, 3), claimed=0),
    lambda: summarise({"a": {0: 0.1}}, [("a", "b", 1)]),
    lambda: overall([]), lambda: overall(["maybe"]),
], ids=["df0", "df-float", "df-bool", "empty", "nan", "text", "no-shared-seed", "claimed-0", "unknown-arm",
        "no-verdicts", "bad-verdict"])
def test_bad_input_is_a_config_error(call) -> None:
    with pytest.raises(ConfigError):
        call()
