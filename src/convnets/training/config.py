"""The one configuration of a training run, its per-model defaults, and config files."""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import functools
import glob
import json
import os
import re
import stat
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convnets.checks import FLAG, TEXT, Rule, choice, number, pathlike, whole
from convnets.data.loader import MAX_BATCH_SIZE
from convnets.device import check_threads, resolve_device
from convnets.errors import ConfigError, ConfigMismatchError
from convnets.training.schedules import SCHEDULES as SCHEDULE_TABLE
from convnets.transfer import FREEZE_HELP
from convnets.weights.load import LAYOUT_NAMES
from convnets.weights.specs import is_tag

if TYPE_CHECKING:
    from convnets.models.base import ConvNet

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = tuple(SCHEDULE_TABLE)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUGMENT_PRESETS = ("none", "light", "standard", "heavy")


def _records_given(cls: type) -> type:
    """Make ``cls(...)`` remember which fields were passed (see :attr:`TrainConfig.given`).

    A field left at its default and one given the same value look alike afterwards; a resumed run
    must tell them apart (``data="fashion-mnist"`` typed on a run of digits is a conflict, not
    nothing), so the generated ``__init__`` is wrapped to note the names it was called with.
    """
    init = cls.__init__
    names = [f.name for f in dataclasses.fields(cls)]

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        passed = {*names[: len(args)], *kwargs}
        object.__setattr__(self, "_given", frozenset(n for n in passed if getattr(self, n) is not None))

    cls.__init__ = __init__
    return cls


