"""Transfer learning: reuse a trained network for new classes.

The case studies' advice, by how much labelled data there is:

- little (tens of images per class): freeze everything but a new softmax layer, and since the
  frozen trunk then computes the same thing every epoch, run it once and train the head on the
  cached activations;
- more (hundreds per class): freeze the early stages (generic edges and textures) and fine-tune
  the later ones with the head, the pretrained layers at a lower learning rate;
- a lot (thousands per class): use the weights only as the initialisation and train everything.

:func:`freeze` freezes by stage names (``"stem,stages.0"``), up to a stage (``"stages.0-3"``,
``"3"`` for the first three stages), ``"all-but-head"``, ``"none"`` or ``"auto"``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch

from convnets.errors import ConfigError
from convnets.models.base import ConvNet
from convnets.training.optim import parameter_groups  # noqa: F401 (moved to training; imported from here too)

FREEZE_HELP = ("none | all-but-head | auto | K (stem + first K stages) | stages.0-B (stem up to stage B) | "
               "comma-separated module paths")


def recommend(examples_per_class: float, num_stages: int) -> tuple[str, str]:
    """How much to freeze for a dataset size: (freeze spec, the reason in one sentence)."""
    if examples_per_class < 100:
        return "all-but-head", (f"{examples_per_class:.0f} examples per class is little data: freeze the whole "
                                "pretrained trunk, train a new softmax layer (on cached features)")
    if examples_per_class < 1000:
        k = max(1, num_stages // 2)
        return str(k), (f"{examples_per_class:.0f} examples per class: freeze the stem and the first {k} of "
                        f"{num_stages} stages, fine-tune the rest with the new head")
    return "none", (f"{examples_per_class:.0f} examples per class is a lot: use the pretrained weights as the "
                    "initialisation and train everything")


def freeze_paths(model: ConvNet, spec: str) -> list[str]:
    """The module paths a freeze spec names, validated against the model.

    Raises:
        ConfigError: a spec of none of the forms of :data:`FREEZE_HELP`, or naming stages or modules
            the model does not have (the message lists its stages).
    """
    if not isinstance(spec, str):  # a stage count typed as a number (2) is still written as text ("2")
        raise ConfigError(f"freeze must be text: {FREEZE_HELP}; got {spec!r}")
    stages = [info.name for info in model.stage_info]

    def refuse(why: str) -> ConfigError:
        return ConfigError(f"freeze {spec!r}: {why}; its stages are {', '.join(['stem', *stages])}; "
                           f"use {FREEZE_HELP}")

    text = spec.strip()
    if text in ("none", ""):
        return []
    if text in ("all-but-head", "trunk"):
        return ["stem", "stages"]
    if text.isdigit():
        k = int(text)
        if k > len(stages):
            raise refuse(f"cannot freeze {k} stages: {model.name} has {len(stages)}")
        return ["stem", *stages[:k]]
    match = re.fullmatch(r"stages\.(\d+)-(\d+)", text)
    if match:
        first, last = int(match[1]), int(match[2])
        if first != 0:
            raise refuse("a frozen range starts at stages.0: freezing a later stage alone would leave earlier "
                         "layers training on features that no longer move")
        if last >= len(stages):
            raise refuse(f"{model.name} has no stages.{last}")
        return ["stem", *stages[:last + 1]]
    if text.startswith("stages.") and "-" in text:
        raise refuse("a range is stages.0-B with B a stage number")
    paths = [p.strip() for p in text.split(",")]
    if "" in paths:
        raise refuse("an empty path between commas")
    known = dict(model.named_modules())
    unknown = [p for p in paths if p not in known]
    if unknown:
        raise refuse(f"{model.name} has no {', '.join(unknown)}")
    return paths


def freeze(model: ConvNet, spec: str) -> list[str]:
    """Freeze the parts ``spec`` names: no gradients, and BatchNorm kept in inference mode.

    The frozen paths are recorded on the model, whose ``train()`` then leaves them in eval mode:
    a frozen BatchNorm keeps using, and never updates, the statistics it was trained with.
    """
    paths = freeze_paths(model, spec)
    for path in paths:
        for p in model.get_submodule(path).parameters():
            p.requires_grad_(False)
    model.frozen = paths
    model.train(model.training)
    return paths


@torch.no_grad()
def extract_features(model: ConvNet, loader, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The pooled features ``forward_head(pre_logits=True)`` of every batch, in loader order (eval mode)."""
    was_training = model.training
    model.eval()
    features, labels = [], []
    loader.set_epoch(0)
    for x, y in loader:
        features.append(model.forward_head(model.forward_features(x.to(device)), pre_logits=True).float().cpu())
        labels.append(y.cpu())
    model.train(was_training)
    return torch.cat(features), torch.cat(labels)


