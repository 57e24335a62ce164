"""``convnets summary``, ``convnets list`` and ``convnets cost``, including golden-file tests.

Golden files (tests/golden/*.txt) hold the exact text the commands print. After a deliberate
change to the output or to the registered models, regenerate them with:

    CONVNETS_REGEN_GOLDEN=1 /tmp/venv/bin/pytest tests/test_cli_analysis.py -k golden

then review the diff (``git diff tests/golden``) before committing.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from pathlib import Path

import pytest

import convnets
from convnets.analysis import catalog as catalog_module
from convnets.analysis.catalog import shipped_counts, write_shipped_counts
from convnets.cli import main

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("CONVNETS_REGEN_GOLDEN") == "1"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- summary


def test_summary_prints_the_layer_table(capsys):
    code, out, _ = run(capsys, "summary", "lenet5")
    assert code == 0
    assert "stages.1.conv      Conv2d     [1, 16, 10, 10]   2,416  240,000" in out
    assert "Total" in out and "61,706" in out and "416,520" in out
    assert "FLOPs = 2 x MACs" in out


def test_summary_options_change_the_model_and_the_input(capsys):
    code, out, _ = run(
        capsys, "summary", "resnet18", "--num-classes", "3", "--in-chans", "1", "--input", "1x64x64", "--depth", "1"
    )
    assert code == 0
    assert "input 1x64x64 (C x H x W)" in out
    head = next(line for line in out.splitlines() if line.startswith("head "))
    assert head.split()[1:] == ["ClassifierHead", "[1,", "3]", "1,539", "1,536"]  # 512 x 3 weights + 3 biases
    assert "stages.2.1" not in out  # depth 1: top-level parts only
    assert "64 x 64 x 1" in out


def test_summary_batch_multiplies_the_macs(capsys):
    _, one, _ = run(capsys, "summary", "lenet5")
    _, four, _ = run(capsys, "summary", "lenet5", "--batch", "4")
    assert "MACs:   416.52K (416,520) for a batch of 1" in one
    assert "MACs:   1.67M (1,666,080) for a batch of 4" in four  # 4 x 416,520


def test_unknown_model_is_one_line_with_suggestions(capsys):
    code, out, err = run(capsys, "summary", "resnet5O")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("convnets summary: error: Unknown model 'resnet5O'.")
    assert "resnet50" in err


@pytest.mark.parametrize("bad", ["3x224", "axbxc", "3x0x224", "3x224x224x1"])
def test_bad_input_size_is_a_clear_usage_error(capsys, bad):
    with pytest.raises(SystemExit) as exc:
        main(["summary", "lenet5", "--input", bad])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --input: bad size {bad!r}: expected 3 positive integers CxHxW, e.g. 3x224x224" in err


def test_an_input_the_model_cannot_take_is_one_line(capsys):
    code, _, err = run(capsys, "summary", "lenet5", "--input", "1x28x28")
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1
    assert "32x32" in err


# ---------------------------------------------------------------- list


def test_list_pattern_shows_ours_beside_the_published_figures(capsys):
    code, out, _ = run(capsys, "list", "vgg1[69]")
    assert code == 0
    lines = out.splitlines()
    assert " ".join(lines[0].split()) == "Model Family Input Params MACs Published params Published MACs"
    row = next(line for line in lines if line.startswith("vgg16 "))
    assert row.split() == ["vgg16", "vgg", "3x224x224", "138.36M", "15.47G", "138.36M", "=", "15.47G", "="]
    assert "2 models" in out


def test_list_reports_the_exact_figures_of_a_difference(capsys, monkeypatch):
    from convnets import registry

    entry = convnets.model_entry("lenet5")
    wrong = registry.Published(61_000, None, "a wrong source")
    monkeypatch.setitem(
        registry._REGISTRY,
        "lenet5",
        registry.ModelEntry(entry.name, entry.builder, entry.family, entry.input_size, wrong, entry.summary),
    )
    code, out, _ = run(capsys, "list", "lenet5")
    assert code == 0
    assert "61K !=" not in out and "61.00K !=" in out
    assert "lenet5 params: ours 61,706, published 61,000 (a wrong source)" in out


def test_list_with_no_match_is_an_error(capsys):
    code, _, err = run(capsys, "list", "nosuchnet*")
    assert code == 2 and "no registered model matches 'nosuchnet*'" in err


@pytest.fixture(scope="module")
def full_list() -> tuple[int, str, float]:
    """`convnets list` over every model, run once for the speed test and the golden file."""
    buffer = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(buffer):
        code = main(["list"])
    return code, buffer.getvalue(), time.perf_counter() - start


def test_list_of_every_model_is_fast(full_list):
    code, out, elapsed = full_list
    assert code == 0
    assert f"{len(convnets.list_models())} models" in out
    assert elapsed < 30, f"convnets list took {elapsed:.1f} s"  # a fraction of a second: it reads counts.json


def test_the_shipped_counts_are_a_fresh_count_of_every_model(tmp_path):
    """`convnets list` reads counts.json: it must equal what counting every registered model gives now."""
    fresh = write_shipped_counts(tmp_path / "counts.json")
    if REGEN:
        write_shipped_counts()
    assert set(fresh) == set(convnets.list_models())
    assert shipped_counts() == fresh, (
        "src/convnets/analysis/counts.json is stale (a model changed); regenerate with "
        "CONVNETS_REGEN_GOLDEN=1 pytest tests/test_cli_analysis.py -k shipped"
    )


def test_list_counts_afresh_a_model_it_has_no_figures_for(capsys, monkeypatch):
    monkeypatch.setattr(catalog_module, "shipped_counts", lambda: {})  # as for a model the user registers
    code, out, _ = run(capsys, "list", "lenet5")
    assert code == 0 and "61.71K" in out
    with_recount = run(capsys, "list", "resnet2*", "--recount")[1]
    monkeypatch.undo()
    assert with_recount == run(capsys, "list", "resnet2*")[1]


# ---------------------------------------------------------------- cost


def test_cost_help_lists_every_example(capsys):
    with pytest.raises(SystemExit):
        main(["cost", "--help"])
    out = capsys.readouterr().out
    for name in ("output-size", "conv", "one-by-one", "inception-module", "depthwise"):
        assert name in out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["output-size", "-n", "224", "-f", "3", "-p", "1", "-s", "2"], ["112", "floor((224 + 2*1 - 3)/2) + 1"]),
        (["conv"], ["28*28*32*5*5*192", "120,422,400"]),
        (["one-by-one"], ["28x28x192 -> 28x28x32", "4,816,896"]),
        (["inception-module"], ["120,422,400", "2,408,448", "10,035,200", "12,443,648"]),
        (["depthwise"], ["2,160", "432", "240", "672", "1/5 + 1/9"]),
        (["depthwise", "--input", "14x14x512", "--filters", "512", "-p", "same"], ["1/512 + 1/9 = 0.1131"]),
        (["inception-module", "--input", "14x14x480", "--filters", "48", "--bottleneck", "16"], ["all formulas match"]),
    ],
)
def test_cost_examples(capsys, argv, expected):
    code, out, _ = run(capsys, "cost", *argv)
    assert code == 0
    for text in expected:
        assert text in out
    assert "Check: all formulas match" in out


def test_cost_errors_are_one_line(capsys):
    code, _, err = run(capsys, "cost", "output-size", "-n", "3", "-f", "5")
    assert code == 2 and err.count("\n") == 1 and "does not fit" in err
    code, _, err = run(capsys, "cost", "conv", "-f", "4", "-p", "same")
    assert code == 2 and "odd filter size" in err


def test_cost_input_is_a_volume(capsys):
    with pytest.raises(SystemExit):
        main(["cost", "conv", "--input", "28x28"])
    assert "expected 3 positive integers HxWxC, e.g. 28x28x192" in capsys.readouterr().err


# ---------------------------------------------------------------- golden files

GOLDEN_COMMANDS = {
    "summary_lenet5.txt": ["summary", "lenet5"],
    "summary_lenet5_classic.txt": ["summary", "lenet5_classic"],
    "summary_resnet50.txt": ["summary", "resnet50", "--depth", "3"],
    "list.txt": ["list"],
    "cost_inception_module.txt": ["cost", "inception-module"],
    "cost_depthwise.txt": ["cost", "depthwise"],
}


@pytest.mark.parametrize("filename", sorted(GOLDEN_COMMANDS))
def test_golden_output(capsys, request, filename):
    argv = GOLDEN_COMMANDS[filename]
    if argv == ["list"]:
        code, out, _ = request.getfixturevalue("full_list")
    else:
        code, out, _ = run(capsys, *argv)
    assert code == 0
    path = GOLDEN / filename
    if REGEN:
        path.parent.mkdir(exist_ok=True)
        path.write_text(out)
    expected = path.read_text()
    assert out == expected, (
        f"`convnets {' '.join(argv)}` differs from {path}; if the change is intended, regenerate with "
        "CONVNETS_REGEN_GOLDEN=1 pytest tests/test_cli_analysis.py -k golden"
    )


def test_a_damaged_counts_file_means_counting_not_a_traceback(capsys, monkeypatch, tmp_path):
    damaged = tmp_path / "counts.json"
    damaged.write_text('{"lenet5": {"input_size": [1, 32')  # cut short
    monkeypatch.setattr(catalog_module, "SHIPPED_COUNTS", damaged)
    shipped_counts.cache_clear()
    try:
        code, out, _ = run(capsys, "list", "lenet5")
    finally:
        shipped_counts.cache_clear()
    assert code == 0 and "61.71K" in out
