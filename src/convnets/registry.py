"""The model registry: a name -> builder dict filled by a decorator.

Builders live next to their family (``convnets/models/<family>.py``) and are registered with
``@register_model(...)``, which also records the facts a user wants before building anything:
the default input size and the published parameter / MAC figures to compare against.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass
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


def unregister_model(name: str) -> None:
    """Remove a model registered for a while (an experiment's own variant); unknown names are ignored."""
    _REGISTRY.pop(_canonical(name), None)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, e.g. ``list_models("resnet*")``."""
    _load_families()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, _canonical(pattern)))


def model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; an unknown name gets an error suggesting close names."""
    _load_families()
    if not isinstance(name, str):
        raise UnknownModelError(f"a model is named by a string (`convnets list` shows them); got {name!r}")
    key = _canonical(name)
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, _REGISTRY, n=4, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownModelError(f"Unknown model {name!r}.{hint} `convnets list` shows all {len(_REGISTRY)} models.")
    return _REGISTRY[key]


def create_model(name: str, weights: str | None = None, **kwargs) -> ConvNet:
    """Build a registered model: ``create_model("resnet50", num_classes=3, in_chans=1)``.

    Every builder accepts ``num_classes`` and ``in_chans``; family-specific options (``width``,
    ``shortcut``, ``small_input``...) are documented on each builder.

    Args:
        name: registered name (``convnets list``); ``-`` and case are ignored.
        weights: a registered tag (``"fashion-mnist"``, ``"imagenet"``), a weights file or a URL.
            The tag's builder arguments (input channels, ``small_input``...) are used unless
            given here; another ``num_classes`` replaces the classifier with a printed line.

    Raises:
        UnknownModelError: ``name`` is not registered (the message suggests close names).
        UnknownArgumentError: an argument the builder does not take (the message lists those it takes).
        ConfigError: an argument value out of its range (see :data:`BUILDER_ARGUMENTS`).
    """
    entry = model_entry(name)
    spec = None
    if weights is not None and _is_tag(weights):
        from convnets.weights import get_weights

        spec = get_weights(entry.name, weights)
        kwargs = {"num_classes": spec.num_classes, "in_chans": spec.input_size[0], **spec.model_kwargs, **kwargs}
    elif weights is not None:  # e.g. a Keras file's tf_same=True: options the weights need, not in their shapes
        from convnets.weights import weights_model_kwargs

        kwargs = {**weights_model_kwargs(weights, entry.name), **kwargs}
    check_arguments(entry.name, kwargs)
    model = entry.builder(**kwargs)
    model.name = entry.name
    if weights is not None:
        from convnets.weights import load_pretrained

        load_pretrained(model, weights)
        model.pretrained = spec
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


def _is_tag(weights: str) -> bool:
    from convnets.weights import is_tag

    return is_tag(weights)


def _load_families() -> None:
    # Importing the models package registers every family; done lazily so that importing the
    # registry alone stays cheap and free of import cycles.
    import convnets.models  # noqa: F401
