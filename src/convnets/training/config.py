"""The one configuration of a training run, its per-model defaults, and config files."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convnets.errors import ConfigError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "onecycle", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUGMENT_PRESETS = ("none", "light", "standard", "heavy")


@dataclass
class TrainConfig:
    """Everything a run depends on. ``None`` fields take the model's recipe (see :data:`RECIPES`).

    Attributes:
        model: registered model name.
        data: dataset name or folder (``fashion-mnist``, ``digits``, ``./my_images``...).
        data_dir: where named datasets are looked up.
        out: run directory (default ``runs/<model>-<data>``).
        epochs: passes over the training set.
        batch_size: images per step and per process.
        lr: peak learning rate.
        optimizer: ``sgd`` (with momentum, Nesterov off) or ``adamw``.
        momentum: SGD momentum.
        weight_decay: L2 penalty on conv and linear weights (biases and norm layers are exempt).
        schedule: ``cosine``, ``step`` (x0.1 at 50% and 75%), ``onecycle`` or ``constant``.
        warmup_epochs: linear warm-up from lr/10 (fractions allowed).
        label_smoothing: cross-entropy label smoothing.
        grad_clip: clip the gradient norm to this value (None: no clipping).
        augment: augmentation preset: none, light, standard, heavy.
        precision: ``auto`` (bf16 autocast where the GPU or CPU computes bf16 natively, else
            fp32), ``fp32``, ``bf16`` or ``fp16`` (with loss scaling).
        channels_last: NHWC memory layout (default on: the conv kernels prefer it).
        image_size: resize/pad the images to this side (default: the data's own, or the
            model's fixed size such as LeNet-5's 32).
        model_kwargs: extra builder arguments (``{"small_input": true}``).
        seed: seeds initialisation, data order and augmentation.
        deterministic: deterministic kernels (slower; see the README for its limits).
        resume: continue the run in ``out`` from its last checkpoint.
        nan_policy: ``stop`` (default) or ``skip`` a step whose loss is NaN or infinite.
        checkpoint_minutes: also checkpoint mid-epoch this often.
        max_steps: stop (with a checkpoint) after this many optimizer steps in total.
        num_workers: decoding processes for image folders.
        device: ``cpu``, ``cuda``, ``cuda:1``... (default: CUDA when present).
        progress: show a progress bar.
        weights: pretrained weights to start from: a registered tag (``fashion-mnist``,
            ``imagenet``), a file (ours or a torchvision/timm checkpoint) or a URL. The
            preprocessing (input size, channels, mean/std) then comes from the weights.
        freeze: what to freeze (see :data:`convnets.transfer.FREEZE_HELP`); ``auto`` follows the
            case studies' advice for the number of examples per class.
        pretrained_lr_scale: learning-rate multiplier of the pretrained layers that still train.
        cache_features: with everything but the head frozen, run the trunk once and train the
            head on cached features.
        cache_dir: where cached features go (default ``~/.cache/convnets/features``).
        train_per_class: keep only this many training examples per class (seeded), for
            small-data experiments.
        test_per_class: evaluate on only this many test examples per class (a fixed, seeded
            choice), for experiments that evaluate often on a small budget.
        threads: CPU threads for the model (default: PyTorch's, one per core). On a machine
            shared with other work, 1 avoids the stalls of a thread team waiting for a busy core.
    """

    model: str
    data: str = "fashion-mnist"
    data_dir: str | None = None
    out: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    momentum: float = 0.9
    weight_decay: float | None = None
    schedule: str | None = None
    warmup_epochs: float | None = None
    label_smoothing: float | None = None
    grad_clip: float | None = None
    augment: str | None = None
    precision: str = "auto"
    channels_last: bool | None = None
    image_size: int | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    deterministic: bool = False
    resume: bool = False
    nan_policy: str = "stop"
    checkpoint_minutes: float = 10.0
    max_steps: int | None = None
    num_workers: int | None = None
    device: str | None = None
    progress: bool = True
    weights: str | None = None
    freeze: str | None = None
    pretrained_lr_scale: float = 1.0
    cache_features: bool = False
    cache_dir: str | None = None
    train_per_class: int | None = None
    test_per_class: int | None = None
    threads: int | None = None

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read a JSON or TOML file with the same field names; ``overrides`` win."""
        path = Path(path)
        text = path.read_text()
        if path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError as err:  # Python 3.10
                raise ConfigError(f"{path}: TOML configs need Python 3.11+; use JSON") from err
            values = tomllib.loads(text)
        else:
            values = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown config fields {unknown}; known: {sorted(known)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Per-model recipes: a user should not need to know one to get a good result. The first pattern
# that matches the model name wins. Budgets are for a 2-core CPU on Fashion-MNIST-sized data.
RECIPES: list[tuple[str, dict[str, Any]]] = [
    # LeNet-5: small, no BatchNorm; Adam-style steps converge in a few epochs.
    ("lenet5*", dict(epochs=8, batch_size=128, optimizer="adamw", lr=3e-3, weight_decay=1e-4,
                     schedule="onecycle", warmup_epochs=0, label_smoothing=0.0, augment="none")),
    # He et al. 2015 Section 4.2: SGD 0.1, momentum 0.9, weight decay 1e-4, batch 128,
    # flips and 4-pixel pad-and-crop; cosine instead of their two steps to fit short budgets.
    ("resnet[0-9]*", dict(epochs=30, batch_size=128, optimizer="sgd", lr=0.1, weight_decay=1e-4,
                          schedule="cosine", warmup_epochs=1, label_smoothing=0.0, augment="standard")),
    ("plain[0-9]*", dict(epochs=30, batch_size=128, optimizer="sgd", lr=0.1, weight_decay=1e-4,
                         schedule="cosine", warmup_epochs=1, label_smoothing=0.0, augment="standard")),
    # Depthwise nets: AdamW is less sensitive to the learning rate than SGD on short runs.
    ("mobilenet*", dict(epochs=20, batch_size=128, optimizer="adamw", lr=2e-3, weight_decay=0.05,
                        schedule="cosine", warmup_epochs=1, label_smoothing=0.1, augment="standard")),
    ("efficientnet*", dict(epochs=20, batch_size=128, optimizer="adamw", lr=2e-3, weight_decay=0.05,
                           schedule="cosine", warmup_epochs=1, label_smoothing=0.1, augment="standard")),
    # Nets without BatchNorm (AlexNet, VGG, GoogLeNet, NiN as published) need a gentler start.
    ("*", dict(epochs=20, batch_size=128, optimizer="sgd", lr=0.01, weight_decay=5e-4,
               schedule="cosine", warmup_epochs=1, label_smoothing=0.0, augment="light")),
]


def default_out(model: str, data: str, *, resume: bool = False) -> Path:
    """``runs/MODEL-DATA``, or ``-2``, ``-3``... when taken: running the same command twice starts a
    second run rather than failing; ``--resume`` without ``--out`` continues the latest one."""
    base = Path("runs") / f"{model}-{Path(str(data)).name}"
    taken = [base] + [base.with_name(f"{base.name}-{i}") for i in range(2, 1000)]
    existing = [p for p in taken if (p / "config.json").exists()]
    if resume:
        return existing[-1] if existing else base
    return next(p for p in taken if not (p / "config.json").exists())


def resolve(config: TrainConfig) -> TrainConfig:
    """A copy of ``config`` with every ``None`` recipe field filled in, validated."""
    recipe = next(r for pattern, r in RECIPES if fnmatch.fnmatchcase(config.model, pattern))
    values = config.to_dict()
    for key, value in recipe.items():
        if values[key] is None:
            values[key] = value
            if key == "warmup_epochs":  # a recipe's warm-up never takes more than a fifth of a short run
                values[key] = min(value, (values["epochs"] or recipe["epochs"]) / 5)
    if values["out"] is None:
        values["out"] = str(default_out(config.model, config.data, resume=config.resume))
    resolved = TrainConfig(**values)
    _validate(resolved)
    return resolved


def _validate(c: TrainConfig) -> None:
    def choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")

    choice("optimizer", c.optimizer, OPTIMIZERS)
    choice("schedule", c.schedule, SCHEDULES)
    choice("precision", c.precision, PRECISIONS)
    choice("augment", c.augment, AUGMENT_PRESETS)
    choice("nan_policy", c.nan_policy, ("stop", "skip"))
    for name in ("epochs", "batch_size"):
        if getattr(c, name) < 1:
            raise ConfigError(f"{name} must be at least 1, got {getattr(c, name)}")
    if not c.lr > 0:
        raise ConfigError(f"lr must be > 0, got {c.lr}")
    if c.weight_decay < 0 or c.label_smoothing < 0 or c.warmup_epochs < 0:
        raise ConfigError("weight_decay, label_smoothing and warmup_epochs must be >= 0")
    if c.warmup_epochs >= c.epochs and c.warmup_epochs > 0:
        raise ConfigError(f"warmup_epochs ({c.warmup_epochs}) must be shorter than the run ({c.epochs} epochs)")
