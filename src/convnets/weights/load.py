"""The one way weights get into a model: :func:`load`.

Every path uses it: ``create_model(name, weights=...)`` and ``train``/``transfer --weights``
(through :func:`load_pretrained`), ``evaluate``/``export`` loading a run (:func:`load_weights`)
and :func:`load_peer_weights`. So a checkpoint gives the same model whichever way it comes in:
the same layout conversion, BatchNorm eps, classifier and auxiliary-head handling.

A source is a registered tag (``"fashion-mnist"``), a local file (``.safetensors``, a
``.pt``/``.pth`` read without unpickling code, or Keras Applications' ``.h5``/``.weights.h5``:
:mod:`convnets.weights.keras`), a run directory (its ``best.safetensors``), an http(s) URL
(downloaded once into the cache) or a state dict. Its keys may be ours or a peer library's
(:mod:`convnets.weights.layouts`), with or without the ``module.``/``_orig_mod.`` prefixes of
DataParallel and ``torch.compile``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from convnets.errors import (
    ConfigError,
    ConfigMismatchError,
    ConvnetsError,
    LayoutError,
    WeightsError,
    WeightsMismatchError,
)
from convnets.weights import keras, specs
from convnets.weights.files import (
    check_state_dict,
    check_values,
    file_format,
    read_metadata,
    read_state_dict,
    tensors_of,
)
from convnets.weights.io import cached_download, discard, expected_sha256, hash_matches, is_url, sha256_of
from convnets.weights.layouts import (
    LAYOUTS,
    PeerLayout,
    convert,
    detect_layout,
    is_own_layout,
    strip_wrapper_prefixes,
)
from convnets.weights.specs import WeightSpec, get_weights, is_tag

if TYPE_CHECKING:
    from convnets.data.preprocess import Preprocessing
    from convnets.registry import ModelEntry

logger = logging.getLogger("convnets.weights")

Source = str | os.PathLike[str] | Mapping[str, torch.Tensor]
# Every name the ``layout`` of load() takes: state-dict layouts (torchvision, timm) and Keras files' variants.
LAYOUT_NAMES = (*LAYOUTS, *keras.KERAS_LAYOUTS)

# Our classifier layers: the main head's final layer and GoogLeNet's auxiliary ones. A model for
# another number of classes keeps its own, freshly initialised.
_CLASSIFIER_KEY = re.compile(r"(?:aux\.[^.]+\.)?head\.fc\.[^.]+")


@dataclass
class Checkpoint:
    """A state dict in our naming, with what is known about where it came from.

    Attributes:
        state: the tensors, renamed into our layout, wrapper prefixes removed.
        label: how messages name it (``torchvision:resnet50 checkpoint resnet50-0676ba61.pth``).
        layout: the peer layout it was converted from; None for our own.
        spec: the registry entry, for a tag.
        meta: the checked metadata of one of our safetensors files, else empty; for a Keras file, the
            builder arguments its weights need (``model_kwargs``).
    """

    state: dict[str, torch.Tensor]
    label: str
    layout: PeerLayout | None = None
    spec: WeightSpec | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def model_name(self) -> str | None:
        """The model the weights are for, where the tag, metadata or layout says it."""
        if self.spec is not None:
            return self.spec.model
        return self.meta.get("model") or (self.layout.model if self.layout else None)

    @property
    def num_classes(self) -> int:
        """Outputs of the checkpoint's classifier (0 when it holds none)."""
        return next((t.shape[0] for k, t in sorted(self.state.items()) if k.startswith("head.fc.") and t.ndim), 0)

    @property
    def has_aux(self) -> bool:
        return any(k.startswith("aux.") for k in self.state)

    def build_kwargs(self, model_name: str) -> dict[str, Any]:
        """Builder arguments of the model the weights fit: classes, input channels, the spec's or file's options."""
        if self.spec is not None:
            return {"num_classes": self.spec.num_classes, "in_chans": self.spec.input_size[0],
                    **self.spec.model_kwargs}
        kwargs = dict(self.meta.get("model_kwargs", {}))
        in_chans = self.meta.get("in_chans") or first_conv_channels(model_name, self.state, kwargs)
        return {"num_classes": self.meta.get("num_classes", self.num_classes), "in_chans": in_chans or 3, **kwargs}


