"""Bad input to the analysis commands (list, summary, cost) and the error boundary itself."""

from __future__ import annotations

from pathlib import Path

import pytest

import convnets
from badinput import Case, check_case, params, run_cli
from convnets.cli import main

CASES = [
    Case("summary-unknown-model", 3, ["summary", "resnet5O"], r"unknown model 'resnet5O'.*resnet50"),
    Case("summary-input-letters", 3, ["summary", "resnet18", "--input", "3xbigx224"], r"--input"),
    Case("summary-input-zero", 3, ["summary", "resnet18", "--input", "3x0x224"], r"--input"),
    Case("summary-input-too-small", 3, ["summary", "resnet18", "--input", "3x8x8"], r"8x8.*resnet18|resnet18.*8x8"),
    Case("summary-depth-negative", 3, ["summary", "lenet5", "--depth", "-1"], r"--depth"),
    Case("summary-batch-zero", 3, ["summary", "lenet5", "--batch", "0"], r"--batch"),
    Case("summary-num-classes-zero", 3, ["summary", "lenet5", "--num-classes", "-2"], r"num.classes"),
    Case("summary-in-chans-zero", 3, ["summary", "lenet5", "--in-chans", "0"], r"in.chans"),
    Case("list-no-match", 3, ["list", "transformer*"], r"no registered model matches 'transformer\*'"),
    Case("cost-filter-too-big", 3, ["cost", "output-size", "-n", "4", "-f", "7"], r"filter|does not fit"),
    Case("cost-stride-zero", 3, ["cost", "output-size", "-s", "0"], r"stride"),
    Case("cost-negative-filters", 3, ["cost", "conv", "--filters", "-3"], r"filters"),
    Case("cost-padding-word", 3, ["cost", "conv", "--padding", "sideways"], r"padding"),
    Case("cost-even-kernel-same", 3, ["cost", "inception-module", "--kernel", "4"], r"odd|kernel"),
    Case("summary-depth-not-whole", 3, ["summary", "lenet5", "--depth", "1.5"], r"--depth.*whole number"),
    Case("summary-batch-negative", 3, ["summary", "lenet5", "--batch", "-4"], r"--batch.*>= 1"),
    Case("summary-in-chans-negative", 3, ["summary", "resnet18", "--in-chans", "-1"], r"--in-chans"),
    Case("summary-input-two-numbers", 3, ["summary", "resnet18", "--input", "224x224"], r"--input.*CxHxW"),
    Case("summary-input-wrong-channels", 3, ["summary", "lenet5", "--input", "3x32x32"],
         r"lenet5 expects \(N, 1, 32, 32\).*3 channels"),
    Case("summary-input-vs-in-chans", 3, ["summary", "resnet18", "--in-chans", "1", "--input", "3x224x224"],
         r"resnet18 expects \(N, 1, H, W\)"),
    Case("cost-padding-negative", 3, ["cost", "output-size", "-p", "-1"], r"padding p must be a whole number >= 0"),
    Case("cost-kernel-zero", 3, ["cost", "conv", "-f", "0"], r"filter size f.*>= 1"),
    Case("cost-volume-zero-channels", 3, ["cost", "one-by-one", "--input", "28x28x0"], r"--input.*HxWxC"),
    Case("cost-bottleneck-zero", 3, ["cost", "inception-module", "--bottleneck", "0"], r"bottleneck channels.*>= 1"),
    Case("cost-depthwise-filters-zero", 3, ["cost", "depthwise", "--filters", "0"], r"filters n_C'"),
    Case("cost-depthwise-stride-word", 3, ["cost", "depthwise", "-s", "two"], r"--stride.*'two'"),
    Case("experiment-unknown", 3, ["experiment", "degredation"], r"unknown experiment 'degredation'"),
    Case("weights-unknown-model", 3, ["weights", "resnet21"], r"resnet21"),
    # MODEL:TAG, as predict and evaluate take registered weights: it was "Unknown model 'lenet5:imagenet'".
    Case("weights-unknown-tag", 3, ["weights", "LeNet5:imagenet"], r"no 'imagenet' weights for lenet5; known for it: "
         r"fashion-mnist"),
    # An empty name (an unset shell variable) is an unknown model, not "all models".
    Case("weights-empty-model", 3, ["weights", ""], r"unknown model ''"),
    # An option the command does not know is reported by that command, like any other bad option.
    Case("train-unknown-option", 3, ["train", "lenet5", "--lr-max", "1"],
         r"(?m)^convnets train: error: unrecognized arguments: --lr-max 1"),
    Case("summary-unknown-option", 3, ["summary", "lenet5", "--deep", "2"],
         r"(?m)^convnets summary: error: unrecognized arguments: --deep"),
    # Sizes whose meta tensor torch cannot describe (its shape and byte count are 64-bit) are named, not a traceback.
    Case("summary-input-beyond-int64", 3, ["summary", "lenet5", "--input", "1x99999999999999999999x3"],
         r"input size \(1, 99999999999999999999, 3\) with batch 1 is beyond what a PyTorch tensor can describe"),
    Case("summary-batch-times-input-beyond-int64", 3,
         ["summary", "resnet18", "--input", "3x100000x100000", "--batch", "100000000"],
         r"with batch 100000000 is beyond"),
    Case("latency-input-beyond-int64", 3, ["latency", "lenet5", "--input", "1x99999999999999999999x3"],
         r"beyond what a PyTorch tensor can describe"),
    # int() reads "3_2" as 32 and other scripts' digits as numbers: a typo would pass as a size.
    Case("summary-input-underscore", 3, ["summary", "lenet5", "--input", "1x3_2x3_2"], r"bad size '1x3_2x3_2'"),
    Case("summary-input-arabic-digit", 3, ["summary", "lenet5", "--input", "1x\u06632x32"], r"--input: bad size"),
    Case("cost-input-plus-sign", 3, ["cost", "one-by-one", "--input", "+28x28x192"], r"bad size '\+28x28x192'"),
    Case("latency-batch-twice", 10, ["latency", "lenet5", "--batch", "1", "32", "1"],
         r"--batch 1 is given twice; each batch size is measured once"),
    Case("count-api-input-beyond-int64", 3,
         call=lambda tmp: convnets.count(convnets.create_model("resnet18"), (3, 2**40, 2**40), batch=2**20),
         expect=r"input size \(3, 1099511627776, 1099511627776\) with batch 1048576 is beyond"),
]


@pytest.mark.parametrize("case", params(CASES))
def test_bad_input(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    check_case(case, tmp_path, capsys)


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only expected failures become one-line errors: an unexpected exception is a bug and must show where."""
    import convnets.cli.list as list_command

    def broken(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(list_command, "run", broken)
    with pytest.raises(ZeroDivisionError):
        main(["list"])


def test_a_refused_file_is_one_line_naming_the_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The boundary turns an operating-system refusal into `path: reason` (here: a directory where a file goes)."""
    target = tmp_path / "grid.png"
    target.mkdir()
    status, _, err = run_cli(["augment", "--data", "digits", "--rows", "1", "--variants", "1", "--out", str(target)],
                             capsys)
    assert status == 2 and "Traceback" not in err
    assert f"convnets augment: error: {target}" in err


def test_ctrl_c_while_the_commands_load_is_an_interrupt_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    import convnets.cli as cli

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "parse_args", interrupted)
    assert main(["list"]) == 130
