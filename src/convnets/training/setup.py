"""What a run trains with, built in one place and in one order: data, model, loaders, optimizer, schedule.

:func:`build` returns a :class:`Setup`. The order is fixed by what each part needs: pretrained
weights decide the preprocessing, which decides how the data is read; the data decides the
model's classes and channels; freezing decides which parameters the optimizer gets and whether
the loaders give images or cached features; the loaders decide the steps the schedule spans.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import convnets
from convnets.data.core import Dataset
from convnets.data.datasets import load_dataset, subsample_per_class
from convnets.data.loader import make_loader
from convnets.data.preprocess import Preprocessing
from convnets.errors import ConfigMismatchError
from convnets.layers import DepthwiseConv2d
from convnets.models.base import ConvNet
from convnets.training import distributed
from convnets.training.checkpoint import data_identity
from convnets.training.config import ModelSource, TrainConfig, check_input_size, smallest_batch
from convnets.training.optim import make_optimizer
from convnets.training.schedules import lr_factor
from convnets.transfer import FeatureLoader, cached_features, freeze, recommend, split_fingerprint
from convnets.weights import get_weights, is_tag, load_pretrained, weights_preprocessing

Say = Callable[[str], None]


@dataclass
class Setup:
    """Everything a run trains with (see :func:`build`).

    The network has three faces, each with one use: ``model`` is the :class:`ConvNet` whose weights
    the run saves and resumes; ``train_net`` is what a training step calls (``model`` behind
    :class:`TrainingOutputs`, wrapped by DistributedDataParallel and ``torch.compile`` when asked; on
    cached features, the classifier alone); ``eval_net`` is what evaluation calls (``model``, or its
    classifier on cached features).
    """

    dataset: Dataset
    data_identity: dict[str, Any]
    model_kwargs: dict[str, Any]
    model: ConvNet
    frozen: list[str]
    cached: bool
    channels_last: bool
    train_net: nn.Module
    eval_net: nn.Module
    batch_size: int
    min_batch: int
    train_loader: Any  # BatchLoader or FeatureLoader: set_epoch, position, bad_files, len, iteration
    test_loader: Any
    optimizer_steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    autocast_dtype: torch.dtype | None
    precision: str
    ema: WeightAverage | None
    recipe: Preprocessing | None = None  # pretrained weights' resize, crop and filter (None: fit and crop)


class TrainingOutputs(nn.Module):
    """What a training step calls: ``(logits, auxiliary logits)`` of :meth:`ConvNet.forward_train`, or of a
    classifier alone on cached features (then no auxiliary logits). DistributedDataParallel and
    ``torch.compile`` wrap this module, so that the auxiliary branches run inside them."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if isinstance(self.net, ConvNet):
            return self.net.forward_train(x)
        return self.net(x), []


class WeightAverage:
    """An exponential moving average of a network's weights: after optimizer step ``n`` (from 0),
    ``average += (1 - d) * (weights - average)`` with ``d = min(decay, (1 + n) / (10 + n))`` for every
    parameter and floating-point buffer (BatchNorm's running statistics included, as timm's
    ``ModelEmaV3``); integer buffers (BatchNorm's batch count) are copied.

    The warm-up ``(1 + n) / (10 + n)`` is TensorFlow's ``ExponentialMovingAverage(num_updates=n)`` formula
    (the formula, not identical numbers: in TensorFlow's usual use the first update already sees n = 1): the
    average starts from the initial weights, and without it a decay of 0.999 keeps about
    ``0.999 ** n`` of them after ``n`` steps (2% after 3,750, a short run's length), so that it
    scores near chance; with it the first step keeps 10%, and the cap ``decay`` holds from step
    ``n = (10 * decay - 1) / (1 - decay)`` on (8,990 for 0.999). The step count is the run's, restored
    from a checkpoint, so a resumed run averages as an unbroken one. (Keras 3's ``use_ema`` and timm's
    ``ModelEmaV3`` by default copy the weights at the first step and then keep ``decay``, which leaves a
    short run's average mostly that step's weights; timm's optional warm-up is ``1 - (1 + n) ** -power``.)

    Kept as a second copy of the network, so that it evaluates as one and its ``state_dict`` has the
    network's keys (it is saved as weights and restored from a checkpoint as they are). An in-place
    lerp rather than ``torch.optim.swa_utils.AveragedModel``: that one nests the network under
    ``module.`` and adds an ``n_averaged`` counter, which the weights file would have to strip.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._pairs = self._tensor_pairs(model)

    def _tensor_pairs(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor],
                                                       list[torch.Tensor]]:
        averaged = dict(self.model.state_dict(keep_vars=True))
        source = dict(model.state_dict(keep_vars=True))
        floats = [k for k, v in averaged.items() if v.is_floating_point()]
        others = [k for k in averaged if k not in floats]
        return ([averaged[k].data for k in floats], [source[k].data for k in floats],
                [averaged[k].data for k in others], [source[k].data for k in others])

    def decay_at(self, step: int) -> float:
        """The decay of the update after optimizer step ``step`` (0 for the first): the warm-up, capped."""
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Move the average towards the network's current weights after optimizer step ``step`` (0 for
        the first; no host-device synchronisation)."""
        average, current, counts, current_counts = self._pairs
        if average:
            torch._foreach_lerp_(average, current, 1.0 - self.decay_at(step))
        for a, b in zip(counts, current_counts, strict=True):
            a.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)


