"""Training throughput and time-to-accuracy: convnets' training path against a hand-tuned loop, a
straightforward baseline loop and the 3x3-convolution ceiling.

For lenet5 and resnet20 on Fashion-MNIST, in one process, on the CPU:

1. Matmul peak: the best float32 ``torch.mm`` GFLOP/s over a few sizes, for scale.
2. Throughput (images/s) of training steps, in chunks interleaved A, B, C, D, D, C, B, A, ... so
   that load from other processes and clock drift fall on every side alike:

   - convnets: the ``Trainer`` that ``convnets train MODEL`` runs, built from the same
     configuration (the recipe, the default precision and layout: bf16 autocast where the CPU
     computes bf16 natively, channels-last; ``make_loader`` over the in-memory uint8 tensors),
     its own epoch loop making every step (a chunk stops it at ``max_steps``; the next continues
     the epoch; an epoch's end is passed over without its evaluation);
   - tuned: the hand-tuned loop, the straightforward best one writes by hand: the training images
     as one normalised float tensor, batches indexed from it, the recipe's mirror-and-shift
     augmentation with the same batched gather convnets uses (``flip_shift``), channels-last
     model and input, ``torch.autocast("cpu", torch.bfloat16)`` where the CPU has native bf16
     (fp32 elsewhere, as convnets), the recipe's optimizer and label smoothing,
     ``zero_grad(set_to_none=True)``, no look at the loss between steps, no schedule;
   - baseline: the plain loop: a ``torch.utils.data.Dataset`` returning one Pillow image at a
     time, per-image transforms (lenet5: pad 28 -> 32 with ``ImageOps.expand``; resnet20: the
     recipe's preset per image: mirror and pad-and-crop), then to-tensor and normalisation in
     numpy, through ``torch.utils.data.DataLoader(num_workers=N)``; eager fp32 NCHW, the
     recipe's optimizer, a plain zero_grad / forward / cross-entropy / backward / step;
   - ceiling (models with 3x3 convolutions): what the model would train at if its step cost only
     its 3x3 convolutions: the forward and backward (weight gradient, and input gradient where
     the step needs one: not for the first layer) of every ``nn.Conv2d`` of kernel 3x3, found
     by forward hooks at the input shapes of a real training batch, channels-last, in the tuned
     loop's precision; ceiling images/s = batch / (the summed seconds of those per batch).

   Every side starts from the same initial weights, with the same batch size. The ratios
   convnets / tuned (goal >= 1) and convnets / ceiling (goal >= 0.6) are the medians of the
   per-round ratios. Achieved GFLOP/s is ``3 * 2 * MACs * images/s``: a training step is taken
   as 3 forward passes (forward, plus a backward that costs about twice the forward: gradients
   of activations and of weights).
3. Time to accuracy with ``convnets.training.train`` and the recipe: lenet5 to 0.90 (default budget),
   resnet20 to 0.93 (``--full``: the whole recipe; by default a short run of ``--resnet-epochs``
   with the recipe's schedule compressed to it).
4. ``--compile`` end to end: ``convnets.train`` of resnet20 for ``--compile-epochs`` (1) with the
   defaults, once plain and once with ``compile="inductor"``, one after the other in this process
   (plain first: the compiled run then finds no warmer caches than the plain one had), timing the
   whole call: data, setup, compilation, training, evaluation and the run directory. The ratio
   plain/compiled above 1 means compiling pays for itself within the run. Beside them, the
   baseline loop of 2. in ``--rounds`` chunks, half before the runs and half after; each run's
   training images over its whole call, as images/s, over the baseline's (goal, compiled: >= 2.5).
5. ``--malloc-compare PAIRS``: the Trainer with glibc keeping freed memory (what it does on the CPU,
   ``convnets.device.keep_freed_memory``) and with glibc's defaults, in alternating fresh processes
   (kept, default, kept, ...): images/s and minor page faults per step of each, the per-pair ratio.

On request, in 2.: ``--breakdown`` profiles ``--steps`` more of the Trainer's steps and groups the
operators' self CPU time into parts of the step (:data:`STEP_CATEGORIES`); ``--compiled-side`` adds
the Trainer compiled with ``--compile-backend`` as a side, its compile seconds timed apart, and the
training images after which compiling pays for itself against the eager Trainer.

    python benchmarks/bench_train.py                         # default budget: ~10 minutes on 2 idle cores
    python benchmarks/bench_train.py --threads 1             # on a machine shared with other jobs
    python benchmarks/bench_train.py --full --out runs/bench_train.json   # the resnet20 recipe too
    python benchmarks/bench_train.py --skip-accuracy --rounds 8           # 1. and 2. only
    python benchmarks/bench_train.py --tuned-only --rounds 12 --steps 16  # 1. and 2., resnet20: ~3-4 minutes
    python benchmarks/bench_train.py --compile-only                       # 4. alone: ~5-6 minutes
    TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) python benchmarks/bench_train.py --tuned-only --rounds 12 --steps 16 \
        --breakdown --compiled-side --malloc-compare 6 --threads 2      # 2. with all three, and 5.: ~10 minutes
    python benchmarks/bench_train.py --tuned-only --rounds 4 --steps 16 --malloc-compare 6   # mostly 5.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import fnmatch
import functools
import json
import math
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import nn

import convnets
from convnets.cli.options import number
from convnets.data.augment import PRESETS, AugmentConfig, flip_shift, pca_basis
from convnets.data.datasets import Dataset, load_dataset
from convnets.device import keep_freed_memory
from convnets.experiments.stats import mean_interval
from convnets.training import TrainConfig, distributed, train
from convnets.training import loop as loop_module
from convnets.training.config import resolve
from convnets.training.loop import Trainer, cpu_has_native_bf16

# The input side each model trains at (what `convnets train` picks) and its time-to-accuracy goal.
CASES: dict[str, dict[str, Any]] = {
    "lenet5": dict(size=32, goal=0.90),
    "resnet20": dict(size=28, goal=0.93),
}


# --------------------------------------------------------------------------------------------
# matmul peak


def matmul_peak(sizes: tuple[int, ...] = (256, 512, 1024, 2048), min_seconds: float = 0.3) -> dict[str, Any]:
    """Best float32 ``torch.mm`` rate over square sizes, with torch's current thread count.

    Args:
        sizes: Square matrix sides to try.
        min_seconds: Time each size at least this long (repeating the product) so one
            descheduling by another process does not decide the figure.

    Returns:
        ``{"gflops": best, "per_size": {n: gflops}, "threads": n}``.
    """
    per_size = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        out = torch.empty(n, n)
        torch.mm(a, b, out=out)  # warm-up: first call allocates and picks the kernel
        best, reps = 0.0, 1
        spent = 0.0
        while spent < min_seconds:
            start = time.perf_counter()
            for _ in range(reps):
                torch.mm(a, b, out=out)
            seconds = time.perf_counter() - start
            spent += seconds
            best = max(best, 2 * n**3 * reps / seconds / 1e9)
            reps *= 2
        per_size[n] = round(best, 1)
    return {"gflops": max(per_size.values()), "per_size": per_size, "threads": torch.get_num_threads()}


# --------------------------------------------------------------------------------------------
# the baseline: per-image Pillow transforms through a DataLoader


class PillowDataset(torch.utils.data.Dataset):
    """One (image, label) at a time from a uint8 (N, H, W) array, transformed with Pillow and numpy.

    What one writes without a batched pipeline (torchvision's ``Pad``/``RandomCrop``/
    ``RandomHorizontalFlip``/``ToTensor``/``Normalize``, written out since torchvision is not a
    dependency). Random parameters come from Python's ``random``, which DataLoader seeds per worker.

    Args:
        images: uint8 (N, H, W) grey images.
        labels: int (N,) labels.
        mean, std: Normalisation, the same values as the convnets side.
        pad_to: Centre the image on a zero canvas of this side (LeNet-5's 28 -> 32), or None.
        augment: Preset name whose flip, pad-and-crop and colour settings to apply per image, or None.
        pixel_cov: (1, 1) training pixel covariance, for the preset's PCA colour term.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        mean: float,
        std: float,
        *,
        pad_to: int | None = None,
        augment: str | None = None,
        pixel_cov: torch.Tensor | None = None,
    ) -> None:
        self.images, self.labels = images, labels
        self.mean, self.std = np.float32(mean), np.float32(std)
        self.pad_to = pad_to
        self.cfg = PRESETS[augment] if augment else None
        self.pca_scale = 0.0
        if self.cfg is not None and self.cfg.pca_std:
            eigvals, eigvecs = pca_basis(pixel_cov)
            # One channel: the PCA shift is eigvec * alpha * sqrt(eigval), alpha ~ N(0, pca_std).
            self.pca_scale = float(eigvecs[0, 0] * eigvals[0].sqrt())

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = Image.fromarray(self.images[i])
        side = image.size[0]
        if self.pad_to is not None:
            before = (self.pad_to - side) // 2
            image = ImageOps.expand(image, (before, before, self.pad_to - side - before, self.pad_to - side - before))
            side = self.pad_to
        shift = 0.0
        cfg = self.cfg
        if cfg is not None:
            if random.random() < cfg.hflip:
                image = ImageOps.mirror(image)
            pad = round(cfg.pad_crop * side)
            if pad:
                image = ImageOps.expand(image, pad, fill=0)
                left, top = random.randint(0, 2 * pad), random.randint(0, 2 * pad)
                image = image.crop((left, top, left + side, top + side))
            shift = random.uniform(-cfg.color_shift, cfg.color_shift) / 255
            shift += random.gauss(0.0, cfg.pca_std) * self.pca_scale
        x = np.asarray(image, dtype=np.float32) / 255
        if cfg is not None and (cfg.color_shift or cfg.pca_std):
            x = np.clip(x + shift, 0.0, 1.0)
        x = (x - self.mean) / self.std
        return torch.from_numpy(x[None]), int(self.labels[i])


