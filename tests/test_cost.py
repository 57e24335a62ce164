"""The case studies' worked cost examples: exact figures, and each formula checked by counting."""

from __future__ import annotations

import pytest

from convnets.analysis import cost
from convnets.analysis.cost import Conv, Volume


@pytest.mark.parametrize(
    ("n", "f", "p", "s", "expected"),
    [
        (6, 3, 0, 1, 4),  # the 6x6 * 3x3 -> 4x4 example
        (224, 3, 1, 1, 224),  # "same"
        (224, 3, 1, 2, 112),
        (7, 3, 0, 2, 3),  # floor((7 - 3)/2) + 1
        (8, 3, 0, 2, 3),  # floor((8 - 3)/2) + 1 = floor(2.5) + 1
        (227, 11, 0, 4, 55),  # AlexNet conv1
        (32, 5, 0, 1, 28),  # LeNet-5 C1
    ],
)
def test_conv_output_size_floors_and_matches_a_real_conv(n, f, p, s, expected):
    assert cost.conv_output_size(n, f, p, s) == expected
    report = cost.output_size(n, f, p, s)
    assert report.lines[0].value == report.lines[0].counted == expected
    assert report.ok


@pytest.mark.parametrize(("n", "f", "p", "s"), [(3, 5, 0, 1), (4, 7, 1, 2)])
def test_conv_output_size_refuses_a_filter_larger_than_the_padded_input(n, f, p, s):
    with pytest.raises(ValueError, match="does not fit"):
        cost.conv_output_size(n, f, p, s)


@pytest.mark.parametrize(
    ("args", "named"),
    [((0, 3, 0, 1), "input size n"), ((5, 3, 0, 0), "stride s"), ((5, 0, 0, 1), "filter size f"),
     ((5, 3, -1, 1), "padding p must be a whole number >= 0"), ((5.5, 3, 0, 1), "input size n")],
)
def test_conv_output_size_refuses_nonsense_arguments(args, named):
    with pytest.raises(ValueError, match=named):
        cost.conv_output_size(*args)


def test_padding_same_valid_and_integers():
    assert cost.resolve_padding("same", 5) == 2
    assert cost.resolve_padding("valid", 5) == 0
    assert cost.resolve_padding("3", 5) == 3
    assert cost.resolve_padding(1, 3) == 1
    with pytest.raises(ValueError, match="odd"):
        cost.resolve_padding("same", 4)
    with pytest.raises(ValueError, match="'same' or 'valid'"):
        cost.resolve_padding("full", 3)


def test_conv_multiplications_of_the_5x5_same_conv():
    report = cost.conv_cost(Volume(28, 28, 192), Conv(32, 5, 2))
    line = report.lines[0]
    assert line.value == line.counted == 28 * 28 * 32 * 5 * 5 * 192 == 120_422_400
    assert line.formula == "n_H'*n_W'*n_C'*f*f*n_C = 28*28*32*5*5*192"
    assert "153,632 parameters" in str(report)  # (5*5*192 + 1) * 32


def test_strided_conv_counts_the_smaller_output():
    report = cost.conv_cost(Volume(9, 9, 2), Conv(4, 3, 0, 2))
    assert report.lines[0].value == report.lines[0].counted == 4 * 4 * 4 * 3 * 3 * 2


def test_inception_bottleneck_exact_figures():
    report = cost.inception_bottleneck(Volume(28, 28, 192), filters=32, f=5, bottleneck=16)
    assert report.value("naive 5x5 conv") == 120_422_400
    assert report.value("1x1 conv to 16") == 2_408_448
    assert report.value("5x5 conv on 28x28x16") == 10_035_200
    assert report.value("bottleneck total") == 12_443_648
    assert report.ok
    assert all(line.counted == line.value for line in report.lines)
    text = str(report)
    assert "120,422,400" in text and "12,443,648" in text and "all formulas match" in text


def test_depthwise_separable_exact_figures_and_ratio():
    report = cost.depthwise_separable(Volume(6, 6, 3), filters=5, f=3)
    assert [line.value for line in report.lines] == [2_160, 432, 240, 672]
    assert [line.counted for line in report.lines] == [2_160, 432, 240, 672]
    assert "672 / 2,160 = 0.3111" in str(report)
    assert "1/5 + 1/9 = 0.3111 (equal, exactly 14/45)" in str(report)


def test_depthwise_ratio_for_512_filters_is_about_0_113():
    report = cost.depthwise_separable(Volume(14, 14, 512), filters=512, f=3, p=1)
    ratio = report.value("separable total") / report.value("normal conv")
    assert ratio == pytest.approx(1 / 512 + 1 / 9)
    assert round(ratio, 3) == 0.113
    assert report.ok


def test_one_by_one_shrinks_channels():
    report = cost.one_by_one(Volume(28, 28, 192), 32)
    assert report.title == "1x1 convolution: 28x28x192 -> 28x28x32"
    assert report.lines[0].value == report.lines[0].counted == 28 * 28 * 32 * 192 == 4_816_896
    assert report.lines[0].formula == "n_H'*n_W'*n_C'*n_C = 28*28*32*192"
    assert "shrinks n_C from 192 to 32" in str(report)


def test_a_mismatch_is_reported():
    line = cost.CostLine("x", "1*2", 2, 3)
    report = cost.CostReport("t", (line,))
    assert not report.ok
    assert "DIFFERS" in str(report) and "MISMATCH" in str(report)