def weights_path(spec: WeightSpec, cache_dir: str | Path | None = None) -> Path:
    """A local, checked file holding ``spec``'s weights: the shipped file, or the URL downloaded once.

    Raises:
        WeightsError: the shipped file is missing or damaged (its sha256 differs from the registry's).
        DownloadError: the download failed or gave another file.
    """
    if spec.is_url:
        return cached_download(spec.source, sha256=spec.sha256, cache_dir=cache_dir)
    path = specs.PACKAGE_DIR / spec.source
    if not path.is_file():
        raise WeightsError(f"{path}: the shipped weights file is missing (a broken install?)")
    if sha256_of(path) != spec.sha256:
        raise WeightsError(f"{path}: its sha256 differs from the registry's: the file is damaged (reinstall convnets)")
    return path


def local_path(source: str | os.PathLike[str], *, sha256: str | None = None,
               cache_dir: str | Path | None = None) -> Path:
    """The local file of a path or URL: a run directory gives its ``best.safetensors``, a URL its cached copy.

    Raises:
        WeightsError: another URL scheme, a directory that is not a run, or a local file with another sha256.
        DownloadError: the download failed or gave another file.
    """
    text = os.fspath(source)
    if is_url(text):
        return cached_download(text, sha256=sha256, cache_dir=cache_dir)
    if "://" in text:
        raise WeightsError(f"{text}: only local paths and http(s) URLs are supported")
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "best.safetensors").is_file():
            return path / "best.safetensors"
        raise WeightsError(f"{path} is a directory, not a weights file (.safetensors, .pth) or a run directory "
                           "holding best.safetensors")
    expected = expected_sha256(sha256)  # only an explicit hash: "resnet50-20240101.pth" is a date, not a digest
    if expected and path.is_file() and not hash_matches(path, expected):
        raise WeightsError(f"sha256 mismatch for {path}: expected {expected}, got {sha256_of(path)}")
    return path


def check_source(source: object) -> None:
    """Refuse, in words, a weights source of no kind :func:`load` takes (before it is mistaken for a path).

    Raises:
        WeightsError: not a tag, path, URL or state dict, or an empty string.
    """
    if isinstance(source, nn.Module):
        raise WeightsError(f"weights must be a tag, a path, a URL or a state dict, got a {type(source).__name__} "
                           "model: pass its state_dict()")
    if isinstance(source, Mapping) or (isinstance(source, os.PathLike | str) and os.fspath(source).strip()):
        return
    got = "an empty string" if isinstance(source, str) else repr(source)[:80]
    hint = " (a path as bytes: decode it)" if isinstance(source, bytes) else ""
    raise WeightsError(f"weights must be a tag (such as 'fashion-mnist'), a path, an http(s) URL or a state dict; "
                       f"got {got}{hint}")


def _resolve(source: str | os.PathLike[str], model_name: str | None, sha256: str | None,
             cache_dir: str | Path | None) -> tuple[Path, WeightSpec | None, str | None]:
    """The local file of a tag, path or URL, the spec of a tag, and the URL the file was downloaded from."""
    check_source(source)
    if not is_tag(source):
        text = os.fspath(source)
        return local_path(text, sha256=sha256, cache_dir=cache_dir), None, text if is_url(text) else None
    if not model_name:
        raise WeightsError(f"{os.fspath(source)!r} is a weights tag: name the model it is for")
    spec = get_weights(model_name, os.fspath(source))
    return weights_path(spec, cache_dir), spec, spec.source if spec.is_url else None


@contextlib.contextmanager
def _reading(path: Path, url: str | None) -> Iterator[None]:
    """Reading ``path``: a file downloaded from ``url`` that cannot be read leaves the cache, to be fetched again."""
    try:
        yield
    except WeightsError as err:
        if url is None:
            raise
        discard(path)
        raise WeightsError(f"{err} (downloaded from {url}; removed from the cache)") from err