@_records_given
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
        weights_layout: the peer layout of a ``weights`` file (:data:`convnets.weights.LAYOUT_NAMES`), for
            checkpoints whose keys cannot tell it (timm's ``tf_efficientnet_bN`` has the keys of its
            ``efficientnet_bN``); detected from the keys when None.
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
        ema: keep an exponential moving average of the weights with this decay (0.999: each step
            moves it 0.1% of the way to the weights), evaluated every epoch and saved as
            ``last-ema.safetensors`` (None: none). Warmed up as TensorFlow's
            ``ExponentialMovingAverage(num_updates=n)``: step ``n`` (from 0) uses
            ``min(ema, (1 + n) / (10 + n))``, so that the average leaves the random initial weights
            within a short run (0.999 holds from step 8,990 on).
        accumulate: micro-batches of ``batch_size`` whose gradients make one optimizer step (the
            effective batch is ``batch_size * accumulate``; schedules count optimizer steps).
        sync_every: optimizer steps between two looks of the host at the device: the non-finite
            loss check, the progress bar, a signal or a due checkpoint (default 1 on the CPU, where a
            look is cheap, 50 on accelerators, where each one stalls the pipeline).
        compile: ``torch.compile`` the training forward and backward with this backend
            (``inductor``, what ``--compile`` means; ``eager`` compiles nothing, for tests); None: off.
        tensorboard: also write TensorBoard logs to ``out/tensorboard`` (needs the ``tensorboard`` extra).
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
    weights_layout: str | None = None
    freeze: str | None = None
    pretrained_lr_scale: float = 1.0
    cache_features: bool = False
    cache_dir: str | None = None
    train_per_class: int | None = None
    test_per_class: int | None = None
    threads: int | None = None
    ema: float | None = None
    accumulate: int = 1
    sync_every: int | None = None
    compile: str | None = None
    tensorboard: bool = False

    def __post_init__(self) -> None:
        # Checked when made, so that a bad value stops the Python API and the command line alike
        # before any data is read or any directory is made. Paths may be given as Path objects;
        # they are kept as strings, which is what config.json can hold.
        for name in ("data", "data_dir", "out", "weights", "cache_dir"):
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        for f in dataclasses.fields(self):
            value = _python_value(getattr(self, f.name))
            if f.name == "model_kwargs" and isinstance(value, dict):  # {"width": np.float32(0.5)} from a sweep too
                value = {k: _python_value(v) for k, v in value.items()}
            setattr(self, f.name, value)
            check_field(f.name, value)
        # "LeNet5" and " lenet-5" build lenet5: they also take its recipe (fnmatch on the name as typed gave
        # them the generic one, SGD at 0.01), its run directory name and its metadata.
        self.model = registered_spelling(self.model)
        # A shell expands ~ only where it stands unquoted; from a config file or the Python API
        # "~/runs/x" would otherwise become a folder named "~" in the current directory.
        for name in ("data", "data_dir", "out", "cache_dir"):
            value = getattr(self, name)
            if isinstance(value, str) and value.startswith("~"):
                setattr(self, name, os.path.expanduser(value))

    @property
    def given(self) -> frozenset[str]:
        """The fields passed by name or position when this config was made, except those passed as None.

        What a resumed run must not ignore: ``TrainConfig(model="lenet5", data="fashion-mnist",
        resume=True)`` names its data even though it is the default. None is never counted, as it
        means "the recipe's", which for a resumed run is the run's own.
        """
        return getattr(self, "_given", frozenset())

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read a JSON or TOML file with the same field names (see :func:`read_config_file`); ``overrides`` win."""
        values = read_config_file(path)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "model" not in values:
            raise ConfigError(f"{path}: no model: name one in the file (\"model\": \"resnet20\") or pass it")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_RESNET = dict(epochs=8, batch_size=128, optimizer="sgd", lr=0.1, weight_decay=5e-4, schedule="cosine",
               warmup_epochs=1, label_smoothing=0.1, augment="light")

# Per-model recipes: a user should not need to know one to get a good result. The first pattern
# that matches the model name wins. Budgets are for a 2-core CPU on Fashion-MNIST-sized data.
RECIPES: list[tuple[str, dict[str, Any]]] = [
    # LeNet-5: small, no BatchNorm; Adam-style steps converge in a few epochs.
    ("lenet5*", dict(epochs=8, batch_size=128, optimizer="adamw", lr=3e-3, weight_decay=1e-4,
                     schedule="onecycle", warmup_epochs=0, label_smoothing=0.0, augment="none")),
    # ResNets and their plain twins (one recipe, so the degradation comparison stays fair): He et al.
    # 2015 Section 4.2's SGD 0.1, momentum 0.9, batch 128, flips and pad-and-crop, fitted to ~10 minutes
    # on 2 cores (docs/benchmarks-train.md, "Recipe for resnet20"): 8 epochs of cosine to zero, and as
    # so short a run underfits, the light preset's smaller shifts; weight decay 5e-4 (their 1e-4 is for
    # 64k steps) and label smoothing 0.1. resnet20 on Fashion-MNIST at 8 epochs: 0.9240 -> 0.9315 and 0.9323 (2 seeds).
    ("resnet[0-9]*", _RESNET),
    ("plain[0-9]*", _RESNET),
    # Depthwise nets: AdamW is less sensitive to the learning rate than SGD on short runs.
    ("mobilenet*", dict(epochs=20, batch_size=128, optimizer="adamw", lr=2e-3, weight_decay=0.05,
                        schedule="cosine", warmup_epochs=1, label_smoothing=0.1, augment="standard")),
    ("efficientnet*", dict(epochs=20, batch_size=128, optimizer="adamw", lr=2e-3, weight_decay=0.05,
                           schedule="cosine", warmup_epochs=1, label_smoothing=0.1, augment="standard")),
    # Nets without BatchNorm (AlexNet, VGG, GoogLeNet, NiN as published) need a gentler start.
    ("*", dict(epochs=20, batch_size=128, optimizer="sgd", lr=0.01, weight_decay=5e-4,
               schedule="cosine", warmup_epochs=1, label_smoothing=0.0, augment="light")),
]


_RECIPE = "the model's recipe"

# What each field takes. None, where allowed, takes the recipe or the default said after "or None".
FIELDS: dict[str, Rule] = {
    "model": TEXT,
    "data": pathlike("a dataset name (fashion-mnist, digits, cifar10) or an image folder"),
    "data_dir": pathlike("a folder").or_none("the default location"),
    "out": pathlike("a folder").or_none("runs/MODEL-DATA"),
    "epochs": whole(1).or_none(_RECIPE),
    "batch_size": whole(1, MAX_BATCH_SIZE).or_none(_RECIPE),
    # Upper bounds keep every product of these (lr x scale x decay) inside float32, whose overflow is an
    # error inside the optimizer; a learning rate near them diverges, which the loop reports.
    "lr": number(gt=0, le=1e6).or_none(_RECIPE),
    "optimizer": choice(*OPTIMIZERS).or_none(_RECIPE),
    "momentum": number(ge=0, lt=1),
    "weight_decay": number(ge=0, le=1e6).or_none(_RECIPE),
    "schedule": choice(*SCHEDULES).or_none(_RECIPE),
    "warmup_epochs": number(ge=0).or_none(_RECIPE),
    "label_smoothing": number(ge=0, lt=1).or_none(_RECIPE),
    # A negative clip norm is accepted by PyTorch and reverses the gradient: refused here.
    "grad_clip": number(gt=0, note="the largest gradient norm").or_none("no clipping"),
    "augment": choice(*AUGMENT_PRESETS).or_none(_RECIPE),
    "precision": choice(*PRECISIONS),
    "channels_last": FLAG.or_none("on, except with cached features"),
    # The model's own minimum (or fixed size) is checked against the data by the loop.
    "image_size": whole(1, 4096).or_none("the data's own size, or the model's fixed one"),
    "model_kwargs": Rule(lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
                         'a mapping of builder arguments to values, such as {"width": 0.5}'),
    "seed": whole(0, 2**63 - 1),
    "deterministic": FLAG,
    "resume": FLAG,
    "nan_policy": choice("stop", "skip"),
    "checkpoint_minutes": number(gt=0),
    "max_steps": whole(1).or_none("no limit"),
    "num_workers": whole(0, 256).or_none("up to 4"),
    "device": TEXT.or_none("CUDA when present, else cpu"),
    "progress": FLAG,
    "weights": pathlike("a registered tag, a weights file or a URL").or_none("train from scratch"),
    "weights_layout": choice(*LAYOUT_NAMES).or_none("detected from the keys"),
    "freeze": Rule(lambda v: isinstance(v, str), "a string (" + FREEZE_HELP + ")").or_none("nothing frozen"),
    "pretrained_lr_scale": number(gt=0, le=1e6),
    "cache_features": FLAG,
    "cache_dir": pathlike("a folder").or_none("~/.cache/convnets/features"),
    # 0 is refused, not read as "all": a user who asks for 0 examples has made a mistake.
    "train_per_class": whole(1).or_none("all"),
    "test_per_class": whole(1).or_none("all"),
    # 0 would never move the average and 1 would never leave the start: both ends are refused.
    "ema": number(gt=0, lt=1, note="the decay of the weights' moving average, such as 0.999").or_none("no average"),
    "accumulate": whole(1, 1 << 16),
    "sync_every": whole(1, 1 << 20).or_none("1 on the CPU, 50 on accelerators"),
    # Which backends exist is torch's to say; checked by resolve() (importing torch._dynamo takes a while).
    "compile": TEXT.or_none("not compiled"),
    "tensorboard": FLAG,
}


def check_field(name: str, value: Any, where: str = "") -> None:
    """Raise a :class:`ConfigError` naming the field and its allowed values unless ``value`` fits it."""
    if name == "threads":
        try:
            check_threads(value)
        except ConfigError as err:
            raise ConfigError(f"{where}{err}") from None
    else:
        FIELDS[name].check(name, value, where)


# A config file names a few dozen fields; anything larger is not one (and is not read into memory whole).
MAX_CONFIG_BYTES = 1 << 20


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The fields of a JSON (or, with a ``.toml`` suffix, TOML) config file, each checked.

    A UTF-8 byte-order mark (as Windows editors write) is accepted.

    Raises:
        ConfigError: the file is missing, unreadable, not a regular file (a FIFO or a device would
            block or never end), larger than :data:`MAX_CONFIG_BYTES`, empty, not valid JSON/TOML (with
            the line and column), names a field twice, is not a table of fields, names an unknown
            field, or has a value a field cannot take.
    """
    path = Path(path)
    try:
        info = path.stat()  # before opening: opening a FIFO waits for a writer
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise ConfigError(f"config file {path} cannot be read: it is {kind}; a config is a JSON or TOML file")
        if info.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {path} is {info.st_size:,} bytes; a config of TrainConfig fields is a "
                              f"few hundred (at most {MAX_CONFIG_BYTES:,} are read)")
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not text (byte {err.start} is not UTF-8): "
                          "a config is JSON or TOML") from None
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read: {err.strerror or err}") from None
    if not text.strip():
        raise ConfigError(f'config file {path} is empty: a config is a table of TrainConfig fields ({{"epochs": 3}})')
    if path.suffix.lower() == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError as err:  # Python 3.10
            raise ConfigError(f"{path}: TOML configs need Python 3.11+; use JSON") from err
        try:
            values = tomllib.loads(text)  # refuses a key given twice itself
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: not valid TOML: {err}") from None
    else:
        try:
            values = json.loads(text, object_pairs_hook=functools.partial(_unique_keys, path))
        except json.JSONDecodeError as err:
            hint = "" if path.suffix.lower() == ".json" else " (read as JSON; a TOML file needs the .toml suffix)"
            raise ConfigError(f"{path}: not valid JSON at line {err.lineno}, column {err.colno}: "
                              f"{err.msg}{hint}") from None
    if not isinstance(values, dict):
        raise ConfigError(f'{path}: a config file is a table of TrainConfig fields ({{"epochs": 3, ...}}); '
                          f"this one holds a {type(values).__name__}")
    known = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{path}: unknown config fields {unknown}{hint}; known: {sorted(known)}")
    for name, value in values.items():
        check_field(name, value, where=f"{path}: ")
    return values


