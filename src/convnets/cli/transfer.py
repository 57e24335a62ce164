"""``convnets transfer``: ``train`` from pretrained weights, with freezing and cached features by default."""

from __future__ import annotations

import argparse

from convnets.cli import train


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "transfer",
        help="fine-tune pretrained weights on new data: new head, freezing, cached features",
        description="Start from --weights, replace the classifier for the new classes, freeze what --freeze says "
        "(auto: by examples per class, as the case studies advise), train the rest; with --cache-features the "
        "frozen trunk runs once and only the head trains.",
        allow_abbrev=False,  # as train: an abbreviation could name another option
    )
    train.add_run_arguments(p)
    train.add_transfer_arguments(p, weights_required=True)
    # This command's defaults: below a --config file's values and the options given, and not applied on resume.
    p.set_defaults(run=train.run, config_defaults={"freeze": "auto", "pretrained_lr_scale": 0.1})