def open_checkpoint(source: Source, *, model_name: str | None = None, layout: str | None = None,
                    sha256: str | None = None, cache_dir: str | Path | None = None) -> Checkpoint:
    """Read ``source`` into a :class:`Checkpoint` in our naming (metadata checked before the tensors are read).

    Args:
        source: a tag, path, run directory, URL or state dict.
        model_name: the model a tag belongs to.
        layout: a peer layout name (:data:`~convnets.weights.layouts.LAYOUTS`); detected when None.
        sha256: expected digest (or prefix) of a file or download.
        cache_dir: download cache (``$CONVNETS_CACHE`` or ``~/.cache/convnets/weights`` by default).

    Raises:
        WeightsError: unknown tag, unreadable or implausible file, unknown layout.
    """
    spec, meta = None, {}
    if isinstance(source, Mapping):
        state, label = tensors_of(source, "state dict"), "state dict"
    else:
        if layout is not None and is_tag(source):  # refused as the command line refuses it, before any download
            raise ConfigMismatchError(f"layout {layout!r} (--layout) is the layout of a weights file; registered "
                                      f"weights ({source!r}) have their own")
        path, spec, url = _resolve(source, model_name, sha256, cache_dir)
        with _reading(path, url):
            if keras.is_keras_file(path):
                found = keras.read_keras(path, spec.peer if spec is not None else layout)
                return Checkpoint(found.state, f"{found.layout.name} checkpoint {path.name}", found.layout, spec,
                                  {"model_kwargs": found.model_kwargs})
            if path.is_file() and file_format(path) == "safetensors":
                meta = read_metadata(path)
            if layout is not None and "model" in meta:
                raise LayoutError(f"{path} is a convnets weights file; --layout (layout=) is for torchvision, timm "
                                  "and Keras checkpoints")
            state, label = read_state_dict(path), path.name
    state = strip_wrapper_prefixes(state)
    name = spec.peer if spec is not None else layout
    if name is None and not is_own_layout(state):
        name = detect_layout(state)
    if name is None:
        return Checkpoint(state, label if isinstance(source, Mapping) else f"weights file {label}", None, spec, meta)
    if name in keras.KERAS_LAYOUTS:
        raise LayoutError(f"{name} is a layout of Keras weights files; {label} is a PyTorch state dict, whose layouts "
                          f"are {', '.join(LAYOUTS)}")
    peer, state = convert(state, name)
    if peer.model_kwargs:  # what the layout needs beside the shapes (timm's tf_ EfficientNets: tf_same)
        meta = {**meta, "model_kwargs": {**peer.model_kwargs, **meta.get("model_kwargs", {})}}
    return Checkpoint(state, f"{peer.name} checkpoint {label}", peer, spec, meta)


def first_conv_channels(model_name: str, state: Mapping[str, torch.Tensor],
                        model_kwargs: Mapping[str, Any]) -> int | None:
    """Input channels of the weights: the second dimension of the model's first convolution in ``state``."""
    from convnets.registry import create_model

    try:
        with torch.device("meta"):  # only the key order is needed: nothing is allocated
            keys = create_model(model_name, **model_kwargs).state_dict()
    except (ConvnetsError, TypeError, ValueError):
        return None  # the fit check that follows names what is wrong
    first = next((k for k, t in keys.items() if t.ndim == 4 and k in state and state[k].ndim == 4), None)
    return int(state[first].shape[1]) if first else None


def load(source: Source, model: nn.Module | None = None, *, model_name: str | None = None,
         num_classes: int | None = None, layout: str | None = None, sha256: str | None = None,
         cache_dir: str | Path | None = None, new_head: bool = True, **model_kwargs: Any) -> nn.Module:
    """Load weights from any source into ``model``, or into the model they name.

    The checkpoint is converted to our layout (peer layouts are detected), its fit is checked
    against the model (on the ``meta`` device, before a model it names is built), and then:

    - a classifier for another number of classes is left as the model's own, freshly
      initialised one (``new_head=True``; logged), or refused (``new_head=False``);
    - GoogLeNet's auxiliary classifiers: a checkpoint without them removes the model's (as
      ``aux_logits=False`` would have built it), and the checkpoint's are dropped for a model
      built without them (both logged);
    - BatchNorm layers get the eps the weights were trained with (torchvision's EfficientNet-B5
      to B7: 1e-3; one of our files records it when it is not 1e-5).

    Args:
        source: a tag (with ``model`` or ``model_name``), path, run directory, URL or state dict.
        model: the model to load into; built when None from ``model_name`` or what the weights
            name (tag, metadata, layout), with their class count, channels and builder options.
        model_name: the model to build (and a tag's owner) when ``model`` is None.
        num_classes: outputs of the model built; the checkpoint's when None.
        layout: the peer layout to convert from; detected when None.
        sha256: expected sha256 (or its first 8+ hex digits) of the file or download.
        cache_dir: download cache.
        new_head: replace a classifier that does not fit instead of refusing it.
        **model_kwargs: builder arguments overriding the weights' own (only when building).

    Returns:
        The model with the weights loaded (its train/eval mode unchanged).

    Raises:
        WeightsMismatchError: keys missing, unexpected or mis-shaped, listed by name.
        LayoutError: unknown layout, or keys no rename rule covers.
        WeightsError: unreadable, damaged or implausible file, unknown tag, wrong sha256.
        DownloadError: a URL that cannot be downloaded.
    """
    if model is not None and (model_kwargs or num_classes is not None):
        given = ", ".join([*model_kwargs, *(["num_classes"] if num_classes is not None else [])])
        raise ConfigError(f"builder arguments ({given}) are for a model load() builds; a model was given")
    ckpt = open_checkpoint(source, model_name=model_name or getattr(model, "name", None), layout=layout,
                           sha256=sha256, cache_dir=cache_dir)
    if model is None:
        model = _build(ckpt, model_name, num_classes, model_kwargs, new_head)
    else:
        if ckpt.model_name and getattr(model, "name", ckpt.model_name) != ckpt.model_name:
            # Same keys and shapes can still mean another network (torchvision's ResNet-50 puts the
            # stride on the 3x3, our resnet50 on the 1x1): load, but say so.
            logger.warning("%s: the weights are for %s; loading them into %s", ckpt.label, ckpt.model_name,
                           model.name)
        _check_options(model, ckpt)
    state, notes = _fit(model, ckpt, new_head)
    into_meta = any(t.is_meta for t in model.state_dict().values())
    if into_meta and not all(v.is_meta for v in ckpt.state.values()):
        # PyTorch would copy nothing into a meta tensor and warn once per layer: a "loaded" model without weights.
        raise WeightsError(f"{getattr(model, 'name', '') or type(model).__name__} is on the meta device (shapes "
                           f"without values): the weights of {ckpt.label} cannot go into it; build the model on a "
                           "real device, or let load() build it")
    check_values({k: v for k, v in state.items() if k in ckpt.state}, ckpt.label, into_meta=into_meta)
    model.load_state_dict(state)
    notes += _apply_training_settings(model, ckpt)
    for note in notes:
        logger.warning("%s", note)
    return model


