"""Image folders, ``root/CLASS/*.jpg`` (or ``root/train/CLASS`` and ``root/val/CLASS``), streamed from disk."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from convnets.data.badfiles import BadFileLog
from convnets.data.core import SPLITS, Dataset, LoadOptions, channel_stats, check_classes, check_whole
from convnets.data.images import (
    DECODE_ERRORS,
    IMAGE_EXTENSIONS,
    ImageFolderSplit,
    collate_images,
    decode_image,
    describe_error,
    leave_signals_to_the_main_process,
    workers_starting,
)
from convnets.errors import DataError

if TYPE_CHECKING:
    from convnets.data.preprocess import Preprocessing

logger = logging.getLogger("convnets.data")


def _none_decodes(files: list[Path], bad: BadFileLog) -> str | None:
    """None when one of ``files`` decodes; else the reason the first failed. Failures are recorded in ``bad``.

    A healthy class costs one decode; a class of nothing but broken files is tried through,
    so that each of them is reported with its reason.
    """
    first = None
    for path in files:
        try:
            decode_image(path, (8, 8), 3)
            return None
        except DECODE_ERRORS as err:
            bad.add(path, describe_error(err))
            first = first or f"{path.name}: {describe_error(err)}"
    return first


def _files_under(class_dir: Path, bad: BadFileLog) -> list[Path]:
    """Every file and link below ``class_dir``, sorted, except hidden ones and those in hidden folders.

    Hidden names (.DS_Store, .ipynb_checkpoints, editor backups) are not data. Links to folders are
    not followed (a link to ``..`` would loop); broken links are listed, for the caller to report. A
    subfolder that cannot be listed is recorded in ``bad``; the class folder itself not being
    listable is an error, not an empty class.

    Raises:
        DataError: ``class_dir`` cannot be listed.
    """
    try:
        os.listdir(class_dir)
    except OSError as err:
        raise DataError(f"class folder {class_dir} cannot be read: {err.strerror or err}") from None
    found = []
    for folder, subfolders, files in os.walk(class_dir, onerror=lambda err: bad.add(err.filename, describe_error(err))):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        found += [Path(folder, name) for name in files if not name.startswith(".")]
    return sorted(found)


def _scan_class_folders(root: Path, bad: BadFileLog) -> tuple[list[str], list[tuple[str, int]]]:
    """Classes (sorted subfolder names) and (path, label) samples of ``root/CLASS/...``.

    Raises:
        DataError: No class folders, or a class folder without one decodable image (naming it).
    """
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        loose = sum(1 for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        found = f"found {loose} images directly in it, but " if loose else ""
        raise DataError(
            f"{root}: no class folders; {found}images go in one folder per class: {root}/CLASS_NAME/IMAGE.jpg"
        )
    samples = []
    for label, class_dir in enumerate(class_dirs):
        images = []
        others: dict[str, int] = {}  # extension -> files: annotations beside images (.xml, .json) are no damage
        for path in _files_under(class_dir, bad):
            if path.is_symlink() and not path.exists():
                bad.add(path, "broken link")
            elif not path.is_file():  # a pipe, socket or device: reading it could wait for ever
                if not path.is_dir():  # a link to a folder is not followed (a link to .. would loop), nor listed
                    bad.add(path, "not a regular file (a pipe, socket or device)")
                continue
            elif path.suffix.lower() not in IMAGE_EXTENSIONS:
                bad.add(path, f"not an image file (extension {path.suffix or 'none'})", warn=False)
                others[path.suffix.lower() or "none"] = others.get(path.suffix.lower() or "none", 0) + 1
            elif path.stat().st_size == 0:
                bad.add(path, "empty file (0 bytes)")
            else:
                images.append(path)
        if others:  # one line a folder, not one a file (a folder of 10,000 annotations printed 10,000)
            logger.warning("skipped %d file%s in %s that %s not images (%s); listed in bad_files.tsv",
                           sum(others.values()), "s" * (sum(others.values()) > 1), class_dir,
                           "are" if sum(others.values()) > 1 else "is",
                           ", ".join(f"{n} {ext}" for ext, n in sorted(others.items())))
        if not images:
            raise DataError(f"class folder {class_dir} has no images")
        failure = _none_decodes(images, bad)
        if failure:
            raise DataError(
                f"class folder {class_dir}: none of its {len(images)} image files can be decoded "
                f"(e.g. {failure}); fix or remove them"
            )
        samples += [(str(p), label) for p in images]
    return [d.name for d in class_dirs], samples


def _stratified_split(
    samples: list[tuple[str, int]], val_fraction: float, seed: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Hold out ``val_fraction`` of every class (at least one image when a class has two or more)."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    labels = np.array([y for _, y in samples])
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        rng.shuffle(idx)
        n_val = min(len(idx) - 1, max(1, round(len(idx) * val_fraction))) if val_fraction > 0 else 0
        val += [samples[i] for i in sorted(idx[:n_val])]
        train += [samples[i] for i in sorted(idx[n_val:])]
    return train, val


def _stats_of_folder(
    split: ImageFolderSplit, samples: int, seed: int, num_workers: int, bad: BadFileLog
) -> tuple[tuple[float, ...], tuple[float, ...], torch.Tensor]:
    """Channel statistics of a seeded random subset of a folder split, decoded in parallel."""
    rng = np.random.default_rng(seed)
    indices = rng.permutation(len(split))[:samples].tolist()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(split, indices), batch_size=64, num_workers=num_workers, collate_fn=collate_images,
        worker_init_fn=leave_signals_to_the_main_process,
    )
    images = []
    with workers_starting():
        batches = iter(loader)
    for x, _, errors in batches:
        bad.extend(errors)
        images.append(x)
    images = [x for x in images if len(x)]
    if not images:
        raise DataError("no training image could be decoded; see the bad-file report")
    return channel_stats(torch.cat(images))


def _probe_size(samples: Sequence[tuple[str, int]], cap: int = 224, probes: int = 64) -> int:
    """The median shorter side of up to ``probes`` readable images spread over the split (headers only), at most
    ``cap``.

    Not the first image's alone: a thumbnail or a 1x1 tracking pixel sorted first set the size of the whole run
    (a folder of photos trained at 1x1, or refused as "gives 1x1").
    """
    sides = []
    for path, _ in samples[:: max(1, len(samples) // probes)][:probes]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as image:
                    sides.append(min(image.size))
        except DECODE_ERRORS:
            continue
    return min(int(np.median(sides)), cap) if sides else cap


# Split folder names, matched in any case (Kaggle's Train/ and Test/ as well as train/ and val/), most usual first.
TRAIN_FOLDERS = ("train", "training")
HELD_OUT_FOLDERS = ("val", "test", "valid", "validation", "testing")


def _split_folders(root: Path) -> tuple[Path | None, Path | None]:
    """``root``'s training and held-out split folders (see :data:`TRAIN_FOLDERS`), each None when absent."""
    folders = {p.name.lower(): p for p in sorted(root.iterdir()) if p.is_dir()}
    train = next((folders[name] for name in TRAIN_FOLDERS if name in folders), None)
    held_out = next((folders[name] for name in HELD_OUT_FOLDERS if name in folders), None)
    return train, held_out


