"""Pictures of a dataset: training images sampled past undecodable files, and tiled into one PNG grid."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from convnets.data.core import Dataset, resize_images
from convnets.data.images import ImageFolderSplit
from convnets.errors import DataError


def sample_images(dataset: Dataset, count: int, seed: int, size: tuple[int, int] | None = None) -> torch.Tensor:
    """``count`` training images as uint8 (count, C, H, W), chosen by ``seed``; undecodable files are passed over.

    Args:
        dataset: Where the images come from.
        count: How many.
        seed: Chooses them.
        size: Bring only these images to (height, width): decoded at that size from an image folder,
            resized as :func:`~convnets.data.resize_images` does from memory. Resizing a whole in-memory
            dataset to show eight images of it would cost its full size at the new resolution.
    """
    order = np.random.default_rng(seed).permutation(len(dataset.train)).tolist()
    if dataset.in_memory:
        images = dataset.train.images[order[:count]]
        return images if size is None else resize_images(images, size)
    split = dataset.train if size is None else ImageFolderSplit(dataset.train.samples, size, dataset.channels)
    images = []
    for i in order:
        image, _, error = split[i]
        if error is not None:
            dataset.bad_files.add(*error)
        else:
            images.append(image)
        if len(images) == count:
            break
    if not images:
        raise DataError(f"{dataset.source}: none of the {len(order)} training images can be decoded")
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