def _build(ckpt: Checkpoint, model_name: str | None, num_classes: int | None, model_kwargs: dict[str, Any],
           new_head: bool) -> nn.Module:
    """The model the checkpoint names, checked on the meta device before it is built for real."""
    from convnets.registry import create_model

    name = model_name or ckpt.model_name
    if name is None:
        raise WeightsError(f"{ckpt.label}: no model name in its metadata; pass the model to load into")
    kwargs = {**ckpt.build_kwargs(name), **({} if num_classes is None else {"num_classes": num_classes}),
              **model_kwargs}
    try:
        with torch.device("meta"):
            probe = create_model(name, **kwargs)
    except (TypeError, ConfigError) as err:  # e.g. a builder argument in the metadata that the builder does not take
        other = ckpt.model_name if ckpt.model_name not in (None, name) else None
        # Options of the model the weights are for (Keras's relu6) refused by another: that other model is the news.
        why = f"the weights are for {other}, whose options {name} does not take ({err})" if other else err
        raise WeightsError(f"{ckpt.label}: cannot build {name} with {kwargs}: {why}") from err
    _check_options(probe, ckpt)  # options the weights need, named before the shapes that follow from them
    _fit(probe, ckpt, new_head)  # a misfit is refused before anything is allocated
    return create_model(name, **kwargs)


def _check_options(model: nn.Module, ckpt: Checkpoint) -> None:
    """A peer's weights that need builder options (Keras's ``tf_same``, ``relu6``) refuse a model built without.

    The shapes cannot tell: TensorFlow's padding or ReLU6 change the outputs, not the parameters.
    """
    needs = ckpt.meta.get("model_kwargs", {}) if ckpt.layout is not None else {}
    wrong = {k: v for k, v in needs.items() if hasattr(model, k) and getattr(model, k) != v}
    if wrong:
        name = getattr(model, "name", "") or type(model).__name__
        given = ", ".join(f"{k}={getattr(model, k)!r}" for k in wrong)
        args = ", ".join(f"{k}={v!r}" for k, v in needs.items())
        raise WeightsMismatchError(f"{ckpt.label} needs {name} built with {args}; this one has {given}: build it "
                                   f"with create_model({name!r}, {args}), or let load() build it")


