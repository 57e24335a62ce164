"""Checkpointing: the training state a run writes (``state.pt``) and reads back, and what a resume may change.

A checkpoint holds everything the rest of the run depends on (the model, optimizer, schedule,
loss scaler and weight average; the epoch, the batch within it and the step; the random
generators; the metrics so far), so that a run resumed from it ends with the same weights, bit
for bit, as one never stopped. It is written atomically: a kill mid-write leaves the previous one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch

from convnets.errors import ConfigMismatchError, RunDirectoryError
from convnets.training.config import TrainConfig, registered_spelling
from convnets.weights import atomic_write
from convnets.weights.files import describe_refusal

STATE_FILE = "state.pt"
STATE_KEYS = frozenset({"model_name", "model", "optimizer", "scheduler", "scaler", "epoch", "position", "step",
                        "best", "elapsed", "skipped_steps", "rng", "cuda_rng", "metrics"})
# What a resumed run may change: how and how long it runs, not what it trains. Every other field
# (model, data, recipe, seed, weights, freezing, weight average, accumulation...) defines the run, and a
# different value for one of them is refused, naming it. max_steps is always this invocation's own (None: to the end).
RESUME_MAY_CHANGE = ("epochs", "max_steps", "progress", "device", "threads", "num_workers", "checkpoint_minutes",
                     "nan_policy", "deterministic", "channels_last", "cache_dir", "sync_every", "compile",
                     "tensorboard")


def write_state(out: Path, state: dict[str, Any]) -> None:
    """Write ``out/state.pt`` atomically."""
    atomic_write(out / STATE_FILE, lambda tmp: save_torch(state, tmp))


def read_state(out: Path, device: torch.device, model_name: str, *, needs: Collection[str] = ()) -> dict[str, Any]:
    """The training state in ``out/state.pt``, checked to be a convnets state of ``model_name``.

    Args:
        out: The run directory.
        device: Where its tensors go.
        model_name: The run's model.
        needs: Keys the run needs beyond :data:`STATE_KEYS` (``ema`` for a run with a weight average).

    Raises:
        RunDirectoryError: the file is damaged, unsafe (a pickle that is not plain tensors and
            containers) or not a convnets training state.
        ConfigMismatchError: a state of another model.
    """
    path = out / STATE_FILE
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except OSError as err:
        if err.filename is not None:  # the file itself was refused (missing, unreadable, a folder): the OS says why
            raise
        # The zip reader's seek past the end of a file cut short: a bare EINVAL that names nothing.
        raise RunDirectoryError(f"{path} cannot be resumed: it is not a readable training state (truncated: "
                                f"{err.strerror or err}); the run's weights are in best.safetensors and "
                                "last.safetensors if it wrote them") from err
    except Exception as err:  # torch reports a damaged or unsafe file with many types; all mean "unusable"
        reason = describe_refusal(path, err)
        raise RunDirectoryError(f"{path} cannot be resumed: it is not a readable training state ({reason}); the "
                                "run's weights are in best.safetensors and last.safetensors if it wrote them"
                                ) from err
    missing = sorted((STATE_KEYS | set(needs)) - set(state)) if isinstance(state, dict) else sorted(STATE_KEYS)
    if missing:
        raise RunDirectoryError(f"{path} is not a convnets training state (it has no {', '.join(missing)})")
    # A run begun before names were stored as the registry spells them recorded the name as typed ("LeNet5").
    if registered_spelling(str(state["model_name"])) != registered_spelling(model_name):
        raise ConfigMismatchError(f"{path} is a run of {state['model_name']}, not {model_name}")
    return state


def rng_state() -> dict[str, Any]:
    """The random generators' states, as a checkpoint keeps them."""
    return {"rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["rng"].cpu())
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])


