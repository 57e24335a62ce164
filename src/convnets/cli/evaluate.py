"""``convnets evaluate``: accuracy, top-k, per-class accuracy, confusion, test-time views and ensembles."""

from __future__ import annotations

import argparse
from pathlib import Path

from convnets.cli.options import number, path_text
from convnets.device import DEVICE_HELP
from convnets.evaluate import COMBINE, check_report_dir, default_report_dir, evaluate, write_report


def weights_type(text: str) -> list[float]:
    """``--ensemble-weights 2,1,1``: numbers (their range and count are checked by :func:`evaluate`)."""
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated numbers, one per model, e.g. 2,1,1; got {text!r}") from None


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="accuracy, top-k, per-class accuracy, confusion matrix and inference cost; multi-crop; ensembles",
        description="Evaluate one run (or weights file) or an ensemble of several on the test split. Each model uses "
        "the preprocessing stored with its weights. The model's own time per image is reported apart from the "
        "end-to-end rate, which includes reading and decoding the images.",
    )
    p.add_argument("sources", nargs="+", metavar="RUN_OR_WEIGHTS", help="run directories or .safetensors files")
    p.add_argument("--data", help="dataset name or folder (default: the one the first model was trained on)")
    p.add_argument("--data-dir")
    p.add_argument("--tta", choices=("none", "mirror", "ten-crop"), default="none",
                   help="test-time views averaged per image (ten-crop: centre, 4 corners of the image padded by "
                   "1/8, and their mirrors: for models trained with shifts)")
    p.add_argument("--combine", choices=COMBINE, default="prob", help="how an ensemble combines its members")
    p.add_argument("--ensemble-weights", type=weights_type, metavar="W1,W2,...",
                   help="weight per model, each >= 0, e.g. 2,1,1 (default equal)")
    p.add_argument("--top-k", type=number(int, 1), default=5, help="k of the top-k accuracy (default 5)")
    p.add_argument("--batch-size", type=number(int, 1), default=256)
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--out", type=path_text, help="directory for evaluation.txt/.json and confusion.png (default: "
                   "runs/evaluate/NAME in the working directory, NAME the run's, file's or MODEL-TAG, or NAME-2, "
                   "NAME-3... when a report of other sources is there); only an earlier report there is replaced")
    p.add_argument("--force", action="store_true",
                   help="replace files of the report's names in --out that are not an earlier report of convnets")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    out = check_report_dir(Path(args.out) if args.out else default_report_dir(args.sources), args.force)
    report = evaluate(args.sources, args.data, data_dir=args.data_dir, views=args.tta, combine=args.combine,
                      weights=args.ensemble_weights, batch_size=args.batch_size, top_k=args.top_k,
                      device=args.device)
    # Before printing: output piped into `head` stops at the first print it closes.
    write_report(report, out, args.force)
    print(report.table())
    print()
    print(report.confusion_text())
    if args.tta == "ten-crop":
        # The corner views are the shifts a pad-and-crop-trained network saw; one trained without shifts sees new
        # images (lenet5:fashion-mnist, whose recipe has no augmentation: 0.9081 alone, 0.3860 with ten-crop).
        print("\nnote: ten-crop's corner views shift each image by 1/8 of its side; a model trained without such "
              "shifts can lose accuracy with them: compare with --tta none")
    print(f"\nwrote {out}/evaluation.txt, evaluation.json, confusion.png")
    return 0
