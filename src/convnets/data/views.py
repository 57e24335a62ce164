"""Test-time views: the same batch seen several ways, for averaging a model's predictions.

Every function takes a batch (N, C, H, W) and returns the views stacked as (V, N, C, h, w).
Feed ``views.flatten(0, 1)`` (V*N images, view-major) to the model and average with
``logits.view(V, N, -1).mean(0)``; keeping V as its own axis makes that reshape unambiguous.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from convnets.errors import ConfigError


def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def identity_views(images: torch.Tensor) -> torch.Tensor:
    """The batch itself: (1, N, C, H, W)."""
    return images.unsqueeze(0)


def mirror_views(images: torch.Tensor) -> torch.Tensor:
    """The batch and its horizontal mirror: (2, N, C, H, W)."""
    return torch.stack([images, images.flip(-1)])


def center_crop(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """The central (h, w) window of every image: (N, C, h, w)."""
    h, w = _size(size)
    top, left = (images.shape[-2] - h) // 2, (images.shape[-1] - w) // 2
    if top < 0 or left < 0:
        raise ConfigError(f"crop {h}x{w} is larger than the images ({images.shape[-2]}x{images.shape[-1]})")
    return images[..., top : top + h, left : left + w]


def ten_crop_views(
    images: torch.Tensor,
    size: int | tuple[int, int] | None = None,
    *,
    pad: int = 0,
    fill: float | Sequence[float] = 0.0,
    resize_to: int | tuple[int, int] | None = None,
) -> torch.Tensor:
    """AlexNet's ten views: centre and four corner crops, then the mirrors of those five.

    Two uses: AlexNet's, 224 crops of 256 images (``size=224``); or, for a network trained
    with pad-and-crop at full size, zero-pad by the training ``pad`` and take crops of the
    original size (``pad=4``, ``size`` left out), whose corners are the extreme training shifts.

    Args:
        images: (N, C, H, W).
        size: Crop (h, w) or side; the (unpadded) image size by default.
        pad: Padding added on every side before cropping.
        fill: Value of the padding, one for all channels or one per channel. On normalised
            batches pass ``[-m / s for m, s in zip(mean, std)]`` so that it is black, as the
            training pad-and-crop's zeros were.
        resize_to: Resize every crop (bilinear) to this size, e.g. the network's input.

    Returns:
        (10, N, C, h, w) in the order centre, top-left, top-right, bottom-left, bottom-right,
        then the same five mirrored.
    """
    h, w = _size(size) if size is not None else images.shape[-2:]
    if pad:
        value = torch.as_tensor(fill, dtype=images.dtype, device=images.device).reshape(1, -1, 1, 1)
        images = F.pad(images - value, (pad, pad, pad, pad)) + value  # F.pad takes one scalar for all channels
    big_h, big_w = images.shape[-2:]
    if h > big_h or w > big_w:
        raise ConfigError(f"crop {h}x{w} is larger than the images ({big_h}x{big_w})")
    crops = [center_crop(images, (h, w))] + [
        images[..., top : top + h, left : left + w] for top in (0, big_h - h) for left in (0, big_w - w)
    ]
    views = torch.stack(crops)
    views = torch.cat([views, views.flip(-1)])
    if resize_to is not None:
        v, n = views.shape[:2]
        flat = views.flatten(0, 1)
        dtype = flat.dtype
        flat = F.interpolate(flat.float(), size=_size(resize_to), mode="bilinear", align_corners=False, antialias=True)
        views = (flat.round().clamp(0, 255).to(dtype) if dtype == torch.uint8 else flat.to(dtype)).unflatten(0, (v, n))
    return views


TTA_VIEWS: dict[str, Callable[..., torch.Tensor]] = {
    "identity": identity_views,
    "none": identity_views,
    "mirror": mirror_views,
    "ten-crop": ten_crop_views,
}


def tta_views(images: torch.Tensor, name: str, **kwargs) -> torch.Tensor:
    """Views by name (identity/none, mirror, ten-crop); keyword arguments go to the view function."""
    if name not in TTA_VIEWS:
        raise ConfigError(f"unknown test-time views {name!r}; choose from {', '.join(TTA_VIEWS)}")
    return TTA_VIEWS[name](images, **kwargs)
