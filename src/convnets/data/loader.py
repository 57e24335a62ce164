"""The training and evaluation loader: normalised (x, y) batches on a device, reproducible and resumable.

The order of an epoch and the augmentation of every batch are functions of
(seed, epoch, rank, batch index) alone, never of the state of a random generator that
lives across batches. That makes three things exact: two runs with one seed see the same
batches; a run resumed at batch k of an epoch sees batches k.. of that epoch as the
uninterrupted run did; and the number of decoding workers changes nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import numpy as np
import torch

from convnets.data.augment import AugmentConfig, Augmenter
from convnets.data.badfiles import BadFileLog
from convnets.data.core import Dataset, TensorSplit, check_whole
from convnets.data.images import (
    ImageFolderSplit,
    collate_images,
    leave_signals_to_the_main_process,
    workers_starting,
)
from convnets.device import resolve_device
from convnets.errors import ConfigError, DataError

# Far beyond any batch that fits in memory; past 2**63, torch's indexing fails with an overflow.
MAX_BATCH_SIZE = 1 << 24


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from several integers (numpy's SeedSequence hashing)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


class BatchLoader:
    """Yields (x, y): float32 normalised images (B, C, H, W) and int64 labels (B,), on ``device``.

    In-memory splits are indexed and augmented as whole batches on ``device`` (the GPU when
    training there). Image folders are decoded by ``num_workers`` processes; the uint8 batch is
    then augmented on ``device`` when that is a GPU, or by the same batched code inside the
    worker when training on the CPU (with identical results: the seed belongs to the batch).
    A file that cannot be decoded is dropped from its batch and recorded in :attr:`bad_files`; a
    batch of nothing but such files is skipped (distributed, it is yielded empty instead, so that
    every rank sees as many batches).

    Distributed training: each of ``world_size`` ranks gets a disjoint shard of one shared
    permutation (padded by repeating indices so every rank has as many batches, as
    ``torch.utils.data.DistributedSampler`` does). Call :meth:`set_epoch` before each epoch.

    Exact resume: ``set_epoch(epoch, start_batch=k)`` makes the next iteration yield batches
    k, k+1, ... of that epoch, identical to those of an uninterrupted run. Save
    :attr:`position` (batches of the epoch consumed) in a checkpoint and pass it back as ``start_batch``.

    Args:
        split: A :class:`TensorSplit` or :class:`ImageFolderSplit`.
        batch_size: Images per batch (per rank).
        mean, std: Per-channel normalisation (``Dataset.mean``/``Dataset.std``).
        augment: An :class:`Augmenter`, or None for evaluation.
        device: Where batches (and augmentation) go; CPU by default.
        shuffle: Shuffle every epoch (training) or keep file order (evaluation).
        drop_last: Drop the last incomplete batch (and, distributed, the uneven tail instead of padding).
        seed: Base seed of the order and the augmentation.
        rank, world_size: This process's shard.
        num_workers: Decoding processes for image folders; ``min(4, cpu count)`` by default.
        preload: Move an in-memory split to ``device`` once (default), instead of batch by batch.
        cpu_threads: torch intra-op threads while a batch is augmented on the CPU, restored
            afterwards so the model keeps its own; None leaves torch's setting. 1 by default: each
            operation on a batch of small images lasts ~0.1 ms, too short to pay for a thread team,
            and with decoding workers or other jobs on the other cores a team of two stalls on its
            descheduled member (measured on 2 cores: 165,000 images/s with 1 thread, 3,600 with 2).
        bad_files: The log undecodable files are recorded in; a new one by default. :func:`make_loader`
            passes the dataset's, so that one log covers the scan and every split.
    """

    def __init__(
        self,
        split: TensorSplit | ImageFolderSplit,
        *,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augment: Augmenter | None = None,
        device: torch.device | str | None = None,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int | None = None,
        preload: bool = True,
        cpu_threads: int | None = 1,
        bad_files: BadFileLog | None = None,
    ) -> None:
        check_whole("batch_size", batch_size, 1, MAX_BATCH_SIZE)
        check_whole("world_size", world_size, 1)
        check_whole("rank", rank, 0, world_size - 1)
        check_whole("num_workers", num_workers, 0, 256, optional=True)
        check_whole("cpu_threads", cpu_threads, 1, optional=True)
        check_whole("seed", seed, 0, 2**63 - 1)
        for name, flag in (("shuffle", shuffle), ("drop_last", drop_last), ("preload", preload)):
            if not isinstance(flag, bool):  # "no" would be true
                raise ConfigError(f"{name} must be True or False; got {flag!r}")
        if len(mean) != len(std) or any(not s > 0 for s in std):
            raise ConfigError(f"mean and std need one value per channel and std > 0; got mean {mean}, std {std}")
        self.split = split
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.device = resolve_device(device) if device is not None else torch.device("cpu")
        self.augment = augment
        self.num_workers = min(4, os.cpu_count() or 1) if num_workers is None else num_workers
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.cpu_threads = cpu_threads
        self.bad_files = BadFileLog() if bad_files is None else bad_files
        self.epoch, self.start_batch, self.position = 0, 0, 0
        self._images = self._labels = None
        if isinstance(split, TensorSplit):
            target = self.device if preload else torch.device("cpu")
            self._images, self._labels = split.images.to(target), split.labels.to(target)

    # ---- order and sharding

    def _shard(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch."""
        n = len(self.split)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(self.seed, self.epoch)))
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            if self.drop_last:
                order = order[: n - n % self.world_size]
            elif n % self.world_size:
                extra = self.world_size - n % self.world_size
                order = torch.cat([order, order.repeat(extra // n + 1)[:extra]])
            order = order[self.rank :: self.world_size]
        return order

    def __len__(self) -> int:
        """Batches per epoch on this rank (including any already consumed when resuming)."""
        n = len(self.split)
        per_rank = n // self.world_size if self.drop_last else -(-n // self.world_size)
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Choose the epoch the next iteration yields, starting at batch ``start_batch`` of it."""
        if not 0 <= start_batch <= len(self):
            raise DataError(f"start_batch {start_batch} is outside 0..{len(self)}")
        self.epoch, self.start_batch = epoch, start_batch

    def batch_indices(self) -> list[torch.Tensor]:
        """Sample indices of every batch of the current epoch on this rank."""
        batches = list(self._shard().split(self.batch_size))
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    # ---- iteration

    @contextlib.contextmanager
    def _cpu_threads(self) -> Iterator[None]:
        """Run the enclosed batch work with ``cpu_threads`` intra-op threads when it runs on the CPU."""
        if self.device.type != "cpu" or self.cpu_threads is None:
            yield
            return
        previous = torch.get_num_threads()
        torch.set_num_threads(self.cpu_threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    def _finish(self, images: torch.Tensor, labels: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Move, augment and normalise one uint8 batch."""
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        if self.augment is not None:
            generator = torch.Generator(device=images.device)
            generator.manual_seed(derive_seed(self.seed, self.epoch, self.rank, batch))
            return self.augment(images, generator, self.mean, self.std), labels
        # (x / 255 - mean) / std as one fused pass.
        return torch.addcmul(-self.mean / self.std, images.float(), 1 / (255 * self.std)), labels

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = self.batch_indices()
        start = self.start_batch
        self.position = start
        if self._images is not None:
            for b in range(start, len(batches)):
                with self._cpu_threads():
                    idx = batches[b].to(self._images.device)
                    x, y = self._finish(self._images[idx], self._labels[idx], b)
                self.position = b + 1
                yield x, y
            return
        # Each sample index travels with its batch index, so that a worker can seed the batch's augmentation.
        loader = torch.utils.data.DataLoader(
            _BatchTagged(self.split),
            batch_sampler=[[(b, i) for i in batch.tolist()] for b, batch in enumerate(batches[start:], start)],
            # A worker decodes whole batches: more workers than batches left would only start idle processes.
            num_workers=min(self.num_workers, len(batches) - start),
            collate_fn=self._collate,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=leave_signals_to_the_main_process,
        )
        with workers_starting():
            batches_decoded = iter(loader)
        for b, (images, labels, bad, finished) in enumerate(batches_decoded, start):
            self.bad_files.extend(bad)
            self.position = b + 1
            if not len(labels):
                if self.world_size == 1:  # a batch of nothing but broken files is skipped, not yielded empty
                    continue
                # Distributed, every rank must take part in each step, so the rank decides with the others
                # (see the training loop) what an empty batch means: it is yielded, with its full shape.
                h, w = self.split.image_size
                yield (torch.empty(0, self.split.channels, h, w, device=self.device),
                       torch.empty(0, dtype=torch.int64, device=self.device))
                continue
            if finished:
                yield images, labels
            else:
                with self._cpu_threads():
                    batch = self._finish(images, labels, b)
                yield batch

    def _collate(self, items: list) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]], bool]:
        """Stack a batch of decoded files; in a worker of a CPU run, also augment and normalise it there.

        On the CPU the workers have the cores, so the batch work is spread over them instead of
        queueing behind the main process; with the same seed per batch the result is identical.
        On a GPU the uint8 batch goes to the device and is augmented there.
        """
        images, labels, bad = collate_images([item[:3] for item in items])
        in_worker = torch.utils.data.get_worker_info() is not None
        if in_worker and self.device.type == "cpu" and len(labels):
            x, y = self._finish(images, labels, items[0][3])
            return x, y, bad, True
        return images, labels, bad, False