def resumed_config(config: TrainConfig, out: Path, given_names: Collection[str] = ()
                    ) -> tuple[TrainConfig, dict[str, tuple[Any, Any]]]:
    """The configuration of the run in ``out``, with the changes a resume may make (:data:`RESUME_MAY_CHANGE`).

    A field counts as given when named in ``given_names`` or when it differs from
    :class:`TrainConfig`'s default. A given field that defines the run and differs from the run's
    value is refused, naming each such option with both values.

    Returns:
        The configuration to continue with, and the fields it changes as ``{name: (old, new)}``.
    """
    saved = _saved_config(out)
    # A run begun before names were stored as the registry spells them recorded the name as typed ("LeNet5").
    if not isinstance(saved.get("model"), str) or registered_spelling(saved["model"]) != config.model:
        raise ConfigMismatchError(f"{out} is a run of {saved.get('model')}, not {config.model}")
    defaults = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in config.to_dict().items()
             if k not in ("model", "out", "resume") and (k in given_names or v != defaults[k])}
    _find_relative_data(saved, given, out)
    if saved.get("image_size") is None and "image_size" not in given:
        saved["image_size"] = _size_of_an_older_run(out, saved)
    if saved.get("cache_features") and saved.get("augment") not in (None, "none"):
        # A cached run begun before cached runs recorded augment none holds its recipe's augmentation, which never
        # reached its features: what it did is none, and a resume asking for none (the practice experiments' cached
        # regime now does) was refused as another setting.
        saved["augment"] = "none"
    conflicts = [f"{option_name(k)} {shown(v)} (the run has {shown(saved.get(k))})" for k, v in given.items()
                 if k not in RESUME_MAY_CHANGE and not _same(saved.get(k), v)]
    if conflicts:
        raise ConfigMismatchError(f"cannot resume {out} with other settings than it began with: "
                                  f"{'; '.join(conflicts)}. Resume without them, or start a new run with another "
                                  f"--out (may change on resume: {', '.join(map(option_name, RESUME_MAY_CHANGE))})")
    values = {**saved, **{k: v for k, v in given.items() if k in RESUME_MAY_CHANGE},
              "max_steps": config.max_steps, "resume": True, "out": str(out)}
    changed = {k: (saved.get(k), values[k]) for k in RESUME_MAY_CHANGE if not _same(saved.get(k), values[k])}
    return TrainConfig(**values), changed


def _size_of_an_older_run(out: Path, saved: dict[str, Any]) -> int | None:
    """The side an image-folder run trained at, from its weights' metadata, when its checkpoint predates recording
    the size in the data's identity; else None (the data decides it, and the checkpoint's record is checked).

    An image folder's default size was once its first image's shorter side and is now the median of several: without
    this such a run resumed at another resolution, silently (its checkpoint had nothing to compare).
    """
    from convnets.data.datasets import DATASET_NAMES
    from convnets.weights import read_metadata

    if not isinstance(saved.get("data"), str) or saved["data"] in DATASET_NAMES or saved.get("weights"):
        return None  # a dataset's size, or pretrained weights' (with their resize and crop), never changed
    try:
        state = torch.load(out / STATE_FILE, map_location="cpu", weights_only=True, mmap=True)
        recorded = "image_size" in state["data"]
        size = read_metadata(out / "last.safetensors").get("input_size")
    except Exception:  # nothing to go by: read_state and the data's check report what is wrong
        return None
    if recorded or not isinstance(size, list) or len(size) != 3 or size[1] != size[2]:
        return None
    return int(size[1])


def _find_relative_data(saved: dict[str, Any], given: dict[str, Any], out: Path) -> None:
    """Point the run's data folder, data_dir and weights file at the paths ``given`` names, where the run recorded
    them relative to the folder it began in (runs before those paths were made absolute) and they find nothing
    from here.

    The data's identity (classes, files, labels) is still checked against the checkpoint once it is read.

    Raises:
        ConfigMismatchError: no given path to take instead.
    """
    from convnets.data.datasets import DATASET_NAMES
    from convnets.weights import is_tag
    from convnets.weights.io import is_url

    for key in ("data", "data_dir", "weights"):
        value = saved.get(key)
        if (not isinstance(value, str) or (key == "data" and value in DATASET_NAMES) or Path(value).is_absolute()
                or Path(value).exists() or (key == "weights" and (is_tag(value) or is_url(value)))):
            continue
        instead = given.get(key)
        if isinstance(instead, str) and (Path(instead).expanduser().exists() if key == "weights" else
                                         Path(instead).expanduser().is_dir()):
            saved[key] = instead
            continue
        raise ConfigMismatchError(f"{out} was trained on {option_name(key)} {value}, a path relative to the folder "
                                  f"the run began in, and nothing is there from here: resume from that folder, or "
                                  f"pass {option_name(key)} with its path")


def saved_model(out: Path) -> str | None:
    """The model of the run in ``out`` as its config.json says, or None when that cannot be read."""
    try:
        saved = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return saved.get("model") if isinstance(saved, dict) else None