def load_image_folder(
    root: str | Path,
    *,
    image_size: int | Sequence[int] | None = None,
    channels: int | None = None,
    seed: int = 0,
    val_fraction: float = 0.2,
    stats_samples: int = 1000,
    num_workers: int | None = None,
    preprocessing: Preprocessing | None = None,
    splits: tuple[str, ...] = SPLITS,
) -> Dataset:
    """An image folder ``root/CLASS/*.jpg`` (or ``root/train/CLASS``, ``root/val/CLASS``), streamed from disk.

    Files with other extensions, empty files and broken links are skipped and recorded in
    ``Dataset.bad_files``; so are files that fail to decode, whether found while checking each
    class, computing the statistics, or later by a loader (see :func:`~convnets.data.make_loader`).
    Images are decoded as :func:`~convnets.data.decode_image` says: EXIF orientation applied,
    16-bit and float images scaled to 8 bits.

    Args:
        root: The folder. With ``train/`` and ``val/`` (or ``test/``; any case, and the other names of
            :data:`TRAIN_FOLDERS` and :data:`HELD_OUT_FOLDERS`) subfolders those are the splits; otherwise
            a stratified ``val_fraction`` of every class is held out, chosen by ``seed``.
        image_size: Output (height, width) or side; by default the median shorter side of up to 64
            training images spread over the folder, at most 224. Images are scaled to cover it and centre-cropped.
        channels: 1 (grey) or 3 (RGB, the default); other modes (palette, RGBA, CMYK) are converted.
        seed: Seed of the held-out split and of the subset used for statistics.
        val_fraction: Fraction of each class held out when there are no split folders, in [0, 1).
        stats_samples: How many training images the mean, std and covariance are estimated from.
        num_workers: Decoding processes for the statistics; ``min(4, cpu count)`` by default.
        preprocessing: decode the files with this recipe (pretrained weights'); it sets the size and channels.
        splits: The splits to return, ``("train", "test")`` by default. Without ``"train"`` no image is
            decoded for the statistics (they are None), but the training folder is still listed: its
            class folders are the classes (checked against the held-out folder's), and a folder
            without split folders is split by listing all of it.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ConfigError: An argument outside its range.
        DataError: ``root`` is not a folder; no class folders; fewer than two classes; a class folder
            without a decodable image; split folders whose classes differ; or a held-out split folder
            beside class folders (it would become a class).
    """
    if preprocessing is not None:
        image_size, channels = preprocessing.size, preprocessing.channels
    options = LoadOptions(image_size=image_size, channels=channels, seed=seed, val_fraction=val_fraction,
                          num_workers=num_workers, splits=splits)
    check_whole("stats_samples", stats_samples, 1)
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"image folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"{root}: is a file; an image folder is a directory of class folders (ROOT/CLASS/IMAGE.jpg)")
    bad = BadFileLog()
    train_dir, held_out = _split_folders(root)
    if held_out is not None and train_dir is None:
        # Beside the classes (ROOT/cat, ROOT/dog, ROOT/test), it would be trained on as one more class.
        raise DataError(f"{held_out} looks like a held-out split, not a class: put the training classes in "
                        f"{root}/train/CLASS and the held-out ones in {held_out}/CLASS, or move it out of {root}")
    if train_dir is not None and held_out is not None:
        classes, train = _scan_class_folders(train_dir, bad)
        val_classes, val = _scan_class_folders(held_out, bad)
        if val_classes != classes:
            raise DataError(f"{held_out} has classes {val_classes} but {train_dir} has {classes}")
        check_classes(classes, [y for _, y in train], root)
    else:  # a lone train/ folder is split like a plain one
        classes, samples = _scan_class_folders(train_dir or root, bad)
        check_classes(classes, [y for _, y in samples], root)
        train, val = _stratified_split(samples, options.val_fraction, options.seed)  # keeps every class in train
        if not val and options.val_fraction > 0:
            logger.warning("%s: no class has two images, so nothing is held out for testing", root)
    c = options.channels or 3
    size = options.image_size or (_probe_size(train),) * 2
    train_split, val_split = ImageFolderSplit(train, size, c, preprocessing), ImageFolderSplit(val, size, c,
                                                                                                  preprocessing)
    if "train" not in options.splits:
        return Dataset(root.name, classes, c, size, None, None, None, None, val_split, bad, str(root))
    workers = min(4, os.cpu_count() or 1) if options.num_workers is None else options.num_workers
    mean, std, cov = _stats_of_folder(train_split, stats_samples, options.seed, workers, bad)
    test_split = val_split if "test" in options.splits else None
    return Dataset(root.name, classes, c, size, mean, std, cov, train_split, test_split, bad, str(root))


def recognise(path: Path) -> bool:
    """Any directory: the last format tried, whose errors say what an image folder must hold."""
    return path.is_dir()


def load(path: Path, options: LoadOptions) -> Dataset:
    """:func:`load_image_folder` with :func:`~convnets.data.load_dataset`'s options."""
    return load_image_folder(path, image_size=options.image_size, channels=options.channels, seed=options.seed,
                             val_fraction=options.val_fraction, num_workers=options.num_workers,
                             preprocessing=options.preprocessing,
                             splits=options.splits)
