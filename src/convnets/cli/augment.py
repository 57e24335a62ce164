"""``convnets augment``: see what an augmentation preset does to real images."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from PIL import Image

from convnets.cli.options import integer, number, parse_key_values
from convnets.data.augment import PRESETS, Augmenter, get_preset
from convnets.data.core import check_image_size
from convnets.data.datasets import load_dataset
from convnets.data.grid import render_grid, sample_images
from convnets.data.loader import derive_seed
from convnets.errors import ConfigError

# The grid holds rows x (variants + 1) tiles of at least 96 px: these bounds keep it a picture one can open.
MAX_ROWS, MAX_VARIANTS, MAX_SIDE = 64, 32, 1024
# And so does this one on the whole picture: each bound alone allows 64 x 33 tiles of 1024 px, 2.2 gigapixels
# (tens of GB as the float images behind it). The defaults at the largest side make 67 megapixels.
MAX_MEGAPIXELS = 100
MIN_TILE, GAP = 96, 2
# The grid's Exif "Software" tag: an existing --out that carries it is an earlier grid and may be replaced.
SOFTWARE_TAG, SOFTWARE = 0x0131, "convnets augment"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "augment",
        help="render a grid of original and augmented training images",
        description="Render a PNG grid: one training image per row, the original first, then augmented versions.",
        allow_abbrev=False,
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
    p.add_argument("--image-size", type=number(int, 1, MAX_SIDE),
                   help=f"resize images to this side first (1-{MAX_SIDE})")
    p.add_argument("--channels", type=integer, choices=(1, 3), help="convert to 1 or 3 channels")
    p.add_argument("--rows", type=number(int, 1, MAX_ROWS), default=8,
                   help=f"how many training images (1-{MAX_ROWS}, default 8)")
    p.add_argument("--variants", type=number(int, 0, MAX_VARIANTS), default=7,
                   help=f"augmented versions of each (0-{MAX_VARIANTS}, default 7)")
    p.add_argument("--seed", type=number(int, 0, 2**63 - 1), default=0, help="picks the images and the augmentations")
    p.add_argument("--out", default="augment_grid.png", help="image file to write (default augment_grid.png); an "
                   "existing file is replaced only if it is an earlier grid of this command")
    p.set_defaults(run=run)


def check_out(out: Path) -> str:
    """The image format ``--out`` names; a ConfigError, before any work, when it cannot become an image file."""
    if out.is_dir():
        raise ConfigError(f"{out}: is a directory; --out takes the image file to write, e.g. {out / 'grid.png'}")
    image_format = Image.registered_extensions().get(out.suffix.lower())
    if image_format not in Image.SAVE:
        raise ConfigError(f"{out}: --out must end in an image extension Pillow writes, such as .png or .jpg")
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ConfigError(f"{out}: cannot be written: {parent} is a file, not a folder")
    if out.exists() and not _is_our_grid(out):
        raise ConfigError(f"{out} exists and is not a grid written by convnets augment; choose another --out or "
                          "move it")
    return image_format


def _is_our_grid(path: Path) -> bool:
    """Whether ``path`` is a picture this command wrote (the formats without Exif are never replaced)."""
    try:
        with Image.open(path) as image:
            return image.getexif().get(SOFTWARE_TAG) == SOFTWARE
    except (OSError, ValueError, SyntaxError):  # not an image, or one Pillow cannot parse
        return False


def check_grid(rows: int, columns: int, height: int, width: int) -> None:
    """A ConfigError, before the picture is made, when ``rows`` x ``columns`` tiles of ``height`` x ``width``
    images (enlarged to at least :data:`MIN_TILE` px as :func:`render_grid` does) exceed :data:`MAX_MEGAPIXELS`."""
    scale = max(1, -(-MIN_TILE // max(height, width)))
    pixels = (columns * (width * scale + GAP) + GAP) * (rows * (height * scale + GAP) + GAP)
    if pixels > MAX_MEGAPIXELS * 1e6:
        raise ConfigError(f"a grid of {rows} x {columns} images of {height}x{width} would be {pixels / 1e6:,.0f} "
                          f"megapixels, more than the {MAX_MEGAPIXELS} one picture may hold: use fewer --rows or "
                          "--variants, or a smaller --image-size")


def run(args: argparse.Namespace) -> int:
    """Write the grid of originals and augmented versions; print where it went."""
    config = get_preset(args.preset, **parse_key_values(args.set, "--set"))
    out = Path(args.out)
    image_format = check_out(out)
    if args.image_size:
        check_grid(args.rows, args.variants + 1, args.image_size, args.image_size)
    dataset = load_dataset(args.data, data_dir=args.data_dir, channels=args.channels)
    originals = sample_images(dataset, args.rows, args.seed, check_image_size(args.image_size))
    check_grid(len(originals), args.variants + 1, *originals.shape[-2:])  # the data's own size, when not given
    augmenter = Augmenter(config, dataset.pixel_cov)
    versions = [originals.float() / 255]
    for v in range(args.variants):
        versions.append(augmenter(originals, torch.Generator().manual_seed(derive_seed(args.seed, v))))
    grid = render_grid([torch.stack([version[i] for version in versions]) for i in range(len(originals))],
                       min_tile=MIN_TILE, gap=GAP)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed, so that a failed write never leaves half a picture at --out.
    partial = out.with_name(f".{out.name}.part")
    try:
        exif = Image.Exif()
        exif[SOFTWARE_TAG] = SOFTWARE
        grid.save(partial, format=image_format, exif=exif)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    print(dataset.describe() + (f"; shown at {args.image_size}x{args.image_size}" if args.image_size else ""))
    print(f"preset {args.preset}: {config}")
    print(f"wrote {out} ({len(originals)} images x (original + {args.variants} augmented), first column original)")
    if len(dataset.bad_files):
        print(dataset.bad_files.summary().replace(" (see bad_files.tsv)", ""))
        for path, reason in dataset.bad_files:
            print(f"  {path}: {reason}")
    return 0