# --------------------------------------------------------------------------------------------
# interleaved throughput: the sides


def forever(loader: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches without end, epoch after epoch (``set_epoch`` where the loader has one)."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def make_optimizer(model: nn.Module, name: str) -> torch.optim.Optimizer:
    """The recipe's optimizer and hyperparameters for ``name``, as one writes it by hand (the baseline's and
    the hand-tuned loop's; convnets' own decays only conv and linear weights, which costs the same)."""
    cfg = resolve(TrainConfig(model=name))
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


class Side:
    """One side of the comparison: runs chunks of training steps and times them.

    Subclasses say what a step is (:meth:`_run`); this class keeps the images/s of every timed chunk.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.images, self.seconds, self.data_seconds = 0, 0.0, 0.0
        self.rates: list[float] = []

    def steps(self, count: int, timed: bool = True) -> None:
        """Run ``count`` training steps; when ``timed``, add them to the totals."""
        if count == 0:
            return
        start = time.perf_counter()
        images, data = self._run(count, timed)
        seconds = time.perf_counter() - start
        if timed:
            self.images += images
            self.seconds += seconds
            self.data_seconds += data
            self.rates.append(images / seconds)

    def _run(self, count: int, timed: bool) -> tuple[int, float]:
        """Make ``count`` steps; the images they trained on and the seconds spent waiting for data."""
        raise NotImplementedError

    def summary(self) -> dict[str, Any]:
        # The median round, not the total: a burst of load from another process that hits one
        # chunk would otherwise decide the figure (the rounds of every side are in the JSON).
        return {
            "images_per_s": statistics.median(self.rates),
            "images_per_s_total": self.images / self.seconds,
            "images": self.images,
            "seconds": round(self.seconds, 3),
            "data_wait_fraction": round(self.data_seconds / self.seconds, 3),
            "per_round_images_per_s": [round(r, 1) for r in self.rates],
        }


class PlainLoop(Side):
    """A loop written by hand: a batch iterator, a model and its optimizer, and per step zero_grad(set_to_none) /
    forward / cross-entropy / backward / step, with no look at the loss until the chunk ends.

    Args:
        name: The side's name.
        batches: (x, y) batches without end.
        model: The network (its layout is set here).
        optimizer: Over the model's parameters.
        channels_last: NHWC model and input.
        autocast: The CPU autocast dtype, or None for plain fp32.
        label_smoothing: Of the cross-entropy.
    """

    def __init__(self, name: str, batches: Iterator, model: nn.Module, optimizer: torch.optim.Optimizer,
                 *, channels_last: bool = False, autocast: torch.dtype | None = None,
                 label_smoothing: float = 0.0) -> None:
        super().__init__(name)
        self.batches, self.model, self.optimizer = batches, model, optimizer
        self.channels_last, self.autocast, self.label_smoothing = channels_last, autocast, label_smoothing
        model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        model.train()

    def _run(self, count: int, timed: bool) -> tuple[int, float]:
        images = 0
        data = 0.0
        for _ in range(count):
            t = time.perf_counter()
            x, y = next(self.batches)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            data += time.perf_counter() - t
            self.optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=self.autocast or torch.bfloat16, enabled=self.autocast is not None):
                loss = F.cross_entropy(self.model(x), y, label_smoothing=self.label_smoothing)
            loss.backward()
            self.optimizer.step()
            images += len(y)
        loss.item()  # CPU kernels are synchronous already; this keeps the timing right on a GPU too
        return images, data


DATA_EVENT = "bench_train: next batch"


class _TimedLoader:
    """A loader whose iteration adds the seconds spent waiting for each batch to :attr:`waited`; everything
    else (``set_epoch``, ``position``, ``len``) is the loader's own."""

    def __init__(self, loader: Any) -> None:
        self.loader, self.waited = loader, 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = iter(self.loader)
        while True:
            start = time.perf_counter()
            with torch.profiler.record_function(DATA_EVENT):  # the step breakdown's "data" (see STEP_CATEGORIES)
                batch = next(batches, None)
            self.waited += time.perf_counter() - start
            if batch is None:
                return
            yield batch


class TrainerSide(Side):
    """convnets: the :class:`~convnets.training.loop.Trainer` that ``convnets train MODEL`` runs, built from
    the same configuration (the recipe, the default precision and layout, ``make_loader`` over the
    in-memory data), whose own epoch loop makes every step.

    A chunk of steps is the Trainer's epoch loop stopped by ``max_steps`` at the chunk's end; the
    next chunk continues the epoch where it stopped, as a resumed run does. An epoch's end is passed
    over without its evaluation (the figure is training throughput).

    Args:
        config: The run (``out`` a directory the Trainer may write its config.json into).
        name: The side's name.
    """

    def __init__(self, config: TrainConfig, name: str = "convnets") -> None:
        super().__init__(name)
        self.trainer = trainer = Trainer(config, distributed.setup(config.device))
        # What Trainer.run() sets up around the epochs: no signal seen, and no mid-epoch checkpoint due.
        trainer._signalled = []
        trainer._last_save = math.inf
        trainer.setup.train_loader = self.loader = _TimedLoader(trainer.setup.train_loader)
        self.batches_per_epoch = trainer.setup.optimizer_steps_per_epoch * trainer.cfg.accumulate

    def _run(self, count: int, timed: bool) -> tuple[int, float]:
        trainer, cfg = self.trainer, self.trainer.cfg
        self.loader.waited = 0.0
        first = trainer.step
        while trainer.step < first + count:
            if trainer.position + cfg.accumulate > self.batches_per_epoch:  # the epoch is done: the next one
                trainer.epoch, trainer.position = trainer.epoch + 1, 0
            room = (self.batches_per_epoch - trainer.position) // cfg.accumulate
            cfg.max_steps = trainer.step + min(first + count - trainer.step, room)
            stopped = trainer._train_epoch()
            if stopped != "max_steps":
                raise RuntimeError(f"the Trainer's epoch stopped for {stopped!r}, not at the chunk's end")
        return (trainer.step - first) * trainer.setup.batch_size * cfg.accumulate, self.loader.waited

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "precision": self.trainer.setup.precision,
                "channels_last": self.trainer.setup.channels_last}