def build(cfg: TrainConfig, ctx: distributed.Context, source: ModelSource, say: Say) -> Setup:
    """The data, model, loaders, optimizer and schedule of the run ``cfg`` (already resolved)."""
    # Pretrained weights fix the preprocessing: input size, channels and normalisation.
    preprocessing = weights_preprocessing(cfg.weights, cfg.model, cfg.weights_layout) if cfg.weights else None
    # Saved with the weights: the options pretrained weights need (a Keras file's tf_same) rebuild the same network.
    model_kwargs = {**(preprocessing or {}).get("model_kwargs", {}), **cfg.model_kwargs}
    probe = source.probe(model_kwargs)
    recipe = (preprocessing or {}).get("preprocessing")  # the weights' resize, crop and filter
    recipe = recipe.at_size(cfg.image_size) if recipe and cfg.image_size else recipe
    dataset = _data(cfg, probe, preprocessing, recipe, say)
    model, frozen = _model(cfg, source, model_kwargs, dataset, preprocessing, say)
    model.to(ctx.device)
    cached = cfg.cache_features
    # NHWC is the layout cuDNN's and oneDNN's convolution kernels prefer (about 1.2x on a CPU).
    channels_last = (cfg.channels_last if cfg.channels_last is not None else True) and not cached
    if channels_last:
        model.to(memory_format=torch.channels_last)

    loader_kw = dict(device=ctx.device, seed=cfg.seed, num_workers=cfg.num_workers)
    if cached:
        train_loader, test_loader, batch_size = _cached_feature_loaders(cfg, ctx, source, model, frozen, dataset,
                                                                       recipe, loader_kw, say)
        min_batch = 1  # only the classifier trains, on whole feature batches
        trained: nn.Module = model.classifier()
    else:
        batch_size = _batch_for(cfg, ctx, len(dataset.train), say)
        # Checked on the model as it will train (frozen parts stay in evaluation mode); a batch that
        # broken files leave below the smallest is skipped in the loop.
        min_batch = smallest_batch(cfg.model, probe, batch_size, dataset.image_size, frozen=frozen,
                                   few_images=batch_size < cfg.batch_size)
        train_loader = make_loader(dataset, "train", batch_size=batch_size, augment=cfg.augment, rank=ctx.rank,
                                   world_size=ctx.world_size, drop_last=True, **loader_kw)
        test_loader = make_loader(dataset, "test", batch_size=max(256, cfg.batch_size), **loader_kw)
        trained = model
    train_net: nn.Module = TrainingOutputs(trained)
    if ctx.distributed:
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        train_net = nn.parallel.DistributedDataParallel(train_net, device_ids=ids)
    if cfg.compile is not None:
        # The compiled module shares the model's parameters: weights and checkpoints are saved from the model,
        # so they never carry torch.compile's _orig_mod. prefix.
        train_net = torch.compile(train_net, backend=cfg.compile)

    # Micro-batches beyond the last whole accumulation window of an epoch are left out, as a batch of
    # batch_size * accumulate would leave them out (drop_last): the effective batch is always the same.
    optimizer_steps = len(train_loader) // cfg.accumulate
    if optimizer_steps == 0:
        raise ConfigMismatchError(f"--accumulate {cfg.accumulate}: an epoch has only {len(train_loader)} batches of "
                                  f"{batch_size}, not one optimizer step: accumulate fewer")
    optimizer = make_optimizer(cfg, model)
    schedule = lr_factor(cfg.schedule, int(cfg.warmup_epochs * optimizer_steps), cfg.epochs * optimizer_steps)
    dtype = autocast_dtype(cfg.precision, ctx.device)
    return Setup(
        dataset=dataset, data_identity=data_identity(dataset), model_kwargs=model_kwargs, model=model,
        frozen=frozen, cached=cached, channels_last=channels_last, train_net=train_net,
        eval_net=trained, batch_size=batch_size, min_batch=min_batch, train_loader=train_loader,
        test_loader=test_loader, optimizer_steps_per_epoch=optimizer_steps, optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
        scaler=torch.amp.GradScaler(ctx.device.type, enabled=dtype == torch.float16),
        autocast_dtype=dtype, precision=describe_precision(dtype, ctx.device, model),
        ema=WeightAverage(model, cfg.ema) if cfg.ema else None, recipe=recipe,
    )


