"""``convnets augment``: see what an augmentation preset does to real images."""

from __future__ import annotations

import argparse
import ast
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from convnets.data.augment import PRESETS, Augmenter, get_preset
from convnets.data.datasets import Dataset, load_dataset
from convnets.data.loader import derive_seed


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``augment`` subcommand to the main command line."""
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
    p.set_defaults(func=run_augment)


def parse_overrides(items: list[str]) -> dict[str, object]:
    """``["rotate=20", "crop_scale=(0.3, 1)"]`` -> ``{"rotate": 20, "crop_scale": (0.3, 1)}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError) as err:
            raise ValueError(f"--set {key}: cannot read value {value!r}") from err
    return out


def sample_images(dataset: Dataset, count: int, seed: int) -> torch.Tensor:
    """``count`` training images as uint8 (count, C, H, W), chosen by ``seed``; undecodable files are passed over."""
    order = np.random.default_rng(seed).permutation(len(dataset.train)).tolist()
    if dataset.in_memory:
        return dataset.train.images[order[:count]]
    images = []
    for i in order:
        image, _, error = dataset.train[i]
        if error is not None:
            dataset.bad_files.add(*error)
        else:
            images.append(image)
        if len(images) == count:
            break
    return torch.stack(images)


def render_grid(rows: list[torch.Tensor], min_tile: int = 96, gap: int = 2) -> Image.Image:
    """Tile images into a PNG-ready picture: one row per list entry, images side by side.

    Args:
        rows: Each a float (K, C, H, W) batch on the 0..1 scale (C = 1 or 3).
        min_tile: Small images are enlarged (nearest neighbour, so pixels stay visible) to at least this side.
        gap: White pixels between tiles.
    """
    _, c, h, w = rows[0].shape
    scale = max(1, math.ceil(min_tile / max(h, w)))
    th, tw = h * scale, w * scale
    cols = max(len(r) for r in rows)
    canvas = Image.new("RGB", (cols * (tw + gap) + gap, len(rows) * (th + gap) + gap), "white")
    for i, row in enumerate(rows):
        pixels = (row.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        for j, tile in enumerate(pixels):
            image = Image.fromarray(tile[:, :, 0] if c == 1 else tile).convert("RGB")
            canvas.paste(image.resize((tw, th), Image.Resampling.NEAREST), (gap + j * (tw + gap), gap + i * (th + gap)))
    return canvas


def run_augment(args: argparse.Namespace) -> int:
    """Write the grid of originals and augmented versions; print where it went."""
    config = get_preset(args.preset, **parse_overrides(args.set))
    if args.rows < 1 or args.variants < 0:
        raise ValueError("--rows must be at least 1 and --variants at least 0")
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