def _fit(model: nn.Module, ckpt: Checkpoint, new_head: bool) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The checkpoint's state adjusted to ``model`` (aux heads, new classifier), checked key by key.

    Returns:
        The state to load, and the lines that say what was adjusted.
    """
    state, notes = dict(ckpt.state), []
    own = model.state_dict()
    if getattr(model, "aux", None) is not None and not ckpt.has_aux:
        # torchvision's googlenet(weights=...) and any fine-tune of it save no auxiliary heads.
        model.aux = None
        own = model.state_dict()
        notes.append(f"{ckpt.label} has no auxiliary classifiers: the model's are removed (as aux_logits=False "
                     "builds it)")
    elif ckpt.has_aux and not any(k.startswith("aux.") for k in own):
        aux = [k for k in state if k.startswith("aux.")]
        state = {k: v for k, v in state.items() if not k.startswith("aux.")}
        notes.append(f"the model has no auxiliary classifiers: not loading the {len(aux)} aux.* tensors of "
                     f"{ckpt.label}")
    if new_head:
        layers = {k.rpartition(".")[0] for k in own
                  if _CLASSIFIER_KEY.fullmatch(k) and (k not in state or state[k].shape != own[k].shape)}
        if not any(k.startswith("head.") for k in state):
            # Features only (Keras's include_top=False): VGG's hidden layers are new as well as its classifier.
            layers |= {k.rpartition(".")[0] for k in own if k.startswith("head.")}
        if layers:
            dropped = sorted(k for k in state if k.rpartition(".")[0] in layers)
            state = {k: v for k, v in state.items() if k.rpartition(".")[0] not in layers}
            state |= {k: v for k, v in own.items() if k.rpartition(".")[0] in layers}
            held = f"{ckpt.num_classes} classes" if ckpt.num_classes else "no classifier"
            hidden = sorted(layer for layer in layers if not _CLASSIFIER_KEY.fullmatch(f"{layer}.weight"))
            new = "new classifier" if not hidden else "new " + ", ".join(sorted(layers))
            notes.append(f"{ckpt.label} has {held}, the model {getattr(model, 'num_classes', 0)}: {new} "
                         f"(freshly initialised); not loaded: {', '.join(dropped) or 'nothing'}")
    check_state_dict(model, state, source=ckpt.label)
    return state, notes


def _apply_training_settings(model: nn.Module, ckpt: Checkpoint) -> list[str]:
    """Set the BatchNorm eps that comes with the weights (not in the state dict); returns what to tell the user."""
    notes = []
    eps = ckpt.layout.bn_eps if ckpt.layout else ckpt.meta.get("bn_eps")
    if eps is not None:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eps = eps
        notes.append(f"{ckpt.label}: BatchNorm eps set to {eps:g}, as the weights were trained with")
    if ckpt.layout and ckpt.layout.note:
        notes.append(f"{ckpt.layout.name}: {ckpt.layout.note}")
    return notes


# --------------------------------------------------------------------------------------------
# The named paths, each a call of load()
# --------------------------------------------------------------------------------------------


def load_weights(path: str | Path, model: nn.Module | None = None, **model_kwargs: Any) -> nn.Module:
    """Load a weights file of ours into ``model``, or into the model its metadata names.

    Exact: a classifier of another size is refused, not replaced (evaluation, export, resume).

    Raises:
        WeightsMismatchError: the file was saved from another architecture or head size.
        WeightsError: a damaged file, or metadata that is missing, of the wrong type or implausible.
    """
    return load(path, model, new_head=False, **model_kwargs)


def load_pretrained(model: nn.Module, weights: str | Path, cache_dir: str | Path | None = None,
                    layout: str | None = None) -> WeightSpec | None:
    """Load ``weights`` into ``model``: a registered tag (``"fashion-mnist"``), a file, run directory or URL.

    A classifier for another number of classes is replaced, with a logged line. ``layout`` names a peer
    file's layout (detected from its keys when None).

    Returns:
        The spec for a registered tag, None otherwise.
    """
    load(weights, model, cache_dir=cache_dir, layout=layout)
    return get_weights(model.name, str(weights)) if is_tag(weights) else None


def load_peer_weights(source: Source, model: nn.Module | None = None, *, num_classes: int | None = None,
                      layout: str | None = None, cache_dir: str | Path | None = None,
                      sha256: str | None = None) -> nn.Module:
    """Load a peer checkpoint (torchvision, timm), or one of ours, into our model.

    ``load_peer_weights("https://download.pytorch.org/models/resnet50-0676ba61.pth")`` builds
    ``resnet50_torchvision`` with the published weights; ``num_classes=3`` gives it a fresh
    3-way classifier. See :func:`load` for the arguments.
    """
    if model is not None and num_classes is not None and num_classes != getattr(model, "num_classes", num_classes):
        raise WeightsError(f"num_classes={num_classes} but the given model has {model.num_classes} outputs")
    return load(source, model, num_classes=None if model is not None else num_classes, layout=layout,
                cache_dir=cache_dir, sha256=sha256)


def weights_preprocessing(weights: str | Path, model: str, layout: str | None = None) -> dict[str, Any]:
    """Input size, normalisation and builder arguments that ``weights`` were trained with.

    ``layout`` names a peer file's layout (:func:`load`'s), detected from its keys when None.

    From the registry for a tag and from the metadata of one of our files. Otherwise the input
    channels come from the first convolution's weights; a peer layout gives the peer's recipe
    (torchvision's per-model resize, crop and filter; ImageNet's mean/std, 0.5/0.5 for
    torchvision's GoogLeNet; a Keras mode), and a file of our own layout without metadata gives
    ``mean``/``std`` None: normalise the data with its own statistics, as its training did with
    the data it had (any normalisation it used put the inputs at mean 0 and std 1, which the new
    data's own statistics reproduce), and the height and width None (the data's own size, or the
    model's fixed one).

    Returns:
        ``input_size`` (C, H, W; H and W may be None), ``mean``, ``std`` (or None), ``model_kwargs``,
        ``classes`` (or None) and ``preprocessing``: the whole recipe as a
        :class:`~convnets.data.preprocess.Preprocessing`, or None where the data's own statistics are used.
    """
    from convnets.data.preprocess import Preprocessing

    if is_tag(weights):
        spec = get_weights(model, str(weights))
        prep = Preprocessing.from_spec(spec)
        return dict(input_size=(prep.channels, *prep.size), mean=spec.mean, std=spec.std,
                    model_kwargs=spec.model_kwargs, classes=list(spec.categories) or None, preprocessing=prep)
    path, _, url = _resolve(weights, model, None, None)
    with _reading(path, url):
        if keras.is_keras_file(path):  # names and shapes only: the tensors are read when loading
            found = keras.read_keras(path, layout, tensors=False)
            prep = layout_preprocessing(found.layout, 3)
            return dict(input_size=(3, *prep.size), mean=found.layout.mean, std=found.layout.std,
                        model_kwargs=_taken(model, found.model_kwargs), classes=None, preprocessing=prep)
        meta = read_metadata(path) if path.is_file() and file_format(path) == "safetensors" else {}
        if "preprocessing" in meta or ("input_size" in meta and "mean" in meta and "std" in meta):
            # One of ours: the header says it all (checked by read_metadata).
            prep = Preprocessing.from_metadata(meta)
            return dict(input_size=(prep.channels, *prep.size), mean=prep.mean, std=prep.std,
                        model_kwargs=meta.get("model_kwargs", {}), classes=meta.get("classes"), preprocessing=prep)
        ckpt = open_checkpoint(path, model_name=model, layout=layout)
    kwargs = ckpt.meta.get("model_kwargs", {})  # the file's own, or what its peer layout needs
    channels = meta.get("in_chans") or first_conv_channels(model, ckpt.state, kwargs)
    if ckpt.layout is not None:  # the peer's statistics are RGB's; other channel counts bring their own data
        if (channels or 3) == 3:
            prep = layout_preprocessing(ckpt.layout, 3)
            return dict(input_size=(3, *prep.size), mean=prep.mean, std=prep.std, model_kwargs=kwargs, classes=None,
                        preprocessing=prep)
        side = ckpt.layout.crop or _entry(ckpt.layout.model).input_size[1]
        return dict(input_size=(channels, side, side), mean=None, std=None, model_kwargs=kwargs, classes=None,
                    preprocessing=None)
    return dict(input_size=(channels, None, None), mean=None, std=None, model_kwargs=kwargs,
                classes=meta.get("classes"), preprocessing=None)


def layout_preprocessing(layout: PeerLayout, channels: int = 3) -> Preprocessing:
    """A peer layout's published recipe; the crop is our model's input size where the layout names none."""
    from convnets.data.preprocess import Preprocessing

    side = layout.crop or _entry(layout.model).input_size[1]
    return Preprocessing((side, side), layout.resize, layout.interpolation, channels=channels, mean=layout.mean,
                         std=layout.std)


def _entry(model: str) -> ModelEntry:
    from convnets.registry import model_entry

    return model_entry(model)


def _taken(model: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments ``model``'s builder takes (weights for another model are refused when loaded, by shape)."""
    entry = _entry(model)
    return {k: v for k, v in kwargs.items() if entry.takes(k)}