def _data(cfg: TrainConfig, probe: ConvNet, preprocessing: dict[str, Any] | None, recipe: Preprocessing | None,
          say: Say) -> Dataset:
    """The dataset at the size and with the statistics the model and its weights take, checked against the model."""
    image_size, channels = cfg.image_size, None
    if preprocessing:
        channels = preprocessing["input_size"][0]
        image_size = image_size or preprocessing["input_size"][1]
    if image_size is not None:  # checked before the data is read; sizes the data decides, after
        where = f"--image-size {image_size} gives" if cfg.image_size else "the weights' input size is"
        check_input_size(cfg.model, probe, (image_size, image_size), where)
    elif probe.fixed_input_size:
        image_size = probe.fixed_input_size[0]
    dataset = load_dataset(cfg.data, data_dir=cfg.data_dir, image_size=image_size, channels=channels,
                           num_workers=cfg.num_workers, preprocessing=recipe)
    if preprocessing and preprocessing["mean"] is not None:  # None: the data's own statistics
        dataset = dataclasses.replace(dataset, mean=tuple(preprocessing["mean"]), std=tuple(preprocessing["std"]))
    if cfg.train_per_class:
        dataset = subsample_per_class(dataset, cfg.train_per_class, cfg.seed)
    if cfg.test_per_class:
        dataset = subsample_per_class(dataset, cfg.test_per_class, seed=0, split="test")
    if len(dataset.test) == 0:
        say(f"warning: {dataset.name} has no test images: test loss and accuracy are not measured (nan)")
    check_input_size(cfg.model, probe, dataset.image_size, f"{dataset.name} gives")
    return dataset


def _model(cfg: TrainConfig, source: ModelSource, model_kwargs: dict[str, Any], dataset: Dataset,
           preprocessing: dict[str, Any] | None, say: Say) -> tuple[ConvNet, list[str]]:
    """The network for the data, with its pretrained weights (on a new run) and its frozen parts."""
    model = source.build(dataset.num_classes, dataset.channels, model_kwargs)
    if cfg.weights and not cfg.resume:
        load_pretrained(model, cfg.weights, layout=cfg.weights_layout)
        trained_on = preprocessing.get("classes")
        if trained_on and list(trained_on) != list(dataset.classes) and len(trained_on) == dataset.num_classes:
            # Same number of classes, other classes: the old classifier would only mislead.
            model.reset_classifier(dataset.num_classes)
            say(f"new classifier for the classes of {dataset.name} (the weights' predicted "
                f"{', '.join(map(str, trained_on[:3]))}, ...)")
    if not cfg.freeze:
        return model, []
    spec = cfg.freeze
    if spec == "auto":
        spec, reason = recommend(len(dataset.train) / dataset.num_classes, len(model.stage_info))
        say(f"--freeze auto: {reason} (--freeze {spec})")
    paths = freeze(model, spec)
    if paths:
        frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        say(f"frozen: {', '.join(paths)} ({frozen:,} parameters)")
    return model, paths


def _batch_for(cfg: TrainConfig, ctx: distributed.Context, images: int, say: Say) -> int:
    batch = fit_batch(cfg.batch_size, images, ctx.world_size)
    if batch < cfg.batch_size:
        where = " per process" if ctx.distributed else ""
        say(f"batch size {cfg.batch_size} is more than the {batch} training images{where}: training on batches of "
            f"{batch}")
    return batch


