"""TensorBoard logging of a run, and the picture of the model's most confident mistakes.

:class:`TensorBoardLog` writes event files that ``tensorboard --logdir RUN_DIR`` shows: per-step scalars
under ``train_step/NAME``, per-epoch scalars under ``epoch/NAME`` and image grids. It needs the optional
``tensorboard`` package (``pip install 'convnets[tensorboard]'``); the run directory's ``metrics.csv``,
``metrics.jsonl`` and ``curves.png`` do not.

:class:`Mistakes` keeps the ``k`` most confident wrong predictions of an evaluation pass on the device
(a top-k per batch merged with the kept ones: no host synchronisation per batch) and draws them as one
grid, each image titled with the predicted class, its confidence and the true class.
"""

from __future__ import annotations

import errno
import math
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from convnets.checks import Rule, number, whole
from convnets.data.grid import render_grid
from convnets.errors import ConfigError, InputShapeError, MissingDependencyError

INSTALL = "pip install 'convnets[tensorboard]' (or pip install tensorboard)"


def summary_writer_class() -> type:
    """torch's ``SummaryWriter``, or a :class:`MissingDependencyError` that says how to install TensorBoard.

    Call it before a run starts work, so that ``--tensorboard`` without the package fails at once.
    """
    try:
        # torch.utils.tensorboard imports tensorboard itself, but may already sit in sys.modules from an
        # earlier import; asking for the package first makes a missing one fail here every time.
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        if isinstance(err, ModuleNotFoundError) and err.name in ("tensorboard", None):
            raise MissingDependencyError(f"--tensorboard needs the tensorboard package: {INSTALL}") from err
        # Installed, but one of its own imports fails (a protobuf of another major version is the usual one):
        # installing it again as the message above says would change nothing.
        raise MissingDependencyError(f"--tensorboard: the tensorboard package is installed but cannot be imported "
                                     f"({type(err).__name__}: {err}); repair that installation or leave out "
                                     "--tensorboard") from err
    return SummaryWriter


class TensorBoardLog:
    """Scalars and images of one training run, as TensorBoard event files in ``log_dir``.

    Only one process of a distributed run should make one (rank 0), as only it writes the run directory.
    Use it as a context manager, or call :meth:`close`.

    Args:
        log_dir: Where the event files go; created if missing.

    Raises:
        MissingDependencyError: the tensorboard package is not installed.
        NotADirectoryError: a file stands where the log folder goes (an OSError: the CLI prints it).
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        if self.log_dir.exists() and not self.log_dir.is_dir():  # SummaryWriter said only "File exists"
            raise NotADirectoryError(errno.ENOTDIR, "a file, where --tensorboard writes its logs (a folder); move it, "
                                     "or resume without --tensorboard", str(self.log_dir))
        self._writer: Any = summary_writer_class()(log_dir=str(self.log_dir))

    def step(self, step: int, scalars: dict[str, float]) -> None:
        """Per-step values (loss, learning rate, images/s...), each as ``train_step/NAME`` at ``step``.

        Values are read as Python floats: a tensor on an accelerator is synchronised here, so a caller that
        avoids per-step synchronisation passes values it has already brought to the host.

        Raises:
            ConfigError: ``step`` is not a whole number >= 0.
        """
        whole(0).check("step", step)
        self._scalars("train_step", step, scalars)

    def epoch(self, epoch: int, scalars: dict[str, float]) -> None:
        """Per-epoch values, each as ``epoch/NAME`` at ``epoch``; written to disk at once."""
        whole(0).check("epoch", epoch)
        self._scalars("epoch", epoch, scalars)
        self._open().flush()  # an epoch is worth seeing now, not at the writer's next 2-minute flush

    def image(self, tag: str, grid: np.ndarray | torch.Tensor, step: int) -> None:
        """A picture under ``tag`` at ``step``.

        Args:
            tag: Its name in TensorBoard ("augmentation", "mistakes").
            grid: uint8 (height, width, channels) pixels, 1 (grey) or 3 (RGB) channels.
            step: Where it goes on the step slider (the epoch, for a per-epoch picture).

        Raises:
            InputShapeError: ``grid`` is not a uint8 HWC picture with 1 or 3 channels.
        """
        whole(0).check("step", step)
        pixels = grid.detach().cpu().numpy() if isinstance(grid, torch.Tensor) else grid
        if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 3 or \
                pixels.shape[2] not in (1, 3) or 0 in pixels.shape:
            what = (f"{pixels.dtype} array of shape {tuple(pixels.shape)}" if isinstance(pixels, np.ndarray)
                    else type(grid).__name__)
            raise InputShapeError(f"image {tag!r} must be uint8 pixels (height, width, 1 or 3 channels); "
                                  f"got a {what}")
        self._open().add_image(tag, pixels, step, dataformats="HWC")

    def close(self) -> None:
        """Write what is pending and close the event file (a second call does nothing)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def _scalars(self, prefix: str, step: int, scalars: dict[str, float]) -> None:
        writer = self._open()
        for name, value in scalars.items():
            writer.add_scalar(f"{prefix}/{name}", float(value), step)

    def _open(self) -> Any:
        if self._writer is None:  # torch's writer would silently start a new event file
            raise RuntimeError(f"the TensorBoard log {self.log_dir} is closed")
        return self._writer


