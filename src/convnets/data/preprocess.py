"""How images reach a model: the one description, :class:`Preprocessing`, applied on every path.

Published weights were evaluated with a fixed recipe, and a model sees other pixels (and loses
accuracy) when it is fed any other. torchvision's recipe for its ImageNet weights is PIL-based:
``Resize(resize)`` of the shorter side with the model's filter (antialiased), ``CenterCrop(crop)``
with integer offsets ``int(round((side - crop) / 2))``, pixels scaled to 0..1 and normalised
with a per-channel mean and std. :class:`Preprocessing` is that recipe as data: it is read from a
weights spec or from the metadata of our weights files, saved in the metadata of weights we
write, and used by evaluation, transfer, training with weights, feature caching and export.

Keras's ``preprocess_input`` modes are mean/std on RGB pixels in 0..1 here: ``torch`` is
ImageNet's mean/std; ``tf`` (``x / 127.5 - 1``) is mean = std = 0.5; ``caffe`` (BGR, ImageNet's
mean subtracted on 0..255, no scaling) is the ImageNet mean (123.68, 116.779, 103.939)/255 with
std 1/255, and its BGR order is taken by the weights instead: importing Keras's Caffe-style
weights reverses their first convolution's input channels (:mod:`convnets.weights.keras`), so
the imported model reads RGB and no path needs a channel swap.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from convnets.data.core import MAX_IMAGE_SIZE, _check_fits_in_memory
from convnets.data.images import upright_image
from convnets.errors import ConfigError

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # as convnets.weights.specs
# Keras's preprocess_input modes as (mean, std) on RGB pixels in 0..1 (see the module docstring).
KERAS_NORMALISATION = {
    "caffe": ((123.68 / 255, 116.779 / 255, 103.939 / 255), (1 / 255,) * 3),  # x * 255 - mean * 255
    "tf": ((0.5,) * 3, (0.5,) * 3),  # x * 255 / 127.5 - 1
    "torch": (IMAGENET_MEAN, IMAGENET_STD),
}


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _side(name: str, value: Any) -> int:
    if not _is_int(value) or not 1 <= value <= MAX_IMAGE_SIZE:
        raise ConfigError(f"preprocessing {name} must be a whole number from 1 to {MAX_IMAGE_SIZE}; got {value!r}")
    return int(value)


@dataclass(frozen=True)
class Preprocessing:
    """How an image file becomes a model's input: geometry (resize, crop) and normalisation.

    Attributes:
        size: (height, width) the model sees.
        resize: the shorter side is resized to this (aspect kept, torchvision's rounding: the longer
            side is ``int(resize * long / short)``), then ``size`` is cropped from the centre. None:
            the image is scaled so that its shorter side fits ``size`` and centre-cropped to
            ``size``'s aspect (Pillow's ``ImageOps.fit``; convnets' behaviour for data without a
            published recipe).
        interpolation: ``bilinear``, ``bicubic`` or ``nearest``.
        antialias: filter when shrinking (Pillow's resize always does; False resizes with
            ``torch.nn.functional.interpolate`` without antialiasing, as TensorFlow's ``resize`` did).
        channels: 1 (grey) or 3 (RGB).
        mean: per-channel mean subtracted from pixels scaled to 0..1.
        std: per-channel standard deviation they are divided by.

    Every image is decoded in full (:func:`~convnets.data.images.upright_image`), so a photo gives the same
    input from its file as from a Pillow image of it. Recipes written before carry a ``draft`` field (JPEG
    decoding at a reduced scale), which :meth:`from_dict` still reads and drops.
    """

    size: tuple[int, int]
    resize: int | None = None
    interpolation: str = "bilinear"
    antialias: bool = True
    channels: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    # Removed: code written for it still runs, with a warning (see __post_init__); not a field, never saved.
    draft: dataclasses.InitVar[bool | None] = None

    def __post_init__(self, draft: bool | None) -> None:
        if draft is not None:
            if not isinstance(draft, bool):
                raise ConfigError(f"preprocessing draft must be true or false; got {draft!r}")
            # draft=True decoded JPEGs at a reduced scale, which made a file's input differ from a Pillow image
            # of it; every image is now decoded in full, so the argument changes nothing.
            warnings.warn("Preprocessing(draft=...) is ignored and will be refused in a later version: images are "
                          "always decoded in full now (reduced-scale JPEG decoding made a file's input differ from "
                          "the same photo given as a Pillow image); remove the argument", FutureWarning,
                          stacklevel=3)
        size = self.size
        if _is_int(size):
            size = (size, size)
        if not (isinstance(size, Sequence) and not isinstance(size, str) and len(size) == 2):
            raise ConfigError(f"preprocessing size must be (height, width), each from 1 to {MAX_IMAGE_SIZE}; "
                              f"got {size!r}")
        size = (_side("height", size[0]), _side("width", size[1]))
        object.__setattr__(self, "size", size)
        if self.resize is not None:
            _side("resize", self.resize)
            if self.resize < min(size):
                raise ConfigError(f"preprocessing resize {self.resize} is smaller than the crop {size[0]}x{size[1]}: "
                                  "the shorter side is resized to it before the crop, so it must be at least "
                                  f"{min(size)}")
            object.__setattr__(self, "resize", int(self.resize))
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"preprocessing interpolation must be one of {', '.join(INTERPOLATIONS)}; "
                              f"got {self.interpolation!r}")
        if not isinstance(self.antialias, bool):
            raise ConfigError(f"preprocessing antialias must be true or false; got {self.antialias!r}")
        if not (_is_int(self.channels) and self.channels in (1, 3)):
            raise ConfigError(f"preprocessing channels must be 1 (grey) or 3 (RGB); got {self.channels!r}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if isinstance(values, str) or not isinstance(values, Sequence) or not all(_is_number(v) for v in values):
                raise ConfigError(f"preprocessing {name} must be a list of finite numbers, one per channel; "
                                  f"got {values!r}")
            if len(values) != self.channels:
                raise ConfigError(f"preprocessing {name} has {len(values)} values for {self.channels} channel(s)")
            object.__setattr__(self, name, tuple(float(v) for v in values))
        if not all(s > 0 for s in self.std):
            raise ConfigError(f"preprocessing std must be positive; got {self.std}")

    # ---- construction

    @classmethod
    def from_spec(cls, spec: Any) -> Preprocessing:
        """The published recipe of a :class:`~convnets.weights.specs.WeightSpec`."""
        c, h, w = spec.input_size
        size = (spec.crop, spec.crop) if spec.crop else (h, w)
        return cls(size, spec.resize, getattr(spec, "interpolation", "bilinear"), channels=c, mean=spec.mean,
                   std=spec.std)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Preprocessing:
        """Read back what :meth:`to_dict` wrote, or an earlier version of it (a ``draft`` field is dropped).

        Raises:
            ConfigError: not a mapping, a missing or unknown field, or a value of the wrong type or range.
        """
        if not isinstance(values, Mapping):
            raise ConfigError(f"preprocessing must be a JSON object of its fields; got {values!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known - {"draft"})
        if unknown:
            raise ConfigError(f"preprocessing has unknown field(s) {', '.join(map(str, unknown))}; "
                              f"known: {', '.join(sorted(known))}")
        if "size" not in values:
            raise ConfigError("preprocessing lacks its size (height, width)")
        values = dict(values)
        # Written by convnets before every image was decoded in full; images are decoded in full whatever it says.
        draft = values.pop("draft", False)
        if not isinstance(draft, bool):
            raise ConfigError(f"preprocessing draft must be true or false; got {draft!r}")
        return cls(**values)

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> Preprocessing:
        """The preprocessing of weights we saved (a file's or a run's metadata).

        Files written since the preprocessing was recorded carry it as ``preprocessing``; older
        ones carry ``input_size``, ``mean`` and ``std``, which mean convnets' fit-and-crop.

        Raises:
            ConfigError: the metadata is not a mapping, lacks the fields, or holds a value of the wrong type.
        """
        if not isinstance(meta, Mapping):
            raise ConfigError(f"weights metadata must be a JSON object; got {type(meta).__name__}")
        if "preprocessing" in meta:
            return cls.from_dict(meta["preprocessing"])
        missing = [k for k in ("input_size", "mean", "std") if k not in meta]
        if missing:
            raise ConfigError(f"the weights' metadata lacks {', '.join(missing)}: how their images were prepared "
                              "is not known")
        size = meta["input_size"]
        if not (isinstance(size, Sequence) and not isinstance(size, str) and len(size) == 3):
            raise ConfigError(f"metadata input_size must be [channels, height, width]; got {size!r}")
        return cls((size[1], size[2]), channels=size[0], mean=meta["mean"], std=meta["std"])

    @classmethod
    def keras(cls, mode: str, size: int | tuple[int, int], resize: int | None = None,
              interpolation: str = "bilinear") -> Preprocessing:
        """One of Keras's ``preprocess_input`` modes (``caffe``, ``tf``, ``torch``) at ``size``."""
        if mode not in KERAS_NORMALISATION:
            raise ConfigError(f"Keras preprocessing mode must be one of {', '.join(KERAS_NORMALISATION)}; "
                              f"got {mode!r}")
        mean, std = KERAS_NORMALISATION[mode]
        return cls(size, resize, interpolation, mean=mean, std=std)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, for the metadata of weights we write (:meth:`from_dict` reads them)."""
        out = dataclasses.asdict(self)
        out.update(size=list(self.size), mean=list(self.mean), std=list(self.std))
        return out

    def at_size(self, side: int) -> Preprocessing:
        """The same recipe for a square input of ``side``: the resize keeps its ratio to the crop."""
        resize = None if self.resize is None else max(side, round(self.resize * side / min(self.size)))
        return dataclasses.replace(self, size=(side, side), resize=resize)

    def describe(self) -> str:
        """One line: ``resize 256 (bilinear), centre crop 224x224, mean (...) std (...)``."""
        h, w = self.size
        geometry = (f"resize {self.resize} ({self.interpolation}), centre crop {h}x{w}" if self.resize is not None
                    else f"fit and centre crop {h}x{w} ({self.interpolation})")
        return (f"{geometry}, mean ({', '.join(f'{m:.4g}' for m in self.mean)}) "
                f"std ({', '.join(f'{s:.4g}' for s in self.std)})")

    # ---- applying it

    def resize_and_crop(self, image: Image.Image) -> Image.Image:
        """The geometry alone, on a Pillow image already in this recipe's mode."""
        h, w = self.size
        method = INTERPOLATIONS[self.interpolation]
        if self.resize is None:
            return ImageOps.fit(image, (w, h), method=method)
        width, height = image.size
        short, long = min(width, height), max(width, height)
        new_long = int(self.resize * long / short)  # torchvision's _compute_resized_output_size
        new_size = (self.resize, new_long) if width <= height else (new_long, self.resize)
        if new_long * self.resize > (Image.MAX_IMAGE_PIXELS or math.inf):  # a 1x100000 strip would take gigabytes
            raise Image.DecompressionBombError(
                f"a {width}x{height} image resized to {new_size[0]}x{new_size[1]} would have "
                f"{new_long * self.resize:,} pixels, over Pillow's limit of {Image.MAX_IMAGE_PIXELS:,}")
        if self.antialias or self.interpolation == "nearest":
            image = image.resize(new_size, method)
        else:
            image = _resize_without_antialias(image, new_size, self.interpolation)
        top = int(round((new_size[1] - h) / 2.0))
        left = int(round((new_size[0] - w) / 2.0))
        return image.crop((left, top, left + w, top + h))

    def load(self, source: str | Path | BinaryIO | Image.Image) -> torch.Tensor:
        """Decode one image (a file, or a Pillow image) to uint8 (C, H, W): EXIF orientation, mode, resize, crop.

        Raises:
            One of convnets.data.images.DECODE_ERRORS: the file is not a readable image.
        """
        with upright_image(source, self.channels) as image:
            array = np.asarray(self.resize_and_crop(image), dtype=np.uint8)
        if array.ndim == 2:
            array = array[:, :, None]
        return torch.from_numpy(array.copy()).permute(2, 0, 1)

    def transform_images(self, images: torch.Tensor) -> torch.Tensor:
        """The geometry on in-memory uint8 images (N, C, H, W), each through Pillow as a decoded file would be.

        Raises:
            DataError: the result would not fit in this machine's memory (checked before allocating).
        """
        _check_fits_in_memory(len(images), images.shape[1], self.size)
        out = torch.empty(len(images), images.shape[1], *self.size, dtype=torch.uint8)
        for i, image in enumerate(images):
            array = image.permute(1, 2, 0).numpy()
            pil = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)  # uint8: mode L or RGB
            result = np.asarray(self.resize_and_crop(pil), dtype=np.uint8)
            out[i] = torch.from_numpy(result.reshape(*self.size, -1).copy()).permute(2, 0, 1)
        return out

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Float32 ``(x / 255 - mean) / std`` of uint8 images (C, H, W) or (N, C, H, W), on their device.

        The same fused expression as the training and evaluation loader
        (:class:`convnets.data.loader.BatchLoader`), so both give the same bits.
        """
        if images.dtype != torch.uint8:
            raise ConfigError(f"normalize takes uint8 images; got {images.dtype}")
        shape = (-1, 1, 1) if images.dim() == 3 else (1, -1, 1, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=images.device).view(shape)
        std = torch.tensor(self.std, dtype=torch.float32, device=images.device).view(shape)
        return torch.addcmul(-mean / std, images.float(), 1 / (255 * std))

    def __call__(self, source: str | Path | BinaryIO | Image.Image) -> torch.Tensor:
        """The model's input for one image (a file, or a Pillow image): normalised float32 (C, H, W)."""
        return self.normalize(self.load(source))


def _resize_without_antialias(image: Image.Image, size: tuple[int, int], interpolation: str) -> Image.Image:
    """Resize by sampling the filter at the output positions only (no widening when shrinking)."""
    array = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())
    x = array[None, None] if array.dim() == 2 else array.permute(2, 0, 1)[None]
    y = F.interpolate(x, size=(size[1], size[0]), mode=interpolation, align_corners=False, antialias=False)
    y = y.round_().clamp_(0, 255).to(torch.uint8)[0]
    return Image.fromarray(y[0].numpy() if y.shape[0] == 1 else y.permute(1, 2, 0).contiguous().numpy())
