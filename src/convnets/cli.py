"""convnets: the deep convolutional network case studies, exact to their papers."""

from __future__ import annotations

import argparse
import sys

from convnets import evaluate, experiments, export, fit, pretrained
from convnets.analysis import cli as analysis_cli
from convnets.data import cli as data_cli
from convnets.training import cli as train_cli
from convnets.training.loop import TrainingDiverged


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convnets", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    analysis_cli.add_parsers(sub)
    data_cli.add_parsers(sub)
    train_cli.add_parsers(sub)
    evaluate.add_parsers(sub)
    export.add_parsers(sub)
    fit.add_parsers(sub)
    pretrained.add_parsers(sub)
    experiments.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and closed: not an error
        sys.stderr.close()
        return 0
    except (ValueError, KeyError, FileNotFoundError, ConnectionError, ModuleNotFoundError, TrainingDiverged,
            export.ExportMismatchError) as err:
        # Errors the user can act on get one line, not a traceback.
        print(f"convnets {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
