"""``convnets weights [MODEL]``: the pretrained weights known to convnets, with their accuracy."""

from __future__ import annotations

import argparse

from convnets.errors import WeightsError
from convnets.registry import model_entry
from convnets.weights import CACHE_ENV, cache_root, get_weights, list_weights


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("weights", help="the pretrained weights known to convnets, with their accuracy",
                              description="List registered weights: model, tag, dataset, measured accuracy, input "
                              "and normalisation, and where the file comes from.")
    p.add_argument("model", nargs="?", help="only this model's weights, or one of them as MODEL:TAG (as predict and "
                   "evaluate take it)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    model, _, tag = (args.model or "").partition(":")
    name = model_entry(model).name if args.model is not None else None  # an unknown name gets close suggestions
    specs = [get_weights(name, tag)] if tag else list_weights(name)
    if not specs:
        having = ", ".join(sorted({w.model for w in list_weights()}))
        raise WeightsError(f"no registered weights for {name}; models with weights: {having}")
    print(f"{'model':<24} {'tag':<14} {'dataset':<14} {'top-1':>7} {'input':>10}  {'preprocessing':<20}  source")
    for w in specs:
        where = w.source if w.is_url else f"shipped ({w.source})"
        # The recipe evaluation and fine-tuning apply (convnets.data.preprocess.Preprocessing.from_spec).
        recipe = f"{w.resize}->{w.crop or w.input_size[1]} {w.interpolation}" if w.resize else "fit and crop"
        print(f"{w.model:<24} {w.tag:<14} {w.dataset:<14} {w.accuracy:>7.4f} {'x'.join(map(str, w.input_size)):>10}"
              f"  {recipe:<20}  {where}")
    print(f"\nUse: convnets.create_model(MODEL, weights=TAG) or --weights TAG; ImageNet files download once "
          f"into {cache_root()} (${CACHE_ENV} moves it).")
    return 0