class Mistakes:
    """The ``k`` most confident wrong predictions seen since the last :meth:`reset`, and their picture.

    Confidence is the softmax probability of the predicted class. Feed every batch of an evaluation pass
    to :meth:`update`; the kept images, predictions and labels stay on the batches' device until
    :meth:`grid` reads them.

    Args:
        k: How many to keep (0 keeps none).
        classes: The class names, in label order.
        mean: Per-channel mean the images were normalised with (0..1 scale).
        std: Per-channel standard deviation, likewise.

    Raises:
        ConfigError: ``k`` is not a whole number >= 0, ``classes`` is empty, or ``mean``/``std`` do not
            pair up as positive-std channel statistics.
    """

    columns = 8  # images per row of the grid

    def __init__(self, k: int, classes: Sequence[str], mean: Sequence[float], std: Sequence[float]) -> None:
        whole(0).check("k (mistakes to keep)", k)
        if not classes:
            raise ConfigError("classes must name at least one class; got none")
        mean, std = _channel_values("mean", mean, number()), _channel_values("std", std, number(gt=0))
        if not mean or len(mean) != len(std):
            raise ConfigError(f"mean and std must give one value per channel each; got {len(mean)} and {len(std)}")
        self.k, self.classes = k, [str(c) for c in classes]
        self.mean = torch.tensor(mean).reshape(1, -1, 1, 1)
        self.std = torch.tensor(std).reshape(1, -1, 1, 1)
        self.reset()

    def reset(self) -> None:
        """Forget what was kept (call before each evaluation pass)."""
        # Parallel tensors, sorted by score: confidence where wrong, -1 where right (kept only to fill k).
        self._score: torch.Tensor | None = None
        self._images: torch.Tensor | None = None
        self._predicted: torch.Tensor | None = None
        self._true: torch.Tensor | None = None

    def update(self, x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        """Merge one batch into the kept mistakes, on its device, without reading anything back to the host.

        Args:
            x: The normalised images the model saw, (N, C, H, W), C = the channels of ``mean``.
            logits: The model's outputs, (N, number of classes).
            y: The true labels, (N,).

        Raises:
            InputShapeError: The shapes do not fit each other, ``classes`` or ``mean``.
        """
        n, channels = len(y), self.mean.shape[1]
        if x.ndim != 4 or x.shape[0] != n or x.shape[1] != channels or logits.shape != (n, len(self.classes)) \
                or y.ndim != 1:
            raise InputShapeError(f"Mistakes.update expects images (N, {channels}, H, W), logits (N, "
                                  f"{len(self.classes)}) and labels (N,); got {tuple(x.shape)}, "
                                  f"{tuple(logits.shape)} and {tuple(y.shape)}")
        if self.k == 0 or n == 0:
            return
        confidence, predicted = logits.detach().float().softmax(1).max(1)
        # A right prediction (or a non-finite one, which has no confidence) ranks below every wrong one.
        wrong = (predicted != y) & confidence.isfinite()
        score = torch.where(wrong, confidence, torch.full_like(confidence, -1.0))
        top = score.topk(min(self.k, n)).indices  # this batch's best k first: only those images are copied
        batch = (score[top], x.detach()[top].float(), predicted[top], y[top])
        if self._score is not None:
            kept = (self._score, self._images, self._predicted, self._true)
            merged = [torch.cat((old, new.to(old.device))) for old, new in zip(kept, batch, strict=True)]
            order = merged[0].topk(min(self.k, len(merged[0]))).indices
            batch = tuple(t[order] for t in merged)
        self._score, self._images, self._predicted, self._true = batch

    def __len__(self) -> int:
        """How many wrong predictions are kept (at most ``k``); reads the device."""
        return 0 if self._score is None else int((self._score >= 0).sum())

    def kept(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The kept mistakes, most confident first, on the CPU.

        Returns:
            images: Denormalised to the 0..1 scale, float (M, C, H, W), M <= k.
            confidence: The softmax probability of each prediction, (M,).
            predicted: The predicted labels, (M,).
            true: The true labels, (M,).
        """
        count = len(self)
        if count == 0:
            labels = torch.zeros(0, dtype=torch.long)
            return torch.zeros(0, self.mean.shape[1], 0, 0), torch.zeros(0), labels, labels
        images = (self._images[:count].cpu() * self.std + self.mean).clamp(0, 1)
        return images, self._score[:count].cpu(), self._predicted[:count].cpu(), self._true[:count].cpu()

    def grid(self) -> np.ndarray:
        """The kept mistakes, most confident first, as uint8 RGB pixels (height, width, 3).

        Each image is shown with the predicted class and its confidence over the true class, in rows of
        :attr:`columns`. With no mistake kept, the picture says so in words.

        Raises:
            InputShapeError: A kept label is not one of ``classes``.
        """
        images, confidence, predicted, true = self.kept()
        if len(images) == 0:
            return _caption_only("no wrong predictions" if self.k else "no mistakes kept (k = 0)")
        outside = [t for t in true.tolist() if not 0 <= t < len(self.classes)]
        if outside:
            raise InputShapeError(f"label {outside[0]} is not one of the {len(self.classes)} classes")
        captions = [(f"{self.classes[p]} {c:.1%}", f"true: {self.classes[t]}")
                    for p, c, t in zip(predicted.tolist(), confidence.tolist(), true.tolist(), strict=True)]
        return _with_captions(list(images.split(self.columns)), captions)


def _channel_values(name: str, values: Sequence[float], rule: Rule) -> list[float]:
    """``values`` as Python floats (NumPy scalars included), each checked by ``rule``."""
    floats = [value.item() if isinstance(value, np.number) else value for value in values]
    for value in floats:
        rule.check(name, value)
    return [float(value) for value in floats]


_GAP = 2  # white pixels between tiles, as render_grid leaves them


def _line_height(font: Any) -> int:
    return font.getbbox("Ag")[3] + 2  # the bottom of a letter that descends, and room to the next line


def _fit(text: str, width: int, draw: ImageDraw.ImageDraw, font: Any) -> str:
    """``text``, shortened with an ellipsis until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _with_captions(rows: list[torch.Tensor], captions: list[tuple[str, ...]]) -> np.ndarray:
    """:func:`render_grid`'s tiles, with a strip of text lines under each row."""
    tiles = render_grid(rows, gap=_GAP)
    columns = max(len(r) for r in rows)
    tile_w = (tiles.width - _GAP) // columns - _GAP
    tile_h = (tiles.height - _GAP) // len(rows) - _GAP
    font = ImageFont.load_default()  # Pillow's own: no font file to find
    lines = max(len(c) for c in captions)
    strip = lines * _line_height(font) + _GAP
    canvas = Image.new("RGB", (tiles.width, len(rows) * (tile_h + _GAP + strip) + _GAP), "white")
    draw = ImageDraw.Draw(canvas)
    for i in range(len(rows)):
        top = i * (tile_h + _GAP)
        out_top = i * (tile_h + _GAP + strip)
        canvas.paste(tiles.crop((0, top, tiles.width, top + tile_h + _GAP)), (0, out_top))
        for j in range(len(rows[i])):
            x = _GAP + j * (tile_w + _GAP)
            for line, text in enumerate(captions[i * columns + j]):
                y = out_top + _GAP + tile_h + 1 + line * _line_height(font)
                draw.text((x, y), _fit(text, tile_w, draw, font), fill=(200, 0, 0) if line == 0 else "black",
                          font=font)
    return np.asarray(canvas)


def _caption_only(text: str) -> np.ndarray:
    """A small white picture holding one line of text."""
    font = ImageFont.load_default()  # Pillow's own: no font file to find
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = math.ceil(probe.textlength(text, font=font)) + 4 * _GAP
    canvas = Image.new("RGB", (width, _line_height(font) + 4 * _GAP), "white")
    ImageDraw.Draw(canvas).text((2 * _GAP, 2 * _GAP), text, fill="black", font=font)
    return np.asarray(canvas)