def data_identity(dataset: Any) -> dict[str, Any]:
    """What a resumed run must find again: the classes, and each split's size and a hash of its labels
    and (for an image folder) of its files' paths within the folder.

    Cheap (no file is read or stat'ed): it catches images added, removed or moved to another class
    and renamed classes, which would otherwise shift the resumed epoch or swap what the model learnt.
    """
    # The size an image folder's images come out at is decided from the images when no --image-size is given:
    # recorded, so that images resized in place do not silently change the resolution of a resumed run.
    identity: dict[str, Any] = {"classes": [str(c) for c in dataset.classes],
                                "image_size": [dataset.channels, *dataset.image_size]}
    for split in ("train", "test"):
        part = getattr(dataset, split)
        digest = hashlib.sha256(part.labels.cpu().numpy().astype("<i8").tobytes())
        for path, _ in getattr(part, "samples", ()):
            digest.update(os.path.relpath(path, dataset.source or ".").encode("utf-8", "surrogateescape") + b"\0")
        identity[split] = [len(part), digest.hexdigest()]
    return identity


def check_same_data(saved: dict[str, Any], now: dict[str, Any], data: str, out: Path) -> None:
    """A ConfigMismatchError saying what changed when the data of a resumed run is not what it began with.

    What a checkpoint did not record (written by an earlier version) is not compared.
    """
    now = {k: v for k, v in now.items() if k in saved}
    if saved == now:
        return

    def sizes(identity: dict[str, Any]) -> list[Any]:
        return [(identity.get(split) or [None])[0] for split in ("train", "test")]

    if saved.get("classes") != now["classes"]:
        what = f"its classes were {_listed(saved.get('classes'))}, now {_listed(now['classes'])}"
    elif sizes(saved) != sizes(now):
        (train_was, test_was), (train_now, test_now) = sizes(saved), sizes(now)
        what = f"it had {train_was} training and {test_was} test images, now {train_now} and {test_now}"
    elif saved.get("image_size") != now.get("image_size"):
        (c, h, w), (c_now, h_now, w_now) = saved["image_size"], now["image_size"]
        what = f"its images came out at {c}x{h}x{w}, now {c_now}x{h_now}x{w_now}"
    else:
        what = "as many images, but other files or labels"
    raise ConfigMismatchError(f"cannot resume {out}: the data {data} changed since the run began ({what}); a "
                              "resumed run must see the same data: restore it, or start a new run with another --out")


def _listed(names: Any, limit: int = 6) -> str:
    names = list(names or [])
    return ", ".join(map(str, names[:limit])) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _saved_config(out: Path) -> dict[str, Any]:
    """The fields of ``out/config.json`` of a run that has a checkpoint to resume."""
    path = out / "config.json"
    if not (out / STATE_FILE).exists():
        why = " (the run stopped before its first checkpoint: start it again without --resume)" if path.exists() else ""
        raise FileNotFoundError(f"nothing to resume in {out}: no {STATE_FILE} there{why}")
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise RunDirectoryError(f"{path} is missing: the run's configuration is needed to resume it") from err
    except ValueError as err:  # a truncated or hand-edited file
        raise RunDirectoryError(f"{path} is damaged ({err}): it cannot be resumed until the file is repaired") from err
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    if not isinstance(values, dict) or "model" not in values or not set(values) <= known:
        unknown = sorted(set(values) - known) if isinstance(values, dict) else type(values).__name__
        raise RunDirectoryError(f"{path} is not a convnets run configuration (unexpected: {unknown})")
    return values


# Options whose command-line spelling is not the field's name with dashes.
_OPTIONS = {"num_workers": "--workers", "model_kwargs": "--model-arg", "progress": "--no-progress",
            "weights_layout": "--layout"}


def option_name(field_name: str) -> str:
    return _OPTIONS.get(field_name, "--" + field_name.replace("_", "-"))


def shown(value: Any) -> str:
    if value is None:
        return "none"
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list, tuple)) else str(value)


def _same(a: Any, b: Any) -> bool:
    """Equal, as JSON would store them, or two spellings of one existing path (``data/`` and ``./data``)."""
    if a == b or json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str):
        return True
    paths = [Path(v).expanduser() for v in (a, b) if isinstance(v, str) and v]
    return len(paths) == 2 and all(p.exists() for p in paths) and paths[0].resolve() == paths[1].resolve()


def save_torch(obj: Any, path: str) -> None:
    """``torch.save`` through a Python file: then a full disk is an OSError, not a RuntimeError of torch's writer.

    A second Ctrl-C (or SIGTERM) stops the run at once, even mid-write; torch's writer then fails to close
    its archive and reports that as a RuntimeError, which is given back as the interruption it is.
    """
    with open(path, "wb") as f:
        try:
            torch.save(obj, f)
        except RuntimeError as err:
            if isinstance(err.__context__, KeyboardInterrupt):
                raise err.__context__ from None
            raise
