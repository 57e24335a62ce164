"""Data augmentation as batched tensor operations, with random parameters drawn per image.

The case studies' advice: there is almost never enough data in vision, so distort the
images you have. Every transform here works on a whole uint8 batch (N, C, H, W) at once,
on the CPU or the GPU, and draws its random parameters per image from one
``torch.Generator``, so a batch is reproducible from its seed alone.

All geometric transforms (mirroring, resized crop, rotation, shear, elastic warping) are
composed into one sampling grid per image and applied with a single ``F.grid_sample``;
when only mirroring and pad-and-crop are asked for, an exact integer gather does it instead.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F

from convnets.errors import ConfigError


@dataclass(frozen=True)
class AugmentConfig:
    """Hyperparameters of every augmentation; the defaults switch everything off.

    Sizes are fractions of the image side, so one preset suits 28x28 and 224x224 images.

    Attributes:
        hflip: Probability of a horizontal mirror.
        vflip: Probability of a vertical mirror (off in every preset: most photos have an up).
        pad_crop: Zero-pad by this fraction of each side, then crop back at a random integer
            offset (the ResNet CIFAR recipe: 4 px at 32 is 0.125).
        crop_scale: Random resized crop: (min, max) fraction of the image area kept, then
            scaled back to full size (Szegedy et al. 2014); None for off.
        crop_ratio: Range of the crop's aspect ratio for the resized crop.
        rotate: Rotation angle drawn uniformly from [-rotate, rotate] degrees.
        shear: Horizontal shear angle drawn uniformly from [-shear, shear] degrees.
        elastic_alpha: Local warping (Simard et al. 2003): displacement scale as a fraction of the side.
        elastic_sigma: Smoothness of the elastic displacement field (Gaussian sigma), fraction of the side.
        color_shift: Per-channel offsets drawn uniformly from [-color_shift, color_shift] on the
            0..255 scale (the course's "+20, -20, +20" to R, G, B).
        pca_std: AlexNet's PCA colour augmentation: sigma of the per-image alphas (0.1 in the paper).
    """

    hflip: float = 0.0
    vflip: float = 0.0
    pad_crop: float = 0.0
    crop_scale: tuple[float, float] | None = None
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    rotate: float = 0.0
    shear: float = 0.0
    elastic_alpha: float = 0.0
    elastic_sigma: float = 4 / 28
    color_shift: float = 0.0
    pca_std: float = 0.0

    def __post_init__(self) -> None:
        """Check every setting against :data:`SETTING_RANGES`, so the CLI and the Python API refuse the same values."""
        for f in fields(self):
            low, high, meaning = SETTING_RANGES[f.name]
            value = getattr(self, f.name)
            if f.name in _PAIRS:
                if value is None and f.name == "crop_scale":
                    continue
                pair = list(value) if isinstance(value, (list, tuple)) and len(value) == 2 else None
                if pair is None or not all(_is_number(v) for v in pair) or not low <= pair[0] <= pair[1] <= high:
                    off = " None (off) or" if f.name == "crop_scale" else ""
                    raise ConfigError(f"augmentation setting {f.name} ({meaning}) must be{off} (min, max) with "
                                      f"{low:g} <= min <= max <= {high:g}; got {value!r}")
                object.__setattr__(self, f.name, (float(pair[0]), float(pair[1])))
            elif _is_number(value) and low <= value <= high:
                object.__setattr__(self, f.name, float(value))
            else:
                raise ConfigError(f"augmentation setting {f.name} ({meaning}) must be a number from {low:g} to "
                                  f"{high:g}; got {value!r}")

    @property
    def warps(self) -> bool:
        """Whether a transform needs interpolation (anything beyond mirrors and integer shifts)."""
        return self.crop_scale is not None or bool(self.rotate or self.shear or self.elastic_alpha)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# (low, high, meaning) of every AugmentConfig field; pairs take (min, max) within the range.
SETTING_RANGES: dict[str, tuple[float, float, str]] = {
    "hflip": (0, 1, "a probability"),
    "vflip": (0, 1, "a probability"),
    "pad_crop": (0, 0.5, "fraction of the side"),
    "crop_scale": (0.01, 1, "fraction of the area kept"),
    "crop_ratio": (0.1, 10, "aspect ratio, width / height"),
    "rotate": (0, 180, "degrees"),
    "shear": (0, 60, "degrees"),
    "elastic_alpha": (0, 4, "fraction of the side"),
    "elastic_sigma": (0.01, 1, "fraction of the side"),
    "color_shift": (0, 255, "on the 0..255 scale"),
    "pca_std": (0, 2, "sigma of the PCA coefficients"),
}
_PAIRS = ("crop_scale", "crop_ratio")


PRESETS: dict[str, AugmentConfig] = {
    "none": AugmentConfig(),
    "light": AugmentConfig(hflip=0.5, pad_crop=1 / 16),
    "standard": AugmentConfig(hflip=0.5, pad_crop=1 / 8, color_shift=20, pca_std=0.1),
    "heavy": AugmentConfig(
        hflip=0.5,
        crop_scale=(0.5, 1.0),
        rotate=15,
        shear=10,
        elastic_alpha=24 / 28,  # Simard et al. used 34 px at 28 alone; milder, on top of the rest
        elastic_sigma=4 / 28,
        color_shift=30,
        pca_std=0.1,
    ),
}


def get_preset(name: str, **overrides) -> AugmentConfig:
    """A named preset (none, light, standard, heavy) with some fields replaced.

    Example: ``get_preset("standard", hflip=0)`` for digits, whose mirror images are not digits.

    Raises:
        ConfigError: An unknown preset or setting, or a value outside the setting's range.
    """
    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigError(f"unknown augmentation preset {name!r}; choose from {', '.join(PRESETS)}")
    unknown = sorted(set(overrides) - set(SETTING_RANGES))
    if unknown:
        raise ConfigError(f"unknown augmentation settings: {', '.join(unknown)}; known: {', '.join(SETTING_RANGES)}")
    return replace(PRESETS[name], **overrides)


# --------------------------------------------------------------------------------------------
# functional pieces (deterministic given their parameters; the tests call them directly)


def flip_shift(
    images: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, hflip: torch.Tensor, vflip: torch.Tensor
) -> torch.Tensor:
    """Mirror and translate each image by whole pixels, filling with zeros: pad-and-crop as one exact gather.

    Args:
        images: (N, C, H, W) of any dtype.
        dx, dy: (N,) integer shifts; output pixel (i, j) reads pixel (i + dy, j + dx) of the
            (mirrored) image, zero outside it: the crop at offset (pad + dy, pad + dx) of the image padded by pad.
        hflip, vflip: (N,) bools; mirror before padding and cropping.
    """
    n, c, h, w = images.shape
    dev = images.device
    cols = torch.arange(w, device=dev) + dx[:, None]  # (N, W) positions in the mirrored image
    rows = torch.arange(h, device=dev) + dy[:, None]
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    cols = torch.where(hflip[:, None], w - 1 - cols, cols).clamp_(0, w - 1)
    rows = torch.where(vflip[:, None], h - 1 - rows, rows).clamp_(0, h - 1)
    index = (rows[:, :, None] * w + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    out = images.reshape(n, c, h * w).gather(2, index).view(n, c, h, w)
    return out.masked_fill_(~inside[:, None], 0)


def warp(images: torch.Tensor, matrix: torch.Tensor, displacement: torch.Tensor | None = None) -> torch.Tensor:
    """Resample each image through its own affine map (and optional displacement field), bilinearly.

    Coordinates are pixels measured from the image centre (x right, y down), so a rotation is a
    true rotation on non-square images. Points that fall outside the image read zero.

    Args:
        images: float (N, C, H, W).
        matrix: (N, 2, 3): output pixel p samples the input at ``matrix[:, :, :2] @ p + matrix[:, :, 2]``.
        displacement: (N, 2, H, W) extra (dx, dy) offsets in pixels, added per output pixel.

    Returns:
        float (N, C, H, W).
    """
    n, _, h, w = images.shape
    # grid_sample works in [-1, 1] per axis; conjugate by the pixel scale S = diag(W/2, H/2).
    scale = images.new_tensor([w / 2, h / 2])
    theta = matrix.to(images.dtype).clone()
    theta[:, :, :2] = theta[:, :, :2] * scale[None, None, :] / scale[None, :, None]
    theta[:, :, 2] = theta[:, :, 2] / scale
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    if displacement is not None:
        grid = grid + displacement.permute(0, 2, 3, 1) / scale
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@functools.lru_cache(maxsize=16)
def _blur_matrix(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    """(size, size) matrix that convolves a vector with a Gaussian, reflecting at the borders.

    Blurring as two small matrix products is several times faster than ``conv2d`` on a
    batch of single-channel fields, and handles any kernel width.
    """
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, device=device)
    weights = torch.exp(-(offsets.float() ** 2) / (2 * sigma**2))
    rows = torch.arange(size, device=device)[:, None].expand(size, len(offsets))
    cols = rows + offsets
    period = 2 * size - 2 if size > 1 else 1  # reflect without repeating the edge pixel: -1 -> 1, size -> size-2
    cols = cols.remainder(period)
    cols = torch.where(cols >= size, period - cols, cols)
    matrix = torch.zeros(size, size, device=device)
    matrix.index_put_((rows.reshape(-1), cols.reshape(-1)), weights.expand(size, -1).reshape(-1), accumulate=True)
    return matrix / matrix.sum(1, keepdim=True)


def smooth_noise(
    n: int, h: int, w: int, sigma: float, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """Uniform(-1, 1) noise (N, 2, H, W) convolved with a Gaussian of ``sigma`` pixels (Simard et al. 2003).

    A field this smooth varies over about sigma pixels, so it is drawn on a grid ``f = sigma // 2``
    times coarser and upsampled bilinearly: at 224x224 that is ~100x less work. Blurred white noise
    has a standard deviation proportional to 1/sigma (in grid cells), so the coarse field is divided by f.
    """
    factor = max(1, int(sigma // 2))
    gh, gw = -(-h // factor), -(-w // factor)
    noise = torch.rand(n, 2, gh, gw, generator=generator, device=device) * 2 - 1
    field = _blur_matrix(gh, sigma / factor, device) @ noise @ _blur_matrix(gw, sigma / factor, device).T
    if factor > 1:
        field = F.interpolate(field, size=(h, w), mode="bilinear", align_corners=False) / factor
    return field


def pca_basis(pixel_cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (C,) and eigenvectors (C, C), one per column, of a pixel covariance matrix."""
    eigvals, eigvecs = torch.linalg.eigh(pixel_cov.to(torch.float64))
    return eigvals.clamp_min(0).float(), eigvecs.float()


def pca_color_shift(
    images: torch.Tensor, eigvals: torch.Tensor, eigvecs: torch.Tensor, alpha: torch.Tensor
) -> torch.Tensor:
    """AlexNet's colour augmentation: add ``eigvecs @ (alpha * sqrt(eigvals))`` to every pixel of each image.

    Krizhevsky et al. (2012) write the shift with the eigenvalues themselves; that makes its
    size depend on the pixel scale (0..1 or 0..255). Using sqrt(eigenvalue), the standard
    deviation along each principal axis, keeps it in pixel units at any scale, as
    fb.resnet.torch and most re-implementations do.

    Args:
        images: float (N, C, H, W) on the same scale as the covariance the basis came from.
        eigvals, eigvecs: From :func:`pca_basis`.
        alpha: (N, C) per-image coefficients, drawn from N(0, sigma) during training.

    Returns:
        The shifted images (not clamped).
    """
    shift = (alpha * eigvals.sqrt()) @ eigvecs.T  # (N, C)
    return images + shift[:, :, None, None]


# --------------------------------------------------------------------------------------------
# the batched augmenter


def _uniform(n: int, bound: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return (torch.rand(n, generator=generator, device=device) * 2 - 1) * bound


class Augmenter:
    """Applies an :class:`AugmentConfig` to uint8 batches, with parameters drawn per image.

    Args:
        config: A config or a preset name.
        pixel_cov: (C, C) training-set pixel covariance on the 0..1 scale (``Dataset.pixel_cov``);
            needed when ``pca_std > 0``.

    Calling it on uint8 (N, C, H, W) images returns float images of the same shape and device:
    on the 0..1 scale, or normalised with ``mean``/``std`` when given (one pass fewer over the
    batch than normalising afterwards, which matters at 224x224 on a CPU).
    """

    def __init__(self, config: AugmentConfig | str = "standard", pixel_cov: torch.Tensor | None = None) -> None:
        self.config = get_preset(config) if isinstance(config, str) else config
        if self.config.pca_std and pixel_cov is None:
            raise ConfigError("PCA colour augmentation needs the training pixel covariance (pixel_cov)")
        self.basis = pca_basis(pixel_cov) if self.config.pca_std else None

    def __repr__(self) -> str:
        return f"Augmenter({self.config})"

    def __call__(
        self,
        images: torch.Tensor,
        generator: torch.Generator | None = None,
        mean: Sequence[float] | torch.Tensor | None = None,
        std: Sequence[float] | torch.Tensor | None = None,
    ) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ConfigError(f"expected uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        cfg, dev = self.config, images.device
        if generator is None:
            generator = torch.Generator(device=dev)
            generator.seed()
        n, c, h, w = images.shape
        hflip = torch.rand(n, generator=generator, device=dev) < cfg.hflip
        vflip = torch.rand(n, generator=generator, device=dev) < cfg.vflip
        pad = round(cfg.pad_crop * min(h, w))
        dx = torch.randint(-pad, pad + 1, (n,), generator=generator, device=dev)
        dy = torch.randint(-pad, pad + 1, (n,), generator=generator, device=dev)
        if cfg.warps:
            matrix = self._matrix(hflip, vflip, dx, dy, h, w, generator)
            x = warp(images.float(), matrix, self._elastic(n, h, w, generator, dev))
        else:
            if cfg.hflip or cfg.vflip or pad:
                images = flip_shift(images, dx, dy, hflip, vflip)  # exact, and cheaper on uint8
            x = images.float()
        return self._color(x, generator, mean, std)

    def _matrix(
        self,
        hflip: torch.Tensor,
        vflip: torch.Tensor,
        dx: torch.Tensor,
        dy: torch.Tensor,
        h: int,
        w: int,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Per-image (N, 2, 3) map: crop window scale and centre, rotation, shear, mirror, shift."""
        cfg, n, dev = self.config, len(hflip), hflip.device
        lin = torch.diag_embed(torch.stack([1 - 2 * hflip.float(), 1 - 2 * vflip.float()], 1))
        if cfg.shear:
            shear = torch.eye(2, device=dev).repeat(n, 1, 1)
            shear[:, 0, 1] = torch.tan(torch.deg2rad(_uniform(n, cfg.shear, generator, dev)))
            lin = shear @ lin
        if cfg.rotate:
            angle = torch.deg2rad(_uniform(n, cfg.rotate, generator, dev))
            cos, sin = torch.cos(angle), torch.sin(angle)
            lin = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1) @ lin
        shift = torch.stack([dx, dy], 1).float()
        if cfg.crop_scale is not None:
            lo, hi = cfg.crop_scale
            area = lo + (hi - lo) * torch.rand(n, generator=generator, device=dev)
            log_r = math.log(cfg.crop_ratio[0]) + math.log(cfg.crop_ratio[1] / cfg.crop_ratio[0]) * torch.rand(
                n, generator=generator, device=dev
            )
            sw = (area * log_r.exp()).sqrt().clamp(max=1)
            sh = (area / log_r.exp()).sqrt().clamp(max=1)
            lin = torch.diag_embed(torch.stack([sw, sh], 1)) @ lin
            # The window's centre may go anywhere that keeps the window inside the image.
            half = torch.tensor([w / 2, h / 2], device=dev)
            centre = torch.stack([_uniform(n, 1.0, generator, dev), _uniform(n, 1.0, generator, dev)], 1)
            shift = shift + centre * (1 - torch.stack([sw, sh], 1)) * half
        return torch.cat([lin, shift[:, :, None]], 2)

    def _elastic(self, n: int, h: int, w: int, generator: torch.Generator, dev: torch.device) -> torch.Tensor | None:
        cfg = self.config
        if not cfg.elastic_alpha:
            return None
        side = min(h, w)
        return smooth_noise(n, h, w, cfg.elastic_sigma * side, generator, dev) * (cfg.elastic_alpha * side)

    def _color(
        self,
        x: torch.Tensor,
        generator: torch.Generator,
        mean: Sequence[float] | torch.Tensor | None,
        std: Sequence[float] | torch.Tensor | None,
    ) -> torch.Tensor:
        """Add the per-image colour offsets to 0..255 floats, rescale (and normalise), clamp: two passes."""
        cfg, (n, c), dev = self.config, x.shape[:2], x.device
        shift = torch.zeros(n, c, 1, 1, device=dev)  # in 0..1 units
        if cfg.color_shift:
            shift += _uniform(n * c, cfg.color_shift / 255, generator, dev).view(n, c, 1, 1)
        if self.basis is not None:
            eigvals, eigvecs = (t.to(dev) for t in self.basis)
            alpha = torch.randn(n, c, generator=generator, device=dev) * cfg.pca_std
            shift = pca_color_shift(shift, eigvals, eigvecs, alpha)
        mean_t = torch.as_tensor(0.0 if mean is None else mean, dtype=x.dtype, device=dev).reshape(1, -1, 1, 1)
        std_t = torch.as_tensor(1.0 if std is None else std, dtype=x.dtype, device=dev).reshape(1, -1, 1, 1)
        # clamp((x / 255 + shift), 0, 1) normalised == clamp(x * scale + bias, lo, hi) with per-channel bounds.
        out = torch.addcmul((shift - mean_t) / std_t, x, 1 / (255 * std_t))
        if cfg.color_shift or cfg.pca_std:
            out.clamp_(-mean_t / std_t, (1 - mean_t) / std_t)
        return out
