"""Image files: faithful decoding to uint8, and the on-disk split that decodes them in worker processes.

Faithful means the picture a viewer shows: EXIF orientation is applied (a phone's portrait photo
stands up), 16-bit and float images are scaled to 8 bits instead of saturating or going black,
transparency is composited on black. A file that cannot be decoded (damaged, truncated, not an
image, or a decompression bomb) raises one of :data:`DECODE_ERRORS`, which the split turns into a
skipped sample with its reason, so one bad file never ends an epoch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps

from convnets.errors import ConfigError

if TYPE_CHECKING:
    from convnets.data.preprocess import Preprocessing

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jfif"}
)
# What Pillow raises on a file it cannot decode (found by fuzzing every format above with corrupted
# bytes): OSError (UnidentifiedImageError, truncated data), ValueError, SyntaxError and EOFError from
# some parsers, struct.error and TypeError from TIFF/EXIF offsets that point nowhere, and the
# decompression-bomb checks, whose warning is made an error while decoding.
DECODE_ERRORS = (
    OSError, ValueError, SyntaxError, EOFError, struct.error, TypeError,
    Image.DecompressionBombError, Image.DecompressionBombWarning,
)
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
# EXIF orientation -> the transposition that stands the image up: the table of PIL.ImageOps.exif_transpose.
# That function also rewrites the EXIF block without the tag, which fails on a damaged block (struct.error,
# found by fuzzing) and would lose a decodable photo; the pixels need only the transposition.
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _bits_per_sample(image: Image.Image) -> int:
    """Bits per sample a 32-bit-integer (mode ``I``) image declares: its TIFF tag, else 16.

    Older Pillow versions open 16-bit grey PNGs, and all versions 16-bit PGMs, as mode ``I`` without a tag;
    16 bits is what those hold.
    """
    tags = getattr(image, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None
    if isinstance(bits, tuple):
        bits = bits[0]
    return int(bits) if isinstance(bits, int) and 1 <= bits <= 32 else 16


def _to_8bit(image: Image.Image) -> Image.Image:
    """Scale a 16-bit, 32-bit integer or float grey image to mode ``L``; other modes are returned as they are.

    Pillow's own conversion to ``L`` clips instead of scaling: 16-bit images come out white and float
    images in 0..1 black. Here 16-bit values are divided by 257 (65535 -> 255); mode ``I`` by its full
    scale, ``2**bits - 1`` (see :func:`_bits_per_sample`); float (mode ``F``) images are read as 0..1
    when no value exceeds 1, as 0..255 when none exceeds 255, and otherwise stretched from their own
    minimum to maximum (NaN becomes 0).
    """
    if image.mode not in (*_SIXTEEN_BIT, "I", "F"):
        return image
    values = np.asarray(image, dtype=np.float64)
    if image.mode in _SIXTEEN_BIT:
        scaled = values / 257
    elif image.mode == "I":
        scaled = values * (255 / (2 ** _bits_per_sample(image) - 1))
    else:
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if low >= 0 and high <= 1:
            scaled = values * 255
        elif low >= 0 and high <= 255:
            scaled = values
        else:
            scaled = (values - low) * (255 / (high - low)) if high > low else np.zeros_like(values)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def to_mode(image: Image.Image, channels: int) -> Image.Image:
    """Convert any Pillow mode to L (1 channel) or RGB (3); transparency is composited on black.

    An image already in that mode is returned as it is: ``convert`` would copy it, a second full-size
    image while the decoded one is held (69 MiB for a 6000x4000 photo).
    """
    target = "L" if channels == 1 else "RGB"
    if image.mode == target:
        return image
    image = _to_8bit(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(black, rgba)
    return image.convert(target)


@contextlib.contextmanager
def upright_image(source: str | Path | BinaryIO | Image.Image, channels: int) -> Iterator[Image.Image]:
    """An image file, or a Pillow image, as a viewer shows it (EXIF orientation applied), in mode ``L`` or ``RGB``.

    Every pixel is decoded: a JPEG is never decoded at a reduced scale (Pillow's ``draft``), which an image
    already in memory cannot be, so a photo gives the same pixels as a path, as an open file and as a Pillow
    image or array of it (torchvision's and timm's loaders also decode in full). 16-bit and float images are
    scaled to 8 bits and transparency is composited on black (:func:`to_mode`). Files over Pillow's
    ``MAX_IMAGE_PIXELS`` are refused as decompression bombs.

    Args:
        source: a path, a binary file object, or a Pillow image (left as it is; its EXIF orientation, as
            ``Image.open`` leaves it, is applied like a file's).
        channels: 1 or 3.

    Raises:
        ConfigError: ``source`` is none of these (an array, a tensor, None...).
        One of DECODE_ERRORS: The file is not a readable image.
    """
    if isinstance(source, Image.Image):
        yield _upright(source, channels)
        return
    if not (isinstance(source, str | os.PathLike) or callable(getattr(source, "read", None))):
        raise ConfigError(f"an image must be a path, a binary file object or a Pillow image; got "
                          f"{type(source).__name__} (convnets.predict also takes tensors and arrays of pixels)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(source) as image:
            yield _upright(image, channels)


def _upright(image: Image.Image, channels: int) -> Image.Image:
    turn = _ORIENTATION_TRANSPOSE.get(image.getexif().get(ExifTags.Base.Orientation, 1))
    if turn is not None:
        image = image.transpose(turn)
    return to_mode(image, channels)


def decode_image(source: str | Path | BinaryIO | Image.Image, size: tuple[int, int], channels: int = 3
                 ) -> torch.Tensor:
    """Decode one image to a uint8 tensor (C, H, W) of the given (height, width).

    The image is decoded in full with its EXIF orientation applied (:func:`upright_image`), then scaled
    so its shorter side fits and centre-cropped to the target's aspect (bilinear). Weights with a
    published recipe are fed by :class:`convnets.data.preprocess.Preprocessing` instead.

    Raises:
        One of DECODE_ERRORS: The file is not a readable image (the loader catches these).
    """
    h, w = size
    with upright_image(source, channels) as image:
        array = np.asarray(ImageOps.fit(image, (w, h), method=Image.Resampling.BILINEAR), dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def describe_error(err: BaseException) -> str:
    """The reason recorded for a file that could not be decoded: ``TypeName: message``."""
    return f"{type(err).__name__}: {err}"


class ImageFolderSplit(torch.utils.data.Dataset):
    """One split of an image folder: (path, label) pairs decoded on demand, in worker processes.

    ``dataset[i]`` returns ``(image, label, None)`` with a uint8 (C, H, W) image, or
    ``(None, label, (path, reason))`` when the file cannot be decoded, so one bad file never
    ends an epoch; :func:`collate_images` drops such samples and passes the reasons on. With a
    ``preprocessing`` (published weights' recipe), files are decoded by it; otherwise by :func:`decode_image`.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], image_size: tuple[int, int], channels: int,
                 preprocessing: Preprocessing | None = None) -> None:
        self.samples = [(str(p), int(y)) for p, y in samples]
        self.image_size = preprocessing.size if preprocessing else image_size
        self.channels = preprocessing.channels if preprocessing else channels
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> torch.Tensor:
        """int64 labels (N,) of every sample, in order."""
        return torch.tensor([y for _, y in self.samples], dtype=torch.int64)

    def subset(self, index: torch.Tensor) -> ImageFolderSplit:
        """The samples at ``index`` (int64 positions), in that order."""
        return ImageFolderSplit([self.samples[i] for i in index.tolist()], self.image_size, self.channels,
                                self.preprocessing)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, tuple[str, str] | None]:
        path, label = self.samples[index]
        try:
            if self.preprocessing is not None:
                return self.preprocessing.load(path), label, None
            return decode_image(path, self.image_size, self.channels), label, None
        except DECODE_ERRORS as err:
            return None, label, (path, describe_error(err))


# What a terminal (Ctrl-C) or a cluster (SIGTERM) sends to every process of a job at once.
_JOB_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def leave_signals_to_the_main_process(worker_id: int) -> None:
    """A decoding worker's ``worker_init_fn``: ignore Ctrl-C and SIGTERM, which reach every process of a job.

    The main process decides what they mean (training stops after the step under way, with a
    checkpoint) and then ends its workers itself. A worker that died of the signal first would
    instead make the main process fail with "DataLoader worker exited unexpectedly", or wait for
    ever on a sibling at exit. A worker whose main process is killed outright still exits:
    PyTorch's workers watch their parent. The workers start with these signals held (see
    :func:`workers_starting`); one that came meanwhile is dropped here, when they are unheld.
    """
    for sig in _JOB_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _JOB_SIGNALS)


@contextlib.contextmanager
def workers_starting() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM while decoding workers are forked (start a DataLoader's iteration inside it).

    A new worker inherits the held signals, so none can end it before
    :func:`leave_signals_to_the_main_process` makes it ignore them; the main process receives
    any that came when they are unheld, on leaving.
    """
    if not hasattr(signal, "pthread_sigmask"):  # Windows: workers are spawned, not forked
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _JOB_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def collate_images(
    items: Sequence[tuple[torch.Tensor | None, int, tuple[str, str] | None]],
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
    """Stack the decodable samples of a batch; return (uint8 images, int64 labels, [(path, reason)])."""
    good = [(x, y) for x, y, _ in items if x is not None]
    bad = [err for _, _, err in items if err is not None]
    if not good:
        return torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.int64), bad
    return torch.stack([x for x, _ in good]), torch.tensor([y for _, y in good], dtype=torch.int64), bad
