"""``convnets augment``: see what an augmentation preset does to real images."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from convnets.cli.options import parse_key_values
from convnets.data.augment import PRESETS, Augmenter, get_preset
from convnets.data.datasets import load_dataset
from convnets.data.grid import render_grid, sample_images
from convnets.data.loader import derive_seed
from convnets.errors import ConfigError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "augment",
        help="render a grid of original and augmented training images",
        description="Render a PNG grid: one training image per row, the original first, then augmented versions.",
    )
    p.add_argument("--data", required=True, help="dataset name (fashion-mnist, digits, cifar10, cifar100) or folder")
    p.add_argument("--data-dir", help="where named datasets are looked up")
    p.add_argument("--preset", default="standard", choices=list(PRESETS), help="augmentation preset")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one preset setting, e.g. --set rotate=20 --set crop_scale='(0.3, 1)'",
    )
    p.add_argument("--image-size", type=int, help="resize images to this side first")
    p.add_argument("--channels", type=int, choices=(1, 3), help="convert to 1 or 3 channels")
    p.add_argument("--rows", type=int, default=8, help="how many training images (default 8)")
    p.add_argument("--variants", type=int, default=7, help="augmented versions of each (default 7)")
    p.add_argument("--seed", type=int, default=0, help="picks the images and the augmentations")
    p.add_argument("--out", default="augment_grid.png", help="PNG file to write (default augment_grid.png)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Write the grid of originals and augmented versions; print where it went."""
    config = get_preset(args.preset, **parse_key_values(args.set, "--set"))
    if args.rows < 1 or args.variants < 0:
        raise ConfigError("--rows must be at least 1 and --variants at least 0")
    dataset = load_dataset(args.data, data_dir=args.data_dir, image_size=args.image_size, channels=args.channels)
    originals = sample_images(dataset, args.rows, args.seed)
    augmenter = Augmenter(config, dataset.pixel_cov)
    versions = [originals.float() / 255]
    for v in range(args.variants):
        versions.append(augmenter(originals, torch.Generator().manual_seed(derive_seed(args.seed, v))))
    grid = render_grid([torch.stack([version[i] for version in versions]) for i in range(len(originals))])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    print(dataset.describe())
    print(f"preset {args.preset}: {config}")
    print(f"wrote {out} ({len(originals)} images x (original + {args.variants} augmented), first column original)")
    if len(dataset.bad_files):
        print(dataset.bad_files.summary().replace(" (see bad_files.tsv)", ""))
        for path, reason in dataset.bad_files:
            print(f"  {path}: {reason}")
    return 0
