"""``convnets predict``: the top-k classes of image files, with names and probabilities."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from convnets.cli.options import number, path_text
from convnets.device import DEVICE_HELP, set_threads
from convnets.prediction import check_out, classified, none_classified, predict, write_predictions


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict", help="classify image files: top-k classes with names and probabilities",
        description="Classify images with a run, a weights file or registered weights (MODEL:TAG, e.g. "
        "resnet20:fashion-mnist or resnet18:imagenet), using the classes and preprocessing stored with the weights. "
        "Folders are searched recursively, in sorted order. A file that cannot be read is reported with its reason "
        "and the rest are still classified; the exit status is 0 when at least one image was classified.")
    p.add_argument("source", metavar="RUN_OR_WEIGHTS",
                   help="run directory, .safetensors file saved by convnets, or registered weights MODEL:TAG")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--top-k", type=number(int, 1), default=5,
                   help="classes shown per image (default 5; more than the model has shows all)")
    p.add_argument("--batch-size", type=number(int, 1), default=64, help="images per forward pass (default 64)")
    p.add_argument("--tta", choices=("none", "mirror", "ten-crop"), default="none",
                   help="test-time views averaged per image, as in convnets evaluate (mirror: the image and its "
                   "horizontal flip)")
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--threads", type=number(int, 1), help="CPU threads for the model (default: one per core)")
    p.add_argument("--out", type=path_text, metavar="FILE.csv|FILE.json",
                   help="also write the predictions to this file (format from the suffix); only an earlier "
                   "predictions file is replaced")
    p.add_argument("--force", action="store_true", help="let --out replace a file convnets predict did not write")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no per-file lines on standard error")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    out = check_out(args.out, args.force) if args.out else None  # before the model is loaded
    set_threads(args.threads)
    folders = any(Path(image).is_dir() for image in args.images)
    predictions = predict(args.source, args.images, top_k=args.top_k, batch_size=args.batch_size, views=args.tta,
                          device=args.device, progress=None if folders and not args.quiet else False)
    if out is not None:  # before printing: output piped into `head` stops at the first print it closes
        write_predictions(predictions, out, source=args.source, views=args.tta, force=args.force)
    for p in predictions:
        print(p.line())
        if not p.ok and not args.quiet:
            print(f"convnets predict: skipped {p.shown_path}: {p.error}", file=sys.stderr)
    done = classified(predictions)
    if not done:
        raise none_classified(predictions)
    if not args.quiet:
        bad = len(predictions) - done
        print(f"classified {done} image{'s' * (done != 1)}" + (f"; {bad} could not be read" if bad else "")
              + (f"; wrote {out}" if out else ""), file=sys.stderr)
    return 0