def _cached_feature_loaders(cfg: TrainConfig, ctx: distributed.Context, source: ModelSource, model: ConvNet,
                            frozen: list[str], ds: Dataset, recipe: Preprocessing | None, loader_kw: dict[str, Any],
                            say: Say
                            ) -> tuple[FeatureLoader, FeatureLoader, int]:
    """Run the frozen trunk once per split; the classifier then trains on the stored features."""
    if frozen != ["stem", "stages"]:
        raise ConfigMismatchError("--cache-features needs everything but the classifier frozen: "
                                  "add --freeze all-but-head")
    if ctx.distributed:
        raise ConfigMismatchError("--cache-features trains the head in one process: run it without torchrun")
    classifier = set(map(id, model.classifier().parameters()))
    for p in model.head.parameters():  # the head's layers before the classifier are part of the cached trunk
        if id(p) not in classifier:
            p.requires_grad_(False)
    loaders = {split: make_loader(ds, split, batch_size=256, augment=None, shuffle=False, **loader_kw)
               for split in ("train", "test")}
    # Keyed by what the features depend on: the trunk and its weights, and what each split holds
    # (every image and label, see split_fingerprint), decoded by this version of convnets.
    weights = _weights_identity(cfg.model, cfg.weights) if source.registered else _state_hash(model)
    key = dict(model=cfg.model, model_kwargs=cfg.model_kwargs, weights=weights,
               layer="pre_logits", data=ds.name, source=ds.source, classes=ds.classes,
               train=split_fingerprint(ds.train), test=split_fingerprint(ds.test),
               image=[ds.channels, *ds.image_size], mean=ds.mean, std=ds.std, transform="none",
               convnets=convnets.__version__)
    if recipe:  # only then: the keys of runs without a published recipe stay what they were
        key["preprocessing"] = recipe.to_dict()
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else Path.home() / ".cache" / "convnets" / "features"
    t0 = time.perf_counter()
    features, path, hit = cached_features(model, loaders, ctx.device, cache_dir, key, say=say)
    say(f"features {'read from' if hit else 'computed once and cached in'} {path} "
        f"({time.perf_counter() - t0:.1f} s)")
    (train_x, train_y), (test_x, test_y) = features["train"], features["test"]
    batch_size = _batch_for(cfg, ctx, len(train_y), say)
    train_loader = FeatureLoader(train_x, train_y, batch_size=batch_size, device=ctx.device, shuffle=True,
                                 seed=cfg.seed, drop_last=True)
    test_loader = FeatureLoader(test_x, test_y, batch_size=256, device=ctx.device, shuffle=False)
    return train_loader, test_loader, batch_size


def fit_batch(batch_size: int, images: int, world_size: int = 1) -> int:
    """The batch size for ``images`` training images over ``world_size`` processes: ``batch_size``, or the
    whole training set (per process) when that is smaller.

    Training drops the last incomplete batch of an epoch (and, distributed, the uneven tail), so a
    training set smaller than one batch would make no batch at all; like Keras and timm, the batch
    shrinks to the data instead.

    Raises:
        ConfigMismatchError: fewer images than processes.
    """
    per_process = images // world_size
    if per_process == 0:
        raise ConfigMismatchError(f"{images} training images cannot give each of {world_size} processes one: "
                                  "use more data or fewer processes")
    return min(batch_size, per_process)


def _weights_identity(model: str, weights: str | None) -> str | None:
    """What identifies weights in a cache key: a registered tag's sha256, or a file's path, size and time."""
    if weights and is_tag(weights):
        return get_weights(model, weights).sha256
    if weights and Path(weights).is_file():
        stat = Path(weights).stat()
        return f"{Path(weights).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return weights


def _state_hash(model: nn.Module) -> str:
    """A hash of every tensor of a network given as a module: its weights identify it, not its name."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a ``--precision`` on a device (None: plain fp32)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    # auto: bf16 autocast where the hardware computes bf16 natively (recent GPUs; CPUs with
    # AVX512-BF16 or AMX, where oneDNN's bf16 convolutions run about twice as fast as fp32);
    # fp32 elsewhere, where bf16 would be emulated and slower.
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_native_bf16() else None


def describe_precision(dtype: torch.dtype | None, device: torch.device, model: nn.Module) -> str:
    """What a run computes in, in words: ``fp32``, ``bf16 autocast``, ``fp16 autocast with loss scaling``,
    with a note where the model's depthwise convolutions stay in fp32 (on the CPU, see :class:`DepthwiseConv2d`)."""
    if dtype is None:
        return "fp32"
    text = {torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast with loss scaling"}[dtype]
    if device.type == "cpu" and any(isinstance(m, DepthwiseConv2d) and m.fp32_under_autocast
                                    for m in model.modules()):
        text += " (depthwise convolutions in fp32: faster on this CPU)"
    return text


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 instructions (torch exposes the check only privately, hence the guard)."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def make_deterministic() -> None:
    import os

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=False)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
