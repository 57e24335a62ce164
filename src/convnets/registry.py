"""The model registry: a name -> builder dict filled by a decorator.

Builders live next to their family (``convnets/models/<family>.py``) and are registered with
``@register_model(...)``, which also records the facts a user wants before building anything:
the default input size and the published parameter / MAC figures to compare against.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convnets.checks import FLAG, Rule, choice, number, whole
from convnets.errors import ConfigError, UnknownArgumentError, UnknownModelError

if TYPE_CHECKING:
    from convnets.models.base import ConvNet


@dataclass(frozen=True)
class Published:
    """A figure from a paper or a peer library, shown beside our own count.

    Attributes:
        params: published trainable-parameter count (None where the source gives none).
        macs: published multiply-accumulates at the default input (None where none is given).
        source: where the figure comes from ("He et al. 2015, Table 1", "torchvision 0.28").
        approx: the figures the source only gives rounded ("4.2M", "~0.724G"): ``"params"``,
            ``"macs"``. Others are exact counts our build must equal.
    """

    params: int | None
    macs: int | None
    source: str
    approx: tuple[str, ...] = ()

    def is_exact(self, figure: str) -> bool:
        """Whether ``figure`` ("params" or "macs") is an exact count."""
        return figure not in self.approx


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its builder and what is known about it before it is built."""

    name: str
    builder: Callable[..., ConvNet]
    family: str
    input_size: tuple[int, int, int]
    published: Published | None
    summary: str

    def arguments(self) -> dict[str, inspect.Parameter]:
        """The keyword arguments the builder takes, by name, in its order (with their defaults)."""
        return {name: p for name, p in inspect.signature(self.builder).parameters.items()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    def takes(self, argument: str) -> bool:
        """Whether the builder takes ``argument`` (a builder with ``**kwargs`` takes any)."""
        parameters = inspect.signature(self.builder).parameters.values()
        return argument in self.arguments() or any(p.kind is p.VAR_KEYWORD for p in parameters)


# The largest classifier a builder makes: ImageNet-21k has 21,843 classes; 10**9 would need 336 GB.
MAX_CLASSES = 100_000

# What each builder argument takes, by name (the same name means the same thing in every family).
# create_model checks every argument against its rule before building, so that a wrong value is one
# sentence naming the argument and its range rather than a traceback from deep inside a layer.
BUILDER_ARGUMENTS: dict[str, Rule] = {
    "num_classes": whole(0, MAX_CLASSES, note="0: no classifier, the model outputs its features"),
    "in_chans": whole(1, 1024),
    "small_input": FLAG,
    "aux_logits": FLAG,
    "width": number(gt=0, le=4, note="the width multiplier; the papers use 0.25 to 1.4"),
    "image_size": whole(32, 4096).or_none("the paper's 224"),
    "dropout": number(ge=0, lt=1),
    "drop_path": number(ge=0, lt=1),
    "shortcut": choice("A", "B", "C", quoted=True).or_none("no shortcut, the plain net"),
    "downsample_on": choice("1x1", "3x3", quoted=True),
    "tf_same": FLAG,
    "relu6": FLAG,
}


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    *, family: str, input_size: tuple[int, int, int], published: Published | None = None
) -> Callable[[Callable[..., ConvNet]], Callable[..., ConvNet]]:
    """Register a builder under its function name. Refuses duplicates.

    Args:
        family: the family the model belongs to ("resnet", "vgg", ...).
        input_size: default (channels, height, width) the paper uses.
        published: the published params / MACs at that input, shown by ``convnets list``.
    """

    def decorator(builder: Callable[..., ConvNet]) -> Callable[..., ConvNet]:
        name = builder.__name__
        if name in _REGISTRY:
            raise ConfigError(f"model {name!r} is registered twice")
        doc = (builder.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = ModelEntry(name, builder, family, input_size, published, doc[0] if doc else "")
        return builder

    return decorator


def _canonical(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def _loose(name: str) -> str:
    """A name without case, spaces, dashes or underscores: "LeNet-5", "ResNet 50" and "mobilenetv2" as users
    write the papers' names."""
    return "".join(ch for ch in name.lower() if ch not in " -_")


def _lookup(name: str) -> str | None:
    """The registered name ``name`` means: the same up to case and dashes, else up to spaces and separators too
    when that names exactly one model."""
    key = _canonical(name)
    if key in _REGISTRY:
        return key
    matches = [n for n in _REGISTRY if _loose(n) == _loose(name)]
    return matches[0] if len(matches) == 1 else None


def unregister_model(name: str) -> None:
    """Remove a model registered for a while (an experiment's own variant); unknown names are ignored."""
    _REGISTRY.pop(_canonical(name), None)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, e.g. ``list_models("resnet*")``.

    Case, dashes and underscores are ignored as in :func:`model_entry` (``"ResNet-5*"``, ``"mobilenetv*"``).
    """
    _load_families()
    if not isinstance(pattern, str):
        raise ConfigError(f"a model pattern is a string such as 'resnet*'; got {pattern!r}")
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, _canonical(pattern))
                  or fnmatch.fnmatchcase(_loose(n), _loose(pattern)))


def model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; an unknown name gets an error suggesting close names."""
    _load_families()
    if not isinstance(name, str):
        raise UnknownModelError(f"a model is named by a string (`convnets list` shows them); got {name!r}")
    key = _lookup(name)
    if key is None:
        close = difflib.get_close_matches(_canonical(name), _REGISTRY, n=4, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        if Path(name).suffix or "/" in name:
            hint += " (a weights file or run is loaded with convnets.weights.load_weights)"
        raise UnknownModelError(f"Unknown model {name!r}.{hint} `convnets list` shows all {len(_REGISTRY)} models.")
    return _REGISTRY[key]


def create_model(name: str, weights: str | os.PathLike[str] | Mapping[str, Any] | None = None, **kwargs) -> ConvNet:
    """Build a registered model: ``create_model("resnet50", num_classes=3, in_chans=1)``.

    Every builder accepts ``num_classes`` and ``in_chans``; family-specific options (``width``,
    ``shortcut``, ``small_input``...) are documented on each builder.

    Args:
        name: registered name (``convnets list``); case and ``-`` are ignored, and spaces and ``_`` too
            where that names one model (``"LeNet-5"``, ``"ResNet 50"``).
        weights: a registered tag (``"fashion-mnist"``, ``"imagenet"``), a weights file, run
            directory, URL or state dict. The builder arguments the weights were trained with (the
            tag's, or a file's metadata: classes, input channels, ``small_input``...) are used
            unless given here; another ``num_classes`` replaces the classifier with a logged line.

    Raises:
        UnknownModelError: ``name`` is not registered (the message suggests close names).
        UnknownArgumentError: an argument the builder does not take (the message lists those it takes).
        ConfigError: an argument value out of its range (see :data:`BUILDER_ARGUMENTS`).
        WeightsError: weights that cannot be read or do not fit (see :func:`convnets.weights.load`).
    """
    entry = model_entry(name)
    check_arguments(entry.name, kwargs)
    if weights is None:
        model = entry.builder(**kwargs)
        model.name = entry.name
        return model
    from convnets.weights import get_weights, is_tag, load

    # One loading path: the model is built by load(), with the arguments the weights were trained
    # with (a tag's, or a file's metadata and first convolution) unless given here, so that
    # create_model(name, weights=file) is the model load_weights(file) gives.
    model = load(weights, model_name=entry.name, **kwargs)
    model.pretrained = get_weights(entry.name, weights) if is_tag(weights) else None
    return model


def check_arguments(name: str, kwargs: dict[str, Any], *, hide: tuple[str, ...] = ()) -> None:
    """Check builder arguments of model ``name`` without building it.

    Args:
        name: a registered model.
        kwargs: the builder arguments.
        hide: arguments to leave out of the list of those the builder takes (ones the caller sets itself).

    Raises:
        UnknownArgumentError: an argument the builder does not take (the message lists those it takes).
        ConfigError: a value outside the argument's range (the message gives the range).
    """
    entry = model_entry(name)
    for key, value in kwargs.items():
        if not entry.takes(key):
            takes = {k: p for k, p in entry.arguments().items() if k not in hide}
            close = difflib.get_close_matches(str(key), takes, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            listed = ", ".join(f"{k}={p.default!r}" if p.default is not p.empty else k for k, p in takes.items())
            listed = listed or "no arguments" + (f" but {', '.join(hide)}" if hide else "")
            raise UnknownArgumentError(f"{entry.name} takes no argument {key!r}{hint}; it takes {listed}")
        if key in BUILDER_ARGUMENTS:
            BUILDER_ARGUMENTS[key].check(key, value, where=f"{entry.name}: ")


def _load_families() -> None:
    # Importing the models package registers every family; done lazily so that importing the
    # registry alone stays cheap and free of import cycles.
    import convnets.models  # noqa: F401
