"""``convnets cost EXAMPLE``: the case studies' worked cost examples, for any numbers."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from convnets.analysis import cost
from convnets.cli.options import size_type


def _opt(flags: tuple[str, ...], default: object, help_text: str, kind: type = int) -> tuple:
    return (*flags, {"type": kind, "default": default, "help": f"{help_text} (default {default})"})


def _volume(default: tuple[int, int, int]) -> tuple:
    text = "x".join(str(d) for d in default)
    return (
        "--input",
        {
            "type": size_type(3, "HxWxC"),
            "default": default,
            "metavar": "HxWxC",
            "help": f"input volume n_H x n_W x n_C (default {text})",
        },
    )


# (name, help, description, options, report builder): each cost subcommand is one entry here.


_COST_COMMANDS = (
    (
        "output-size",
        "conv output size floor((n + 2p - f)/s) + 1",
        "Output height/width of a convolution, floor((n + 2p - f)/s) + 1; an error when the filter does not fit.",
        [
            _opt(("-n",), 6, "input height/width n"),
            _opt(("-f", "--kernel"), 3, "filter size f"),
            _opt(("-p", "--padding"), 0, "padding p"),
            _opt(("-s", "--stride"), 1, "stride s"),
        ],
        lambda a: cost.output_size(a.n, a.kernel, a.padding, a.stride),
    ),
    (
        "conv",
        "multiplications of one convolution",
        "Multiplications of a convolution: n_H' * n_W' * n_C' * f * f * n_C, and its weights.",
        [
            _volume((28, 28, 192)),
            _opt(("--filters",), 32, "number of filters n_C'"),
            _opt(("-f", "--kernel"), 5, "filter size f"),
            _opt(("-p", "--padding"), "same", "padding: int, same, valid", str),
            _opt(("-s", "--stride"), 1, "stride s"),
        ],
        lambda a: cost.conv_cost(
            cost.Volume(*a.input), cost.Conv(a.filters, a.kernel, cost.resolve_padding(a.padding, a.kernel), a.stride)
        ),
    ),
    (
        "one-by-one",
        "a 1x1 convolution shrinking channels",
        "A 1x1 convolution changes n_C and keeps n_H x n_W: 28x28x192 -> 28x28x32 by default.",
        [_volume((28, 28, 192)), _opt(("--filters",), 32, "output channels n_C'")],
        lambda a: cost.one_by_one(cost.Volume(*a.input), a.filters),
    ),
    (
        "inception-module",
        "naive f x f conv vs a 1x1 bottleneck (Inception)",
        "A 'same' f x f convolution computed directly vs through a 1x1 bottleneck: by default 28x28x192 -> "
        "32 filters 5x5, bottleneck 16: 120,422,400 vs 2,408,448 + 10,035,200 = 12,443,648 multiplications.",
        [
            _volume((28, 28, 192)),
            _opt(("--filters",), 32, "output channels n_C'"),
            _opt(("-f", "--kernel"), 5, "filter size f (odd)"),
            _opt(("--bottleneck",), 16, "1x1 bottleneck channels"),
        ],
        lambda a: cost.inception_bottleneck(cost.Volume(*a.input), a.filters, a.kernel, a.bottleneck),
    ),
    (
        "depthwise",
        "normal vs depthwise-separable convolution (MobileNet)",
        "A normal convolution vs depthwise + pointwise: by default 6x6x3 -> 5 filters 3x3 valid: 2,160 vs "
        "432 + 240 = 672 multiplications; the ratio is 1/n_C' + 1/f^2 (about 0.113 for n_C'=512, f=3).",
        [
            _volume((6, 6, 3)),
            _opt(("--filters",), 5, "output channels n_C'"),
            _opt(("-f", "--kernel"), 3, "filter size f"),
            _opt(("-p", "--padding"), "valid", "padding: int, same, valid", str),
            _opt(("-s", "--stride"), 1, "stride s"),
        ],
        lambda a: cost.depthwise_separable(
            cost.Volume(*a.input), a.filters, a.kernel, cost.resolve_padding(a.padding, a.kernel), a.stride
        ),
    ),
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "cost",
        help="the case studies' worked cost examples, for any numbers",
        description="The worked cost examples of the case studies, computed for any numbers. Each formula is "
        "also checked against the MACs counted on the real nn.Conv2d layers. Volumes are n_H x n_W x n_C.",
    )
    sub = p.add_subparsers(dest="cost_command", required=True, metavar="EXAMPLE")
    for name, help_text, description, options, build in _COST_COMMANDS:
        q = sub.add_parser(name, help=help_text, description=description)
        for *flags, kwargs in options:
            q.add_argument(*flags, **kwargs)
        q.set_defaults(run=_cost_runner(build))


def _cost_runner(build: Callable[[argparse.Namespace], cost.CostReport]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        report = build(args)
        print(report)
        return 0 if report.ok else 1

    return run