def cache_key(**parts: object) -> str:
    """A short hash of everything the cached features depend on: a change of any part misses."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def split_fingerprint(split: object) -> str:
    """A hash of what a dataset split holds, for cache keys: any change of an image or a label changes it.

    In-memory splits hash their image and label tensors. Image folders hash, for every file, its
    path, label, size, modification time and inode number: reading every file would cost as much as
    the features it saves, and a file replaced, edited or moved to another class folder (swapping
    two class folders keeps names and modification times, not inodes) changes one of them.
    """
    digest = hashlib.sha256()
    images = getattr(split, "images", None)
    if isinstance(images, torch.Tensor):
        for tensor in (images, split.labels):
            array = tensor.detach().cpu().contiguous().numpy()
            digest.update(f"{array.dtype}{array.shape}".encode())
            digest.update(array.reshape(-1).view("uint8"))
        return digest.hexdigest()
    # Files have been decoded in full since convnets stopped decoding large JPEGs at a reduced scale: features
    # cached from drafted pixels are not reused.
    digest.update(b"decoded in full\n")
    for path, label in split.samples:
        try:
            st = os.stat(path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
        except OSError:  # gone since the scan: the loader will report it
            stamp = "missing"
        # surrogateescape: a file name that is not UTF-8 is hashed as its bytes.
        digest.update(f"{path}\0{label}\0{stamp}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def cached_features(model: ConvNet, loaders: dict, device: torch.device, cache_dir: Path, key_parts: dict,
                    say: Callable[[str], None] = print) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], Path,
                                                                 bool]:
    """Features of each split, computed once and stored in ``cache_dir`` under a key of ``key_parts``.

    A cache file that cannot be read back whole (truncated, damaged, or of another layout) is
    discarded and computed again, saying so with ``say``; temporary files that interrupted writes
    left in ``cache_dir`` are removed.

    Returns the features per split, the cache file and whether it was a hit.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import save

    from convnets.weights import atomic_write, remove_stale_temporaries
    from convnets.weights.files import safetensors_path

    remove_stale_temporaries(cache_dir, names="features-*.safetensors")
    path = Path(cache_dir) / f"features-{cache_key(**key_parts)}.safetensors"
    stored_key = json.dumps(key_parts, default=str)
    if path.exists():
        try:
            with safetensors_path(path) as name, safe_open(name, framework="pt") as f:
                if (f.metadata() or {}).get("key") != stored_key:
                    raise ValueError("written for other data")
                tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open is no dict)
            features = {s: (tensors[f"{s}.x"], tensors[f"{s}.y"]) for s in loaders}
            if any(x.ndim != 2 or y.ndim != 1 or len(x) != len(y) for x, y in features.values()):
                raise ValueError("features and labels do not match")
        except (SafetensorError, KeyError, ValueError) as err:
            say(f"feature cache {path} is damaged ({err}): discarded, computing the features again")
        else:
            return features, path, True
    out = {split: extract_features(model, loader, device) for split, loader in loaders.items()}
    tensors = {f"{s}.{k}": t.contiguous() for s, (x, y) in out.items() for k, t in (("x", x), ("y", y))}
    # Written by Python, not by safetensors' save_file, whose full-disk error is its own type, not an OSError.
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(save(tensors, metadata={"key": stored_key})))
    return out, path, False


class FeatureLoader:
    """Batches of cached features, with the loader interface of :class:`convnets.data.loader.BatchLoader`.

    The order of an epoch is a function of (seed, epoch) only, so resuming at a batch is exact.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, device: torch.device,
                 shuffle: bool, seed: int = 0, drop_last: bool = False) -> None:
        self.x, self.y = x.to(device), y.to(device)
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.epoch, self.start_batch, self.position = 0, 0, 0
        from convnets.data.badfiles import BadFileLog

        self.bad_files = BadFileLog()

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self):
        from convnets.data.loader import derive_seed

        n = len(self.y)
        order = (torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(self.seed, self.epoch)))
                 if self.shuffle else torch.arange(n)).to(self.x.device)
        for b in range(self.start_batch, len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            self.position = b + 1
            yield self.x[idx], self.y[idx]
