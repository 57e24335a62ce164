"""The architecture experiments (``bottleneck``, ``scaling``) run end to end at the tiny budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import convnets
from convnets.experiments import run_experiment
from convnets.experiments.architecture import _pixels


def _check_files(name: str, out: Path, figure: str) -> dict:
    data = json.loads((out / "results.json").read_text())
    assert data["name"] == name and data["budget"] == "tiny"
    assert (out / figure).read_bytes()[:4] == b"\x89PNG"
    assert f"![{name}]({figure})" in (out / "results.md").read_text()
    return data["data"]


@pytest.mark.slow
def test_bottleneck_counts_the_course_figures_and_trains_both_nets(tmp_path: Path) -> None:
    before = convnets.list_models()
    result = run_experiment("bottleneck", "tiny", tmp_path, threads=1, seeds=2, progress=False)
    (verdict,) = result.verdicts
    assert (verdict["arm"], verdict["reference"], verdict["difference"]["n"]) == ("bottleneck", "naive", 2)
    data = _check_files("bottleneck", tmp_path, "bottleneck.png")
    costs = {(r["part"], r["kind"]): r for r in data["costs"]}
    assert costs[("5x5 branch", "naive")]["macs"] == 120_422_400  # 28 x 28 x 32 x 5 x 5 x 192
    assert costs[("5x5 branch", "bottleneck")]["macs"] == 12_443_648  # 28 x 28 x 16 x 192 + 28 x 28 x 32 x 5 x 5 x 16
    assert costs[("module 3a", "naive")]["out_channels"] == 64 + 128 + 32 + 192
    assert costs[("module 3a", "bottleneck")]["out_channels"] == 256
    assert all(r["ms"] > 0 for r in data["costs"])
    naive, neck = data["nets"]
    assert (naive["kind"], neck["kind"]) == ("naive", "bottleneck")
    assert naive["steps"] == neck["steps"] > 0  # the same budget for both
    assert neck["macs"] < naive["macs"] and neck["params"] < naive["params"]
    assert convnets.list_models() == before  # the experiment's net was registered for its runs only


@pytest.mark.slow
def test_scaling_matches_single_coefficients_to_the_compound_macs(tmp_path: Path) -> None:
    # digits loads in a fraction of Fashion-MNIST's time; the pipeline is the same.
    result = run_experiment("scaling", "tiny", tmp_path, data="digits", threads=1, seeds=2, progress=False)
    assert [v["reference"] for v in result.verdicts] == ["depth-phi1", "width-phi1", "resolution-phi1"]
    assert all(v["arm"] == "compound-phi1" and v["difference"]["n"] == 2 for v in result.verdicts)
    rows = _check_files("scaling", tmp_path, "scaling.png")["rows"]
    base = rows[0]
    assert base["rule"] == "base" and [r["rule"] for r in rows[1:]] == ["compound", "depth", "width", "resolution"]
    compound = rows[1]
    for r in rows[2:]:
        changed = {k for k in ("width", "depth", "resolution") if r[k] != base[k]}
        assert changed == {r["rule"]}  # one coefficient scaled, the others the base's
        assert r["macs"] > base["macs"] and r["steps"] == base["steps"] > 0
    assert compound["width"] > base["width"] and compound["depth"] > base["depth"]
    assert compound["resolution"] > base["resolution"]
    # width and resolution have fine enough steps at this size to land within 5% of the compound net
    for rule in ("width", "resolution"):
        (r,) = [r for r in rows if r["rule"] == rule]
        assert abs(r["macs"] / compound["macs"] - 1) < 0.05, rule
    assert "efficientnet_variant" not in convnets.list_models()


def test_image_sides_that_the_loader_would_pad_are_not_used() -> None:
    assert [_pixels(s, 28) for s in (20.4, 27.6, 29, 33.2, 35, 35.6, 41)] == [20, 28, 28, 28, 28, 36, 41]