def tuned_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, augment: str,
                  seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The hand-tuned loop's data: batches indexed from one normalised float tensor, reshuffled each epoch.

    The recipe's augmentation, when it has one, is mirroring and shifting by whole pixels, done on
    the batch with the same batched gather convnets uses (:func:`~convnets.data.augment.flip_shift`),
    so that both sides do the same work per image. The shift fills with 0 on the normalised scale
    (the mean grey, where convnets fills black): the same cost, a slightly different image.

    Args:
        images: float (N, C, H, W), normalised.
        labels: int64 (N,).
        batch_size: Images per batch; the last incomplete batch of an epoch is dropped.
        augment: The recipe's preset name.
        seed: Of the order and the augmentation.

    Raises:
        ValueError: The preset does more than mirror and shift.
    """
    cfg = PRESETS[augment]
    extra = [f.name for f in dataclasses.fields(AugmentConfig) if f.name not in ("hflip", "pad_crop")
             and getattr(cfg, f.name) != getattr(PRESETS["none"], f.name)]
    if extra:
        raise ValueError(f"the hand-tuned loop mirrors and shifts only; preset {augment!r} also sets {extra}")
    generator = torch.Generator().manual_seed(seed)
    n, b = len(labels), batch_size
    pad = round(cfg.pad_crop * min(images.shape[-2:]))
    no_vflip = torch.zeros(b, dtype=torch.bool)
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - b + 1, b):
            index = order[start:start + b]
            x = images[index]
            if cfg.hflip or pad:
                hflip = torch.rand(b, generator=generator) < cfg.hflip
                dx = torch.randint(-pad, pad + 1, (b,), generator=generator)
                dy = torch.randint(-pad, pad + 1, (b,), generator=generator)
                x = flip_shift(x, dx, dy, hflip, no_vflip)
            yield x, labels[index]


def tuned_loop(model: nn.Module, name: str, data: Dataset, *, batch_size: int, seed: int) -> PlainLoop:
    """The hand-tuned loop: the straightforward best one writes by hand for ``name`` on ``data``.

    The training images as one normalised float tensor in memory, channels-last model and input,
    bf16 autocast where the CPU computes bf16 natively (fp32 elsewhere), the recipe's optimizer,
    label smoothing and augmentation (see :func:`tuned_batches`), ``zero_grad(set_to_none=True)``,
    and no look at the loss between steps. No learning-rate schedule (one multiply a step).
    """
    recipe = resolve(TrainConfig(model=name))
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    images = ((data.train.images.float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)
    batches = tuned_batches(images, data.train.labels, batch_size, recipe.augment, seed)
    return PlainLoop("tuned", batches, model, make_optimizer(model, name), channels_last=True,
                     autocast=torch.bfloat16 if cpu_has_native_bf16() else None,
                     label_smoothing=recipe.label_smoothing)


def baseline_loop(model: nn.Module, name: str, data: Dataset, raw: Dataset, *, batch_size: int, workers: int,
                  seed: int) -> PlainLoop:
    """The plain loop: Pillow per image through a DataLoader (see :class:`PillowDataset`), eager fp32 NCHW.

    Args:
        model: The network (set to the NCHW layout here).
        name: Its name (the recipe's augmentation and optimizer).
        data: The dataset at the model's input size (its normalisation, and its side to pad to).
        raw: The same images at 28x28, the source of the Pillow images.
        batch_size, workers, seed: Of the DataLoader.
    """
    recipe = resolve(TrainConfig(model=name))
    pad_to = data.image_size[0] if data.image_size != raw.image_size else None
    pillow = PillowDataset(
        raw.train.images[:, 0].numpy(), raw.train.labels.numpy(), data.mean[0], data.std[0], pad_to=pad_to,
        augment=None if recipe.augment == "none" else recipe.augment, pixel_cov=raw.pixel_cov,
    )
    loader = torch.utils.data.DataLoader(
        pillow, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed),
    )
    return PlainLoop("baseline", forever(loader), model, make_optimizer(model, name))


@dataclass
class ConvLayer:
    """One 3x3 convolution of a network as a training step runs it.

    Attributes:
        name: Its module path.
        conv: A copy of the module (its weight, stride, padding, dilation, groups).
        input_shape: (N, C, H, W) of its input in the step.
        input_dtype: Of its input in the step (under autocast, the stem's is the data's fp32, the others' bf16).
        input_grad: Whether the step computes its input's gradient (not for the first layer: the data needs none).
    """

    name: str
    conv: nn.Conv2d
    input_shape: tuple[int, ...]
    input_dtype: torch.dtype
    input_grad: bool


def conv3x3_layers(model: nn.Module, input_size: tuple[int, ...], batch_size: int,
                   autocast: torch.dtype | None) -> list[ConvLayer]:
    """Every 3x3 convolution of ``model`` with the input shape it sees in a training step.

    Found from the model itself: forward hooks on its ``nn.Conv2d`` modules of kernel 3x3 record
    their inputs during one training-mode forward pass of a copy (channels-last, under the same
    autocast as training) on a batch of ``batch_size`` random images of ``input_size`` (C, H, W).
    """
    net = copy.deepcopy(model).train().to(memory_format=torch.channels_last)
    found: list[ConvLayer] = []

    def record(name: str, module: nn.Conv2d, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0]
        found.append(ConvLayer(name, copy.deepcopy(module), tuple(x.shape), x.dtype, x.requires_grad))

    hooks = [m.register_forward_pre_hook(functools.partial(record, name)) for name, m in net.named_modules()
             if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    try:
        x = torch.randn(batch_size, *input_size).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            net(x)
    finally:
        for hook in hooks:
            hook.remove()
    for layer in found:
        if layer.conv.padding_mode != "zeros":
            raise ValueError(f"{layer.name}: padding mode {layer.conv.padding_mode!r}; the ceiling times zero padding")
    return found


class ConvCeiling(Side):
    """The 3x3-convolution ceiling: a step that costs only a network's 3x3 convolutions.

    A step runs, for every layer of :func:`conv3x3_layers`, the convolution forward and its
    backward (the weight's gradient, the bias's if any, and the input's where the real step needs
    it) at the layer's shapes, channels-last, in the dtype training computes it in (autocast's),
    on random data. The images/s of these steps is the rate the network would train at if
    everything else (BatchNorm, ReLU, additions, the loss, the optimizer, the data, the casts
    autocast makes) cost nothing.

    Args:
        layers: From :func:`conv3x3_layers`.
        dtype: What the convolutions compute in (bf16 under bf16 autocast, else fp32).
    """

    def __init__(self, layers: list[ConvLayer], dtype: torch.dtype) -> None:
        super().__init__("ceiling")
        if not layers:
            raise ValueError("no 3x3 convolution to time")
        self.batch_size = layers[0].input_shape[0]
        self.work = []
        for layer in layers:
            conv = layer.conv
            x = torch.randn(layer.input_shape).to(dtype).contiguous(memory_format=torch.channels_last)
            weight = conv.weight.detach().to(dtype).contiguous(memory_format=torch.channels_last)
            bias = None if conv.bias is None else conv.bias.detach().to(dtype).requires_grad_()
            inputs = [weight.requires_grad_()] + ([bias] if bias is not None else [])
            if layer.input_grad:
                inputs.append(x.requires_grad_())
            settings = (conv.stride, conv.padding, conv.dilation, conv.groups)
            grad = torch.randn_like(F.conv2d(x.detach(), weight.detach(), None, *settings))
            self.work.append((x, weight, bias, settings, inputs, grad))
        self.layers = layers
        self.layer_seconds = [0.0] * len(layers)

    def _run(self, count: int, timed: bool) -> tuple[int, float]:
        for _ in range(count):
            for i, (x, weight, bias, settings, inputs, grad) in enumerate(self.work):
                start = time.perf_counter()
                out = F.conv2d(x, weight, bias, *settings)
                torch.autograd.grad(out, inputs, grad)
                if timed:
                    self.layer_seconds[i] += time.perf_counter() - start
        return count * self.batch_size, 0.0

    def summary(self) -> dict[str, Any]:
        steps = self.images // self.batch_size
        return {**super().summary(), "layers": [
            {"name": layer.name, "input": list(layer.input_shape), "input_dtype": str(layer.input_dtype),
             "out_channels": layer.conv.out_channels,
             "stride": list(layer.conv.stride), "input_grad": layer.input_grad,
             "ms_per_batch": round(1000 * seconds / steps, 3)}
            for layer, seconds in zip(self.layers, self.layer_seconds, strict=True)]}


# --------------------------------------------------------------------------------------------
# interleaved throughput


def interleave(sides: list[Side], *, rounds: int, steps: int, warm: int) -> None:
    """Time ``rounds`` chunks of every side, in an order that turns around each round (A, B, C, C, B, A, ...),
    so that load from other processes and clock drift fall on every side alike.

    Args:
        sides: The sides.
        rounds: Chunks per side.
        steps: Timed steps per chunk.
        warm: Untimed steps at the start of every chunk: they refill the baseline's prefetch queue,
            which its workers filled ahead while the other sides ran, so the timed steps see its
            steady state rather than a head start (and the workers' refill does not land on the
            next side's timed steps).
    """
    for side in sides:  # first-call costs (worker start-up, allocator, oneDNN primitives) are not throughput
        side.steps(max(warm, 2), timed=False)
    for r in range(rounds):
        for side in sides if r % 2 == 0 else sides[::-1]:
            side.steps(warm, timed=False)
            side.steps(steps)


def ratio(a: Side, b: Side) -> dict[str, Any]:
    """``a``'s images/s over ``b``'s: the median of the per-round ratios (each compares two chunks that ran
    close together, under the same load), their range, and the ratio of the totals."""
    ratios = [x / y for x, y in zip(a.rates, b.rates, strict=True)]
    return {"median": statistics.median(ratios), "range": [min(ratios), max(ratios)],
            "total": a.images / a.seconds / (b.images / b.seconds)}


# --------------------------------------------------------------------------------------------
# step breakdown


@dataclass(frozen=True)
class OpCategory:
    """A part of a training step, as the profiler's event names show it.

    Attributes:
        name: What the part is.
        patterns: ``fnmatch`` patterns (case-sensitive) of the event names it holds: aten operators
            (``aten::threshold_backward``), autograd nodes (``ReluBackward0``, with the engine's
            ``autograd::engine::evaluate_function: ReluBackward0`` around it) and labelled regions
            (``Optimizer.step#SGD.step``).
        context: The part also holds every event that runs inside one of its events, whatever its own
            name (the ``aten::add_`` of the optimizer's update is the optimizer's, not an addition).
    """

    name: str
    patterns: tuple[str, ...]
    context: bool = False


# An event belongs to the first context part any event around it (or itself) belongs to; otherwise to the
# first operator part that its own name, or failing that the nearest enclosing event's, matches; otherwise to
# "other". Self time is counted: each microsecond once, in the event that spent it.
STEP_CATEGORIES: tuple[OpCategory, ...] = (
    OpCategory("optimizer", ("Optimizer.*",), context=True),  # step and zero_grad, as torch.optim labels them
    OpCategory("loss", ("aten::cross_entropy_loss", "*NllLossBackward*", "*LogSoftmaxBackward*"), context=True),
    OpCategory("data", (DATA_EVENT,), context=True),  # the loader: indexing, augmentation, to the device
    OpCategory("convolution backward", ("*ConvolutionBackward*", "aten::convolution_backward*",
                                        "aten::mkldnn_convolution_backward*")),
    OpCategory("convolution forward", ("aten::conv2d", "aten::convolution", "aten::_convolution",
                                       "aten::mkldnn_convolution", "aten::thnn_conv2d", "aten::_slow_conv2d*")),
    OpCategory("batch norm backward", ("*BatchNormBackward*", "aten::native_batch_norm_backward",
                                       "aten::batch_norm_backward")),
    OpCategory("batch norm forward", ("aten::batch_norm", "aten::_batch_norm_impl_index", "aten::native_batch_norm",
                                      "aten::_native_batch_norm_legit*", "aten::_batch_norm_with_update")),
    OpCategory("ReLU backward", ("*ReluBackward*", "aten::threshold_backward")),
    OpCategory("ReLU forward", ("aten::relu", "aten::relu_", "aten::clamp_min", "aten::clamp_min_")),
    OpCategory("additions", ("aten::add", "aten::add_", "*AddBackward*")),  # the residual sums and their gradients
    OpCategory("casts, copies and fills", ("aten::to", "aten::_to_copy", "aten::copy_", "aten::fill_", "aten::zero_",
                                           "aten::zeros", "aten::zeros_like", "aten::empty", "aten::empty_like",
                                           "aten::empty_strided", "aten::clone", "aten::contiguous",
                                           "*ToCopyBackward*")),
)
OTHER = "other"


def step_category(names: list[str]) -> str:
    """The part of the step (:data:`STEP_CATEGORIES`) of an event, from its own name and those of the events
    around it, innermost first; ``"other"`` when none matches."""
    for category in STEP_CATEGORIES:
        if category.context and any(fnmatch.fnmatchcase(n, p) for n in names for p in category.patterns):
            return category.name
    for n in names:
        for category in STEP_CATEGORIES:
            if not category.context and any(fnmatch.fnmatchcase(n, p) for p in category.patterns):
                return category.name
    return OTHER


def step_breakdown(side: TrainerSide, steps: int) -> dict[str, Any]:
    """Where the Trainer's step spends its time: ``steps`` steps under ``torch.profiler`` (CPU), each
    operator's self time put in a part of the step (:func:`step_category`), in ms per step and as a share
    of the operators' summed time. The profiler slows every operator a little and Python between them is
    in no operator: ``wall_ms_per_step`` (under the profiler) is beside ``op_ms_per_step`` for that reason.

    Args:
        side: The Trainer, warmed up (its first steps' one-off costs are not a step's).
        steps: Steps to profile.
    """
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities) as profile:
        start = time.perf_counter()
        side.steps(steps, timed=False)
        wall = time.perf_counter() - start
    by_op: dict[str, float] = {}
    category_of: dict[str, str] = {}
    for event in profile.events():
        names, parent = [event.name], event.cpu_parent
        while parent is not None:
            names.append(parent.name)
            parent = parent.cpu_parent
        category = step_category(names)
        key = f"{category}\t{event.name}"  # one name may fall in two parts (aten::add_: the optimizer's, a sum)
        by_op[key] = by_op.get(key, 0.0) + event.self_cpu_time_total / 1000 / steps
        category_of[key] = category
    total = sum(by_op.values())
    names = [c.name for c in STEP_CATEGORIES] + [OTHER]
    ms = {name: sum(v for k, v in by_op.items() if category_of[k] == name) for name in names}
    return {
        "steps": steps,
        "wall_ms_per_step": round(1000 * wall / steps, 3),
        "op_ms_per_step": round(total, 3),
        "categories": [{"category": name, "ms_per_step": round(ms[name], 3), "share": ms[name] / total}
                       for name in names],
        "ops": [{"name": k.split("\t", 1)[1], "category": category_of[k], "ms_per_step": round(v, 4)}
                for k, v in sorted(by_op.items(), key=lambda item: -item[1])],
    }


# --------------------------------------------------------------------------------------------
# steady-state compiled training


def compiled_summary(compiled: TrainerSide, eager: TrainerSide, baseline: Side, first_steps: int,
                     first_seconds: float) -> dict[str, Any]:
    """The compiled Trainer's steady state beside the eager one's and the baseline's, and when compiling pays.

    Args:
        compiled: The Trainer with ``compile`` set, after its interleaved chunks.
        eager: The same Trainer uncompiled, timed in the same rounds.
        baseline: The plain loop, timed in the same rounds.
        first_steps: Untimed steps the compiled side made first (they compiled it).
        first_seconds: Their wall time.

    Returns:
        The compiled side's summary, with ``compile_seconds``: the first steps' time beyond what they cost at
        the steady compiled rate; the ratios to the baseline and to the eager Trainer; and the break-even,
        the training images after which the compiled Trainer has caught up with the eager one,
        compile_seconds / (1 / eager rate - 1 / compiled rate) (None when compiled is not faster), also in
        epochs of the training set.
    """
    summary = compiled.summary()
    rate, eager_rate = summary["images_per_s"], eager.summary()["images_per_s"]
    first_images = first_steps * compiled.trainer.setup.batch_size * compiled.trainer.cfg.accumulate
    compile_seconds = max(first_seconds - first_images / rate, 0.0)
    saved_per_image = 1 / eager_rate - 1 / rate
    break_even = compile_seconds / saved_per_image if saved_per_image > 0 else None
    images_per_epoch = compiled.batches_per_epoch * compiled.trainer.setup.batch_size
    # Inductor keeps compiled kernels on disk across processes: a run after another compiles faster unless
    # TORCHINDUCTOR_CACHE_DIR names a fresh directory (what a cold figure needs).
    return {**summary, "backend": compiled.trainer.cfg.compile, "first_steps": first_steps,
            "inductor_cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
            "first_steps_seconds": round(first_seconds, 3), "compile_seconds": round(compile_seconds, 3),
            "over_baseline": ratio(compiled, baseline), "over_convnets": ratio(compiled, eager),
            "images_per_epoch": images_per_epoch, "break_even_images": break_even,
            "break_even_epochs": None if break_even is None else break_even / images_per_epoch}


# --------------------------------------------------------------------------------------------
# interleaved throughput: every side, and the views of one run


def throughput(config: TrainConfig, raw: Dataset, *, workers: int, rounds: int, steps: int, warm: int,
               ceiling: bool = True, breakdown: int = 0, compiled: str | None = None) -> dict[str, Any]:
    """Interleaved images/s of convnets, the hand-tuned loop, the plain baseline and the 3x3-convolution ceiling
    (and of the compiled Trainer, when asked).

    Args:
        config: The convnets run (model, data, seed, batch size, threads; ``out`` is set here): the
            Trainer's configuration, and the model, data and batch of the other sides.
        raw: The same data at its own size, the baseline's source of Pillow images.
        workers: DataLoader workers of the baseline.
        rounds: Rounds of chunks, the order turning around each round.
        steps: Timed steps per chunk.
        warm: Untimed steps at the start of every chunk (see :func:`interleave`).
        ceiling: Time the 3x3-convolution ceiling too (when the model has 3x3 convolutions).
        breakdown: Profile this many of the Trainer's steps after the rounds (:func:`step_breakdown`); 0: none.
        compiled: Add the Trainer compiled with this ``torch.compile`` backend as a side (its first steps,
            which compile it, timed apart; see :func:`compiled_summary`); None: none.
    """
    name = config.model
    with tempfile.TemporaryDirectory() as out, tempfile.TemporaryDirectory() as compiled_out:
        ours = TrainerSide(dataclasses.replace(config, out=out, progress=False))
        data, model = ours.trainer.dataset, ours.trainer.model
        batch_size = ours.trainer.setup.batch_size
        # The same initial weights on every side (the Trainer seeded and built them).
        tuned = tuned_loop(copy.deepcopy(model), name, data, batch_size=batch_size, seed=config.seed)
        baseline = baseline_loop(copy.deepcopy(model), name, data, raw, batch_size=batch_size, workers=workers,
                                 seed=config.seed)
        sides: list[Side] = [ours, tuned, baseline]
        layers = conv3x3_layers(model, (data.channels, *data.image_size), batch_size, tuned.autocast)
        conv_ceiling = ConvCeiling(layers, tuned.autocast or torch.float32) if ceiling and layers else None
        if conv_ceiling is not None:
            sides.append(conv_ceiling)
        if compiled is not None:
            torch._dynamo.reset()  # no compiled code from an earlier side or model in this process
            # The same seed: the same initial weights as the eager Trainer's.
            fast = TrainerSide(dataclasses.replace(config, out=compiled_out, progress=False, compile=compiled),
                               name="convnets compiled")
            first_steps = max(warm, 2)
            start = time.perf_counter()
            fast.steps(first_steps, timed=False)  # compiles the step
            first_seconds = time.perf_counter() - start
            sides.append(fast)
        interleave(sides, rounds=rounds, steps=steps, warm=warm)
        profiled = step_breakdown(ours, breakdown) if breakdown else None
    recipe = ours.trainer.cfg
    macs = convnets.count(model, input_size=(data.channels, *data.image_size)).macs
    speedup = ratio(ours, baseline)
    result = {
        "model": name,
        "data": data.name,
        "input": [data.channels, *data.image_size],
        "augment": recipe.augment,
        "optimizer": recipe.optimizer,
        "batch_size": batch_size,
        "macs_per_image": macs,
        "train_flops_per_image": 3 * 2 * macs,
        "convnets": ours.summary(),
        "tuned": {**tuned.summary(), "precision": "bf16 autocast" if tuned.autocast else
                  "fp32 (this CPU has no native bf16)", "channels_last": True},
        "baseline": baseline.summary(),
        "speedup": speedup["median"],  # per round, so both sides of a ratio saw the same load
        "speedup_total": speedup["total"],
        "speedup_range": speedup["range"],
        "convnets_over_tuned": ratio(ours, tuned),
    }
    if conv_ceiling is not None:
        result["ceiling"] = conv_ceiling.summary()
        result["convnets_over_ceiling"] = ratio(ours, conv_ceiling)
    if compiled is not None:
        result["compiled"] = compiled_summary(fast, ours, baseline, first_steps, first_seconds)
    if profiled is not None:
        result["breakdown"] = profiled
    return result


# --------------------------------------------------------------------------------------------
# glibc keeping freed memory, A/B in fresh processes

# What bench_train --malloc-arm runs: the Trainer as it is (keep_freed_memory sets glibc's thresholds), and with
# the call made a no-op (glibc's defaults). Each in a process of its own: the thresholds last a process's life.
MALLOC_ARMS = ("kept", "default")
MALLOC_ROUNDS = 3  # timed chunks of each run: a run is short, the pairs give the spread


def malloc_arm(config: TrainConfig, arm: str, *, rounds: int, steps: int, warm: int) -> dict[str, Any]:
    """One arm of :func:`malloc_compare`, in this process, which must not have built a Trainer before.

    Args:
        config: The run (``out`` is set here).
        arm: ``kept`` (the Trainer as it is) or ``default`` (its call of keep_freed_memory made a no-op).
        rounds: Timed chunks.
        steps: Steps per chunk.
        warm: Untimed steps before each chunk (and, at least 2, before the first).

    Returns:
        The arm, whether glibc keeps freed memory in this process, the images/s (median chunk) and of each
        chunk, and the minor page faults per timed step (``getrusage``).
    """
    if arm not in MALLOC_ARMS:
        raise ValueError(f"arm must be one of {MALLOC_ARMS}; got {arm!r}")
    if arm == "default":
        loop_module.keep_freed_memory = lambda: False
    faults = 0
    with tempfile.TemporaryDirectory() as out:
        side = TrainerSide(dataclasses.replace(config, out=out, progress=False))
        side.steps(max(warm, 2), timed=False)
        for _ in range(rounds):
            side.steps(warm, timed=False)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            side.steps(steps)
            faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    summary = side.summary()
    return {"arm": arm, "kept": arm == "kept" and keep_freed_memory(), "images_per_s": summary["images_per_s"],
            "per_round_images_per_s": summary["per_round_images_per_s"],
            "minor_faults_per_step": faults / (rounds * steps)}


def malloc_compare(config: TrainConfig, pairs: int, *, rounds: int, steps: int, warm: int) -> dict[str, Any]:
    """The Trainer's images/s with glibc keeping freed memory (``kept``) and with glibc's defaults, in
    alternating fresh processes (kept, default, kept, default, ...: load and clock drift fall on both).

    Args:
        config: The run (its ``out`` is not used).
        pairs: Pairs of runs.
        rounds, steps, warm: Of each run (see :func:`malloc_arm`).

    Returns:
        Each arm's runs; the per-pair ratio kept / default with its median, range and 95% t interval of the
        mean (:func:`convnets.experiments.stats.mean_interval`); each arm's median minor faults per step.

    Raises:
        RuntimeError: A run failed (its error output ends the message).
    """
    spec = json.dumps({k: v for k, v in dataclasses.asdict(config).items() if k != "out"})
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in MALLOC_ARMS}
    for _ in range(pairs):
        for arm in MALLOC_ARMS:
            command = [sys.executable, __file__, "--malloc-arm", arm, "--malloc-config", spec, "--rounds",
                       str(rounds), "--steps", str(steps), "--warm", str(warm)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"bench_train --malloc-arm {arm} failed:\n{done.stderr[-3000:]}")
            runs[arm].append(json.loads(done.stdout.splitlines()[-1]))
            print(f"{config.model} malloc {arm}: {runs[arm][-1]}", flush=True)
    ratios = [k["images_per_s"] / d["images_per_s"] for k, d in zip(runs["kept"], runs["default"], strict=True)]
    return {"model": config.model, "pairs": pairs, "rounds": rounds, "steps": steps, "warm": warm, **runs,
            "kept_over_default": {"per_pair": ratios, "median": statistics.median(ratios),
                                  "range": [min(ratios), max(ratios)], "mean": mean_interval(ratios).to_dict()},
            "minor_faults_per_step": {arm: statistics.median(r["minor_faults_per_step"] for r in runs[arm])
                                      for arm in MALLOC_ARMS}}


# --------------------------------------------------------------------------------------------
# time to accuracy


def time_to_accuracy(name: str, goal: float, out: Path, epochs: int | None, seed: int) -> dict[str, Any]:
    """Train ``name`` with its recipe (``epochs`` replaced when given) and find when ``goal`` was first reached.

    The loop records each epoch's training seconds (``seconds`` in metrics.jsonl, measured
    before the evaluation), so the cumulative sum is training time without evaluation. The
    figure "with eval" adds the run's remaining wall time (evaluation, checkpoints, weights)
    spread evenly over its epochs. Both are read at epoch ends: the goal may have been passed
    earlier within the epoch.
    """
    recipe = resolve(TrainConfig(model=name))
    overrides: dict[str, Any] = {}
    if epochs is not None and epochs != recipe.epochs:
        # A shorter run keeps the recipe's shape: the same warm-up fraction, the schedule ending at the run's end.
        overrides = dict(epochs=epochs, warmup_epochs=recipe.warmup_epochs * epochs / recipe.epochs)
    cfg = TrainConfig(model=name, out=str(out), progress=False, device="cpu", precision="fp32", seed=seed, **overrides)
    start = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train_seconds = sum(r["seconds"] for r in rows)
    overhead = (result.seconds - train_seconds) / max(len(rows), 1)
    reached = None
    cumulative = 0.0
    for r in rows:
        cumulative += r["seconds"]
        if r["test_acc"] >= goal:
            reached = {"epoch": r["epoch"], "train_seconds": round(cumulative, 1),
                       "seconds_with_eval": round(cumulative + overhead * r["epoch"], 1), "test_acc": r["test_acc"]}
            break
    return {
        "model": name,
        "goal": goal,
        "epochs": len(rows),
        "recipe_epochs": recipe.epochs,
        "overrides": overrides,
        "reached": reached,
        "final_test_acc": result.test_accuracy,
        "best_test_acc": result.best_accuracy,
        "run_seconds": round(result.seconds, 1),
        "wall_seconds_incl_setup": round(wall, 1),
        "train_seconds": round(train_seconds, 1),
        "train_images_per_s": round(sum(r["images_per_s"] * r["seconds"] for r in rows) / max(train_seconds, 1e-9)),
        "per_epoch": [{k: r[k] for k in ("epoch", "test_acc", "seconds", "images_per_s")} for r in rows],
    }


def compile_end_to_end(name: str, epochs: int, seed: int, runs: Path, per_class: int | None, *,
                       data: str = "fashion-mnist", backend: str = "inductor", workers: int = 1,
                       baseline_rounds: int = 4, steps: int = 8, warm: int = 4) -> dict[str, Any]:
    """Wall time of ``train()`` plain and with ``compile=backend``, everything included (see the docstring), and
    the images/s of each beside the plain baseline loop's, measured in this process before and after them.

    Args:
        name: The model.
        epochs: Of each run.
        seed: Of the runs and of the baseline's weights and order.
        runs: Where the run directories go.
        per_class: Train and test on this many images per class (None: all).
        data: The dataset.
        backend: The ``torch.compile`` backend (``eager`` compiles nothing: the tests' quick stand-in).
        workers: DataLoader workers of the baseline.
        baseline_rounds: Chunks of the baseline, half before the runs and half after.
        steps, warm: Timed and untimed steps per baseline chunk.
    """
    raw = load_dataset(data)
    size = CASES[name]["size"] if data == "fashion-mnist" else None
    at_size = raw if size is None or (size, size) == raw.image_size else load_dataset(data, image_size=size)
    torch.manual_seed(seed)
    model = convnets.create_model(name, num_classes=raw.num_classes, in_chans=raw.channels)
    baseline = baseline_loop(model, name, at_size, raw, batch_size=128, workers=workers, seed=seed)
    baseline.steps(max(warm, 2), timed=False)
    before = (baseline_rounds + 1) // 2

    def baseline_chunks(count: int) -> None:
        for _ in range(count):
            baseline.steps(warm, timed=False)
            baseline.steps(steps)

    baseline_chunks(before)
    sides: dict[str, Any] = {}
    for side, compiled in (("plain", None), ("compiled", backend)):
        cfg = TrainConfig(model=name, data=data, epochs=epochs, out=str(runs / f"{name}-{side}-{int(time.time())}"),
                          progress=False, seed=seed, compile=compiled, train_per_class=per_class,
                          test_per_class=per_class)
        torch._dynamo.reset()  # no compiled code from an earlier run in this process
        start = time.perf_counter()
        result = train(cfg)
        wall = time.perf_counter() - start
        rows = [json.loads(line) for line in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
        train_seconds = sum(r["seconds"] for r in rows)
        images = round(result.images_per_second * result.seconds)  # steps x batch, over every epoch
        sides[side] = {"wall_seconds": round(wall, 3), "train_seconds": round(train_seconds, 3),
                       "images": images, "images_per_s_wall": round(images / wall, 1),
                       "images_per_s_train": round(images / train_seconds, 1),
                       "images_per_s_first_epoch": rows[0]["images_per_s"], "test_acc": result.test_accuracy,
                       "precision": result.precision}
        print(f"{name} {side}: {sides[side]}", flush=True)
    baseline_chunks(baseline_rounds - before)
    base = baseline.summary()
    plain, compiled_run = sides["plain"], sides["compiled"]
    return {"model": name, "data": data, "epochs": epochs, "per_class": per_class, "backend": backend, **sides,
            "baseline": base,
            "plain_over_compiled_wall": round(plain["wall_seconds"] / compiled_run["wall_seconds"], 3),
            "plain_over_compiled_train": round(plain["train_seconds"] / compiled_run["train_seconds"], 3),
            # The goal: compiled, the whole call (compilation included), against the plain loop's steps alone.
            "compiled_over_baseline_wall": round(compiled_run["images_per_s_wall"] / base["images_per_s"], 3),
            "compiled_over_baseline_train": round(compiled_run["images_per_s_train"] / base["images_per_s"], 3),
            "plain_over_baseline_wall": round(plain["images_per_s_wall"] / base["images_per_s"], 3)}


def cpu_flags() -> list[str]:
    """The bf16 instructions this CPU has, as ``lscpu | grep -o 'avx512_bf16\\|amx_bf16'`` lists them."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return []
    return sorted({f for f in flags if f in ("avx512_bf16", "amx_bf16")})


# --------------------------------------------------------------------------------------------
# report


def markdown(results: dict[str, Any]) -> str:
    """The results as markdown tables."""
    if "matmul" not in results:  # --compile-only
        return _compile_markdown(results, [])
    peak = results["matmul"]["gflops"]
    lines = [
        f"matmul peak (fp32 torch.mm, {results['matmul']['threads']} threads): {peak:.1f} GFLOP/s "
        f"(per size: {results['matmul']['per_size']})",
        "",
        f"| model | side | images/s (median round) | data wait | GFLOP/s (3x fwd) | % of {peak:.0f} GFLOP/s "
        "| convnets / this side: median round (range; totals) |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for t in results["throughput"]:
        ratios = {"baseline": {"median": t["speedup"], "range": t["speedup_range"], "total": t["speedup_total"]},
                  "tuned": t.get("convnets_over_tuned"), "ceiling": t.get("convnets_over_ceiling")}
        for side in ("convnets", "tuned", "baseline", "ceiling"):
            if side not in t:
                continue
            s = t[side]
            label = f"{side} ({s['precision']})" if "precision" in s else side
            # The ceiling's steps are 3x3 convolutions alone: the whole network's FLOPs do not apply.
            gflops = t["train_flops_per_image"] * s["images_per_s"] / 1e9 if side != "ceiling" else None
            flops = f"{gflops:.2f} | {100 * gflops / peak:.1f}%" if gflops is not None else "- | -"
            r = ratios.get(side)
            vs = f"**{r['median']:.2f}x** ({r['range'][0]:.2f}-{r['range'][1]:.2f}x; totals {r['total']:.2f}x)" \
                if r else ""
            lines.append(f"| {t['model']} | {label} | {s['images_per_s']:,.0f} | {s['data_wait_fraction']:.0%} | "
                         f"{flops} | {vs} |")
    for t in results["throughput"]:
        goal = t["model"] == "resnet20"  # issue 13's goals are resnet20's
        goals = [f"convnets / hand-tuned {t['convnets_over_tuned']['median']:.2f}x"
                 + (" (goal >= 1.0)" if goal else "")]
        if "convnets_over_ceiling" in t:
            goals.append(f"convnets / 3x3-convolution ceiling {t['convnets_over_ceiling']['median']:.2f}x"
                         + (" (goal >= 0.60)" if goal else ""))
        lines += ["", f"{t['model']}: " + "; ".join(goals)]
        lines += _compiled_side_lines(t) + _breakdown_lines(t)
    lines += _malloc_lines(results.get("malloc", []))
    if results.get("accuracy"):
        lines += ["", "| model | goal | reached at (train s / with eval) | epoch | epochs run | final acc | "
                      "train images/s |", "|---|---:|---|---:|---:|---:|---:|"]
        for a in results["accuracy"]:
            hit = a["reached"]
            at = f"{hit['train_seconds']:.1f} s / {hit['seconds_with_eval']:.1f} s" if hit else "not reached"
            lines.append(f"| {a['model']} | {a['goal']} | {at} | {hit['epoch'] if hit else '-'} | "
                         f"{a['epochs']} of {a['recipe_epochs']} | {a['final_test_acc']:.4f} | "
                         f"{a['train_images_per_s']:,} |")
    return _compile_markdown(results, lines)


def _compiled_side_lines(t: dict[str, Any]) -> list[str]:
    if "compiled" not in t:
        return []
    c = t["compiled"]
    base, eager = c["over_baseline"], c["over_convnets"]
    if c["break_even_images"] is None:
        pays = "never pays for itself against the eager Trainer (not faster in steady state)"
    else:
        pays = (f"pays for itself after {c['break_even_images']:,.0f} training images "
                f"({c['break_even_epochs']:.2f} epochs of {c['images_per_epoch']:,})")
    return ["", f"{t['model']} compiled ({c['backend']}), steady state: {c['images_per_s']:,.0f} images/s; "
                f"compiled / baseline **{base['median']:.2f}x** ({base['range'][0]:.2f}-{base['range'][1]:.2f}x), "
                f"compiled / convnets eager **{eager['median']:.2f}x** "
                f"({eager['range'][0]:.2f}-{eager['range'][1]:.2f}x); compiling took {c['compile_seconds']:.1f} s "
                f"(first {c['first_steps']} steps {c['first_steps_seconds']:.1f} s) and {pays}"]


def _breakdown_lines(t: dict[str, Any]) -> list[str]:
    if "breakdown" not in t:
        return []
    b = t["breakdown"]
    lines = ["", f"{t['model']}, where convnets' step goes ({b['steps']} steps under torch.profiler, self CPU time: "
                 f"{b['op_ms_per_step']:.1f} ms per step in operators, {b['wall_ms_per_step']:.1f} ms wall):", "",
             "| part of the step | ms per step | share |", "|---|---:|---:|"]
    lines += [f"| {c['category']} | {c['ms_per_step']:.2f} | {c['share']:.1%} |" for c in b["categories"]]
    return lines


def _malloc_lines(compared: list[dict[str, Any]]) -> list[str]:
    lines = []
    for m in compared:
        r, faults = m["kept_over_default"], m["minor_faults_per_step"]
        mean = r["mean"]
        interval = f"mean {mean['mean']:.3f}x" + (f", 95% [{mean['low']:.3f}, {mean['high']:.3f}]"
                                                   if mean["n"] > 1 else "")
        pairs = f"{m['pairs']} pair{'s' if m['pairs'] != 1 else ''}"
        lines += ["", f"{m['model']}, glibc keeping freed memory ({pairs} of fresh processes, "
                      f"{m['rounds']} x {m['steps']} steps each):", "",
                  "| arm | images/s (median chunk) per run | minor faults per step (median run) |", "|---|---|---:|"]
        for arm in MALLOC_ARMS:
            rates = ", ".join(f"{run['images_per_s']:,.0f}" for run in m[arm])
            lines.append(f"| {arm} | {rates} | {faults[arm]:,.0f} |")
        lines += ["", f"kept / default per pair: **{r['median']:.3f}x** median ({r['range'][0]:.3f}-"
                      f"{r['range'][1]:.3f}x; {interval})"]
    return lines


def _compile_markdown(results: dict[str, Any], lines: list[str]) -> str:
    if results.get("compile"):
        c = results["compile"]
        size = f", {c['per_class']} images per class" if c["per_class"] else ""
        base = c["baseline"]["images_per_s"]
        lines += ["", f"--compile end to end ({c['model']}, {c['epochs']} epoch{size}, defaults; whole train() call):",
                  f"plain {c['plain']['wall_seconds']} s, compiled {c['compiled']['wall_seconds']} s: "
                  f"plain/compiled **{c['plain_over_compiled_wall']}x** (training alone "
                  f"{c['plain_over_compiled_train']}x)",
                  f"images/s over the whole call: compiled {c['compiled']['images_per_s_wall']:,.0f}, plain "
                  f"{c['plain']['images_per_s_wall']:,.0f}; the plain baseline loop {base:,.0f} (median chunk): "
                  f"compiled / baseline **{c['compiled_over_baseline_wall']}x** (goal >= 2.5; training epochs "
                  f"alone {c['compiled_over_baseline_train']}x), plain / baseline {c['plain_over_baseline_wall']}x"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(CASES),
                        help="default: both (resnet20 alone with --tuned-only)")
    parser.add_argument("--batch-size", type=int, default=128, help="every side (the recipes' batch)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="baseline DataLoader workers (default: the CPU count)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, the core count)")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds per model")
    parser.add_argument("--steps", type=int, help="timed steps per chunk (default: 40 lenet5, 8 resnet20)")
    parser.add_argument("--warm", type=int, default=4, help="untimed steps before each chunk")
    parser.add_argument("--skip-accuracy", action="store_true", help="throughput and matmul only")
    parser.add_argument("--resnet-epochs", type=int, default=1,
                        help="resnet20 time-to-accuracy run length, schedule compressed to it (default 1)")
    parser.add_argument("--full", action="store_true", help="resnet20's whole recipe (hours on 2 cores)")
    parser.add_argument("--runs", help="keep the training runs here (default: a temporary directory)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the results as JSON here")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--tuned-only", action="store_true",
                      help="only 1. and 2.: convnets, the hand-tuned loop, the baseline and the 3x3-convolution "
                           "ceiling")
    only.add_argument("--compile-only", action="store_true", help="only 4., --compile end to end")
    parser.add_argument("--skip-compile", action="store_true", help="leave out 4.")
    parser.add_argument("--compile-epochs", type=int, default=1, help="epochs of each --compile run (default 1)")
    parser.add_argument("--compile-per-class", type=int,
                        help="train and test the --compile runs on this many images per class (default: all)")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend of 4. and of --compiled-side (default inductor, what --compile "
                             "means)")
    parser.add_argument("--breakdown", action="store_true",
                        help="in 2., profile --steps of convnets' steps after the rounds: where a step's time goes")
    parser.add_argument("--compiled-side", action="store_true",
                        help="in 2., the Trainer compiled (--compile-backend) as one more side: its steady state, "
                             "its compile seconds and when compiling pays for itself")
    parser.add_argument("--malloc-compare", type=number(int, 1), metavar="PAIRS",
                        help="after 2., the Trainer with and without glibc keeping freed memory, in PAIRS pairs of "
                             "fresh processes (3 chunks of --steps, default 16, each)")
    # One arm of --malloc-compare, run in a process of its own by the benchmark itself.
    parser.add_argument("--malloc-arm", choices=MALLOC_ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--malloc-config", type=json.loads, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.malloc_arm:
        config = TrainConfig(**args.malloc_config)
        print(json.dumps(malloc_arm(config, args.malloc_arm, rounds=args.rounds, steps=args.steps or 16,
                                    warm=args.warm)))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)

    results: dict[str, Any] = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "load_average_before": round(os.getloadavg()[0], 2),
            "cpu_flags": cpu_flags(),
        },
        "command": "python benchmarks/bench_train.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    print(f"{results['machine']}", flush=True)

    def compile_section() -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as tmp:
            return compile_end_to_end("resnet20", args.compile_epochs, args.seed, Path(args.runs or tmp),
                                      args.compile_per_class, backend=args.compile_backend, workers=args.workers,
                                      baseline_rounds=args.rounds, steps=args.steps or 8, warm=args.warm)

    if args.compile_only:
        results["compile"] = compile_section()
        results["machine"]["load_average_after"] = round(os.getloadavg()[0], 2)
        return _finish(results, args.out)
    # The peak at the thread count the training uses is the scale; the other count is printed for context.
    threads = torch.get_num_threads()
    for n in sorted({1, os.cpu_count() or 1} - {threads}) + [threads]:
        torch.set_num_threads(n)
        peak = matmul_peak()
        print(f"matmul peak, {n} threads: {peak}", flush=True)
        results.setdefault("matmul_by_threads", {})[n] = peak
    results["matmul"] = peak

    models = args.models or (["resnet20"] if args.tuned_only else list(CASES))
    raw = load_dataset("fashion-mnist")
    results["throughput"] = []
    for name in models:
        config = TrainConfig(model=name, device="cpu", seed=args.seed, batch_size=args.batch_size,
                             threads=args.threads)
        steps = args.steps or (40 if name == "lenet5" else 8)
        t = throughput(config, raw, workers=args.workers, rounds=args.rounds, steps=steps, warm=args.warm,
                       breakdown=steps if args.breakdown else 0,
                       compiled=args.compile_backend if args.compiled_side else None)
        results["throughput"].append(t)
        print(f"{name}: " + ", ".join(f"{side} {t[side]['per_round_images_per_s']} img/s" for side in
                                      ("convnets", "tuned", "baseline", "ceiling", "compiled") if side in t),
              flush=True)
        if args.malloc_compare:
            results.setdefault("malloc", []).append(
                malloc_compare(config, args.malloc_compare, rounds=MALLOC_ROUNDS, steps=args.steps or 16,
                               warm=args.warm))

    results["accuracy"] = []
    if not args.skip_accuracy and not args.tuned_only:
        with tempfile.TemporaryDirectory() as tmp:
            runs = Path(args.runs or tmp)
            for name in models:
                epochs = None if name != "resnet20" or args.full else args.resnet_epochs
                out = runs / f"{name}-{int(time.time())}"
                a = time_to_accuracy(name, CASES[name]["goal"], out, epochs, args.seed)
                results["accuracy"].append(a)
                print(f"{name}: {a}", flush=True)
        if not args.skip_compile:
            results["compile"] = compile_section()
    results["machine"]["load_average_after"] = round(os.getloadavg()[0], 2)
    return _finish(results, args.out)


def _finish(results: dict[str, Any], out: str | None) -> int:
    print()
    print(markdown(results))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=2, default=float) + "\n")
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