def _unique_keys(path: Path, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object as a dict, refusing a key given twice (json would keep the last one without a word)."""
    values: dict[str, Any] = {}
    for key, value in pairs:
        if key in values:
            raise ConfigError(f"{path}: {key!r} is given twice ({values[key]!r} and {value!r}); keep one")
        values[key] = value
    return values


def default_out(model: str, data: str, *, resume: bool = False, skip: Collection[Path] = ()) -> Path:
    """``runs/MODEL-DATA``, or ``-2``, ``-3``... when taken: running the same command twice starts a
    second run rather than failing; ``--resume`` without ``--out`` continues the latest one.

    Args:
        model, data: Name the directory (``data``'s last part; ``.`` is the current folder's name).
        resume: The latest existing run instead of the next free name.
        skip: Free names to pass over (another process is writing them, not yet their config.json).
    """
    name = Path(str(data)).name or Path(str(data)).resolve().name
    base = Path("runs") / f"{model}-{name}"
    taken = [base] + [base.with_name(f"{base.name}-{i}") for i in range(2, 1000)]
    existing = [p for p in taken if (p / "config.json").exists()]
    if resume:
        return existing[-1] if existing else (_runs_named_as_typed(model, name) or [base])[-1]
    free = (p for p in taken if not (p / "config.json").exists() and p not in skip)
    found = next(free, None)
    if found is None:
        raise ConfigError(f"{base} and its 998 numbered siblings are all taken: pass --out")
    return found


def _runs_named_as_typed(model: str, name: str) -> list[Path]:
    """Runs of ``model`` on ``name`` begun before run directories took the registry's spelling of the model
    (``runs/LeNet5-digits`` for lenet5), in the order of their numbers: ``--resume`` without ``--out`` found none."""
    found = []
    for path in Path("runs").glob(f"*-{glob.escape(name)}*"):
        typed, sep, number = path.name.partition(f"-{name}")
        if (sep and typed != model and re.fullmatch(r"(-[0-9]+)?", number) and (path / "config.json").exists()
                and registered_spelling(typed) == model):
            found.append((int(number[1:] or 1), path))
    return [path for _, path in sorted(found)]


@dataclass(frozen=True)
class ModelSource:
    """Where a run's network comes from: the registry (by ``TrainConfig.model``), a builder, or a module.

    ``train(config, model=...)`` takes a builder (called as ``create_model`` calls one:
    ``builder(num_classes=..., in_chans=..., **model_kwargs)``) or a built :class:`ConvNet`, so that
    a network the library does not offer trains without entering the registry; ``config.model``
    then only names the run (its directory, metadata and recipe).
    """

    name: str
    builder: Callable[..., ConvNet] | None = None
    module: ConvNet | None = None

    @property
    def registered(self) -> bool:
        return self.builder is None and self.module is None

    def probe(self, model_kwargs: dict[str, Any]) -> ConvNet:
        """The network on the meta device (see :func:`probe_model`)."""
        if self.registered:
            return probe_model(self.name, model_kwargs)
        import copy

        import torch

        if self.module is not None:
            return copy.deepcopy(self.module).to("meta")
        # Called as build() calls it, before the data is read: the classes and channels are stand-ins (a meta
        # network's structure, all the probe is for, does not depend on them).
        with torch.device("meta"):
            return _checked(self.builder(num_classes=PROBE_CLASSES, in_chans=3, **model_kwargs), self.name)

    def build(self, num_classes: int, in_chans: int, model_kwargs: dict[str, Any]) -> ConvNet:
        """The network to train, for the data's classes and channels.

        Raises:
            ConfigMismatchError: a given network (or a builder's) has other classes or channels, or a classifier
                of another width than its ``num_classes`` says.
        """
        from torch import nn

        if self.registered:
            from convnets.registry import create_model

            return create_model(self.name, num_classes=num_classes, in_chans=in_chans, **model_kwargs)
        if self.module is None:
            model = _checked(self.builder(num_classes=num_classes, in_chans=in_chans, **model_kwargs), self.name)
            given = f"the builder of {self.name} was asked for {num_classes} classes and {in_chans} input channels"
            fix = "build what it is asked for"
        else:
            model, given = self.module, f"the data has {num_classes} classes and {in_chans} input channels"
            fix = "build it for the data, or pass a builder"
        fc = model.classifier()
        # A classifier replaced after building (model.head.fc = nn.Linear(...)) leaves num_classes as it was: the
        # loss then failed at the first batch (IndexError) or, with more outputs, the weights at the end of the run.
        outputs = fc.out_features if isinstance(fc, nn.Linear) else model.num_classes
        if (model.num_classes, outputs, model.in_chans) != (num_classes, num_classes, in_chans):
            says = f"has {model.num_classes} classes" + (
                f" but a classifier of {outputs} outputs" if outputs != model.num_classes else "")
            raise ConfigMismatchError(f"the model given for {self.name} {says} and {model.in_chans} input "
                                      f"channels; {given}: {fix}")
        return model


def model_source(name: str, model: Any = None) -> ModelSource:
    """The :class:`ModelSource` of ``train(config, model=model)``: None (the registry), a builder or a ConvNet.

    Raises:
        ConfigError: ``model`` is neither a :class:`ConvNet` nor a callable.
    """
    from torch import nn

    from convnets.models.base import ConvNet

    if model is None:
        return ModelSource(name)
    if isinstance(model, ConvNet):
        return ModelSource(name, module=model)
    if callable(model) and not isinstance(model, nn.Module):  # a module that is no ConvNet lacks what training needs
        return ModelSource(name, builder=model)
    raise ConfigError(f"train(model=...) takes a ConvNet or a builder returning one, not {type(model).__name__}")


def _python_value(value: Any) -> Any:
    """A NumPy number from a sweep (np.arange(...) seeds, np.float32 rates) as its Python value: the checks took
    np.int64(3) for no whole number, and config.json could not hold np.float32; anything else as it is."""
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


def registered_spelling(name: str) -> str:
    """The registry's name for ``name`` (``LeNet5`` is ``lenet5``), or ``name`` itself: a network of the
    user's own (``train(config, model=...)``), or an unknown name, refused by :func:`resolve` with close names."""
    from convnets.registry import UnknownModelError, model_entry

    try:
        return model_entry(name).name
    except UnknownModelError:
        return name


def _checked(model: Any, name: str) -> ConvNet:
    from convnets.models.base import ConvNet

    if not isinstance(model, ConvNet):
        raise ConfigError(f"the builder of {name} returned a {type(model).__name__}, not a ConvNet: training needs "
                          "the ConvNet interface (stem, stages, head; see convnets.models.base)")
    return model


def resolve(config: TrainConfig, source: ModelSource | None = None) -> TrainConfig:
    """A copy of ``config`` with every ``None`` recipe field filled in, validated.

    Args:
        config: The run.
        source: Where the network comes from (default: the registry, by ``config.model``).
    """
    from convnets.registry import model_entry

    source = source or ModelSource(config.model)
    if source.registered:
        model_entry(config.model)  # an unknown name is reported before anything else, with close names
    recipe = next(r for pattern, r in RECIPES if fnmatch.fnmatchcase(config.model, pattern))
    values = config.to_dict()
    if config.cache_features:
        # The trunk's features are computed once, from the images as they are: no augmentation reaches them.
        if config.augment not in (None, "none") and not config.resume:
            raise ConfigMismatchError(f"--augment {config.augment} cannot apply to cached features: the frozen "
                                      "trunk sees each image once, unaugmented; leave out --augment, or "
                                      "--cache-features to train on augmented images")
        if values["augment"] is None:
            values["augment"] = "none"  # what the run does, for its config.json and report, not the recipe's
    for key, value in recipe.items():
        if values[key] is None:
            values[key] = value
            if key == "warmup_epochs":  # a recipe's warm-up never takes more than a fifth of a short run
                values[key] = min(value, (values["epochs"] or recipe["epochs"]) / 5)
    if values["out"] is None:
        values["out"] = str(default_out(config.model, config.data, resume=config.resume))
    values.update(_absolute_paths(values))
    resolved = TrainConfig(**values)
    _validate(resolved, source)
    return resolved


def _absolute_paths(values: dict[str, Any]) -> dict[str, str]:
    """The data folder, data_dir and weights (a file or a run) of a run as absolute paths, where they are paths on
    this disk (an existing path is a path, not a registered tag, to the weights too).

    config.json records them for --resume, evaluate and export, which may run from another folder: a relative
    ``--data pets`` then named nothing there ("unknown dataset 'pets'"), or another folder of that name.
    """
    from convnets.data.datasets import DATASET_NAMES
    from convnets.weights.io import is_url

    found = {}
    for key in ("data", "data_dir", "weights"):
        value = values.get(key)
        if not isinstance(value, str) or (key == "data" and value in DATASET_NAMES) or is_url(value):
            continue
        path = Path(value).expanduser()
        if (path.exists() if key == "weights" else path.is_dir()) and not path.is_absolute():
            found[key] = os.path.abspath(path)
    return found


# torch.compile backends torch lists whether or not their package is installed: (module, what pip installs).
# Without it the backend fails at the first step, after the data was read.
COMPILE_PACKAGES = {"tvm": ("tvm", "apache-tvm"), "openxla": ("torch_xla", "torch-xla"),
                    "openxla_eval": ("torch_xla", "torch-xla")}
# The classes a builder given to train() is probed with before the data says how many.
PROBE_CLASSES = 10
# Builder arguments a training run takes from the data, never from model_kwargs.
FROM_DATA = ("num_classes", "in_chans")
# Freeze specs that leave exactly the classifier training, as cached features need.
HEAD_ONLY = ("all-but-head", "trunk")


def _validate(c: TrainConfig, source: ModelSource) -> None:
    """What a field alone cannot say: agreement between fields, the model's arguments, the device, the
    compile backend, and whether the model can train at an image size and batch size known before the data is read."""
    from convnets.registry import check_arguments

    if c.warmup_epochs >= c.epochs and c.warmup_epochs > 0:
        raise ConfigError(f"warmup_epochs ({c.warmup_epochs}) must be shorter than the run ({c.epochs} epochs)")
    given = [k for k in FROM_DATA if k in c.model_kwargs]
    if given:
        raise ConfigError(f"model_kwargs cannot set {', '.join(given)}: the number of classes and input channels "
                          "come from the data")
    if source.registered:
        check_arguments(c.model, c.model_kwargs, hide=FROM_DATA)
    resolve_device(c.device)
    if c.tensorboard and not has_tensorboard():
        from convnets.errors import MissingDependencyError

        raise MissingDependencyError("--tensorboard writes its logs with the tensorboard package, which is not "
                                     "installed: pip install 'convnets[tensorboard]' (or tensorboard)")
    if c.compile is not None:
        import torch._dynamo

        # Every registered backend is accepted (eager and aot_eager are debugging backends the tests use); the
        # message names torch's own list of the ones meant for use, not its debugging and test-only ones.
        if c.compile not in torch._dynamo.list_backends(exclude_tags=()):
            raise ConfigError(f"compile {c.compile!r} is not a torch.compile backend; known: "
                              f"{', '.join(torch._dynamo.list_backends())}, and for debugging eager, aot_eager "
                              "(--compile alone means inductor)")
        package = COMPILE_PACKAGES.get(c.compile)
        if package is not None and not _installed(package[0]):
            from convnets.errors import MissingDependencyError

            raise MissingDependencyError(f"--compile {c.compile} needs the {package[0]} package, which is not "
                                         f"installed: pip install {package[1]}, or choose another backend")
    if c.weights_layout is not None and (c.weights is None or is_tag(c.weights)):
        raise ConfigMismatchError(f"weights_layout {c.weights_layout!r} (--layout) is the layout of a weights file; "
                                  + ("give the file with --weights" if c.weights is None else
                                     f"registered weights ({c.weights!r}) have their own"))
    if c.cache_features and c.freeze not in (*HEAD_ONLY, "auto"):
        raise ConfigMismatchError(f"cache_features needs everything but the classifier frozen (--freeze "
                                  f"all-but-head, or auto on little data); got freeze={c.freeze!r}")
    if c.cache_features and c.cache_dir and Path(c.cache_dir).exists() and not Path(c.cache_dir).is_dir():
        raise ConfigError(f"cache_dir {c.cache_dir} is not a folder: the cached features are files in a folder")
    _check_out_beside_images(c)
    probe = source.probe(c.model_kwargs)
    if c.freeze not in (None, "auto"):
        from convnets.transfer import freeze_paths

        freeze_paths(probe, c.freeze)
    # Pretrained weights may bring their own builder arguments (small_input...) and input size, and
    # freezing changes which BatchNorm layers train: then the loop checks once the weights are read.
    if c.weights is None and c.freeze is None:
        size = (c.image_size,) * 2 if c.image_size else probe.fixed_input_size
        if size is not None:
            check_input_size(c.model, probe, size, f"--image-size {size[0]} gives")
            smallest_batch(c.model, probe, c.batch_size, size)


def _check_out_beside_images(c: TrainConfig) -> None:
    """A ConfigMismatchError when the run directory lies inside the image folder it trains on.

    The scan would take the run's folder for a class (``--data .`` with the default ``runs/...``), or, inside a
    class folder, its curves.png for a training image of that class in every later run.
    """
    from convnets.data.datasets import DATASET_NAMES
    from convnets.data.formats import cifar, idx

    data = Path(c.data).expanduser()
    if c.data in DATASET_NAMES or not data.is_dir() or cifar.recognise(data) or idx.recognise(data):
        return
    root, out = data.resolve(), Path(c.out).expanduser().resolve()
    if out == root or root in out.parents:
        raise ConfigMismatchError(f"--out {c.out} is inside the image folder {c.data}: its files (curves.png...) "
                                  "would be read as training images, its folder as a class; choose an --out "
                                  "outside the data")


def has_tensorboard() -> bool:
    """Whether the ``tensorboard`` package is installed (found, not imported: importing it takes seconds)."""
    return _installed("tensorboard")


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def probe_model(name: str, model_kwargs: dict[str, Any]) -> ConvNet:
    """The model built on the meta device: its structure and sizes, without memory or computation."""
    import torch

    from convnets.registry import create_model

    with torch.device("meta"):
        return create_model(name, **model_kwargs)


def check_input_size(model: str, probe: ConvNet, size: Sequence[int], source: str) -> None:
    """A ConfigMismatchError, saying what to pass instead, when ``probe`` cannot take images of ``size``.

    Args:
        model: The model's name, for the message.
        probe: The model (see :func:`probe_model`).
        size: (height, width) of the images.
        source: Where the size comes from, completing "... but SOURCE HxW" ("--image-size 28 gives", "digits gives").
    """
    h, w = size
    if probe.fixed_input_size is not None and (h, w) != probe.fixed_input_size:
        fh, fw = probe.fixed_input_size
        raise ConfigMismatchError(f"{model} takes only {fh}x{fw} images but {source} {h}x{w}: use --image-size {fh}")
    if min(h, w) < probe.min_input_size:
        hint = f"--image-size {probe.min_input_size}"
        from convnets.registry import list_models, model_entry

        # A network given to train() rather than registered gets no hint: its builder's arguments are its own.
        takes = model in list_models() and model_entry(model).takes("small_input")
        if takes and not getattr(probe, "small_input", True):
            hint += " or --model-arg small_input=true"
        raise ConfigMismatchError(f"{model} needs images of at least {probe.min_input_size}x"
                                  f"{probe.min_input_size} but {source} {h}x{w}: pass {hint}")


def smallest_batch(model: str, probe: ConvNet, batch: int, size: Sequence[int], *, frozen: Sequence[str] = (),
                   few_images: bool = False) -> int:
    """The smallest batch ``probe`` can train on at ``size`` (1, or 2), checked against ``batch``.

    A BatchNorm layer in training mode normalises each channel over the batch and the map; where
    the map is 1x1 (MobileNet's last stage at 32x32), a batch of one gives it a single value, and
    PyTorch refuses it mid-run. The model runs once, in training mode on the meta device (no
    memory, no computation), to see the map every training BatchNorm layer gets; this also raises
    the model's own :class:`~convnets.errors.InputShapeError` for an input only some branch cannot
    take (GoogLeNet's auxiliary classifiers).

    Args:
        model: The model's name, for the message.
        probe: The model (see :func:`probe_model`).
        batch: The batch the run would use.
        size: (height, width) of the images.
        frozen: Module paths that stay in evaluation mode (see :func:`convnets.transfer.freeze`).
        few_images: The batch is small because the training set is (the message then says so).

    Raises:
        ConfigMismatchError: ``batch`` is below the smallest, naming the layer and what to change.
    """
    import torch
    from torch import nn

    one_value: list[str] = []  # BatchNorm layers that would see one value per channel and image

    def note(name: str, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if module.training and args[0][0, 0].numel() == 1:
            one_value.append(name)

    hooks = [m.register_forward_pre_hook(functools.partial(note, name)) for name, m in probe.named_modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    probe.frozen = list(frozen)
    probe.train()
    try:
        x = torch.empty(2, probe.in_chans, *size, device="meta")  # two: a batch that any layer takes
        with torch.no_grad():
            probe(x, return_aux=True) if getattr(probe, "aux", None) is not None else probe(x)
    finally:
        for hook in hooks:
            hook.remove()
    smallest = 2 if one_value else 1
    if batch < smallest:
        why = ("the training set gives each process a batch of 1 image: add training images" if few_images
               else "use --batch-size 2 or more")
        raise ConfigMismatchError(
            f"{model} cannot train on batches of 1 at {size[0]}x{size[1]}: its BatchNorm layer {one_value[0]} sees a "
            f"1x1 map there, one value per channel, which training cannot normalise; {why}, or pass --image-size "
            f"{2 * probe.min_input_size} or more"
        )
    return smallest