class _BatchTagged(torch.utils.data.Dataset):
    """An image-folder split indexed by (batch index, sample index); items carry the batch index."""

    def __init__(self, split: ImageFolderSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: tuple[int, int]) -> tuple:
        batch, index = key
        return (*self.split[index], batch)


def make_loader(
    dataset: Dataset,
    split: str = "train",
    *,
    batch_size: int,
    augment: AugmentConfig | str | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int | None = None,
    shuffle: bool | None = None,
    drop_last: bool = False,
    cpu_threads: int | None = 1,
) -> BatchLoader:
    """A :class:`BatchLoader` over one split of a dataset, normalised with its training statistics.

    Args:
        dataset: From :func:`convnets.data.load_dataset`.
        split: ``train`` or ``test``.
        batch_size: Images per batch per rank.
        augment: A config or preset name (``none``, ``light``, ``standard``, ``heavy``); None for no augmentation.
        device: Where batches go.
        seed, rank, world_size, num_workers, drop_last, cpu_threads: As for :class:`BatchLoader`.
        shuffle: Default: shuffle the training split, not the test split.

    Files the loader cannot decode are recorded in ``dataset.bad_files``, whichever the split.

    Raises:
        ConfigError: An argument outside its range: ``split`` not train/test, ``batch_size`` < 1, an
            unknown preset, a device this machine does not have...
    """
    if not isinstance(dataset, Dataset):
        raise ConfigError(f"make_loader takes a Dataset from load_dataset(...), not {type(dataset).__name__} "
                          f"{dataset!r:.40}")
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    if getattr(dataset, split) is None:
        raise ConfigError(f"{dataset.name}: the {split} split was not loaded; pass splits with {split!r} to "
                          "load_dataset")
    if dataset.mean is None or dataset.std is None:
        raise ConfigError(f"{dataset.name}: no normalisation statistics (they are the training split's, which was "
                          "not loaded): set the weights' own, dataclasses.replace(dataset, mean=..., std=...)")
    if shuffle is not None and not isinstance(shuffle, bool):
        raise ConfigError(f"shuffle must be True, False or None; got {shuffle!r}")
    if augment is not None and not isinstance(augment, (str, AugmentConfig)):
        raise ConfigError(f"augment must be a preset name or an AugmentConfig, got {type(augment).__name__}")
    augmenter = None
    if augment is not None and augment != "none":
        augmenter = Augmenter(augment, dataset.pixel_cov)
    return BatchLoader(
        getattr(dataset, split),
        batch_size=batch_size,
        mean=dataset.mean,
        std=dataset.std,
        augment=augmenter,
        device=device,
        shuffle=split == "train" if shuffle is None else shuffle,
        drop_last=drop_last,
        seed=seed,
        rank=rank,
        world_size=world_size,
        num_workers=num_workers,
        cpu_threads=cpu_threads,
        bad_files=dataset.bad_files,
    )
