"""Datasets: Fashion-MNIST and other IDX files, scikit-learn's digits, CIFAR batches, image folders.

Every loader returns a :class:`Dataset` with a train and a test split. Small datasets are
held in memory as uint8 tensors of shape (N, C, H, W) (:class:`TensorSplit`); image folders
stay on disk and are decoded by parallel workers (:class:`ImageFolderSplit`). Per-channel
mean, standard deviation and the pixel covariance (for PCA colour augmentation) are
computed from the training split, on the 0..1 scale.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import pickle
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from convnets.data.badfiles import BadFileLog
from convnets.data.idx import read_idx
from convnets.errors import DataError, DownloadError

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# SHA-256 of the *decompressed* files: mirrors (Debian's package among them) recompress the
# archives, so a checksum of the .gz bytes would reject identical data.
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
# Where Debian's `dataset-fashion-mnist` package puts the files; a module attribute so tests can move it.
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jfif"}
)
DEFAULT_CACHE = Path(os.environ.get("CONVNETS_DATA", Path.home() / ".cache" / "convnets"))


@dataclass
class TensorSplit:
    """One split held in memory.

    Attributes:
        images: uint8 tensor (N, C, H, W).
        labels: int64 tensor (N,).
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Dataset:
    """A dataset ready for training: both splits and what a model and a loader need to know.

    Attributes:
        name: Short name (``fashion-mnist``, ``digits``, ``cifar10``, or the folder's name).
        classes: Class names; label ``i`` is ``classes[i]``.
        channels: Channels of every image the splits yield (1 or 3).
        image_size: (height, width) of every image the splits yield.
        mean: Per-channel mean of the training split, pixel values scaled to 0..1.
        std: Per-channel standard deviation of the training split, same scale.
        pixel_cov: (C, C) covariance of training pixels on the 0..1 scale, for PCA colour augmentation.
        train: Training split.
        test: Test split (an image folder's ``val/`` folder or held-out part).
        bad_files: Files skipped while scanning an image folder or computing its statistics.
        source: Where the data was read from.
    """

    name: str
    classes: list[str]
    channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pixel_cov: torch.Tensor
    train: TensorSplit | ImageFolderSplit
    test: TensorSplit | ImageFolderSplit
    bad_files: BadFileLog = field(default_factory=BadFileLog)
    source: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.train, TensorSplit)

    def describe(self) -> str:
        """One line: name, sizes, shape, classes and statistics."""
        h, w = self.image_size
        mean = ", ".join(f"{m:.3f}" for m in self.mean)
        std = ", ".join(f"{s:.3f}" for s in self.std)
        kind = "in memory" if self.in_memory else "streamed from disk"
        return (
            f"{self.name}: {len(self.train)} train / {len(self.test)} test images, {self.channels}x{h}x{w}, "
            f"{self.num_classes} classes, {kind}; mean ({mean}) std ({std})"
        )


# --------------------------------------------------------------------------------------------
# statistics and in-memory shape changes


def channel_stats(images: torch.Tensor, chunk: int = 8192) -> tuple[tuple[float, ...], tuple[float, ...], torch.Tensor]:
    """Per-channel mean, std and covariance of uint8 images (N, C, H, W), on the 0..1 scale.

    Accumulated in float64 over chunks so that CIFAR-sized sets do not need a float copy.
    """
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    outer = torch.zeros(c, c, dtype=torch.float64)
    count = 0
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].to(torch.float64).div_(255).transpose(0, 1).reshape(c, -1)
        total += x.sum(1)
        outer += x @ x.T
        count += x.shape[1]
    if count == 0:
        raise DataError("cannot compute statistics of an empty split")
    mean = total / count
    cov = outer / count - torch.outer(mean, mean)
    std = cov.diagonal().clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist()), cov.float()


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert uint8 images (N, C, H, W) between 1 and 3 channels.

    Grey to RGB repeats the channel; RGB to grey uses ITU-R 601-2 luma, as Pillow's ``L`` mode does.
    """
    c = images.shape[1]
    if c == channels:
        return images
    if c == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if c == 3 and channels == 1:
        luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images.float() * luma).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
    raise DataError(f"cannot convert {c}-channel images to {channels} channels")


def resize_images(images: torch.Tensor, size: tuple[int, int], mode: str = "auto") -> torch.Tensor:
    """Bring uint8 images (N, C, H, W) to ``size`` = (height, width).

    Args:
        images: uint8 images.
        size: Target (height, width).
        mode: ``pad``: centre the image on a zero canvas, what LeCun et al. (1998) did to give
            LeNet-5 32x32 MNIST digits; ``interpolate``: bilinear resize with antialiasing;
            ``auto``: pad when the target is at least as large and at most 25% larger on
            each side (28 -> 32), otherwise interpolate.

    Returns:
        uint8 images of the requested size.
    """
    h, w = images.shape[-2:]
    th, tw = size
    if (h, w) == (th, tw):
        return images
    if mode == "auto":
        mode = "pad" if h <= th <= h * 1.25 and w <= tw <= w * 1.25 else "interpolate"
    if mode == "pad":
        if th < h or tw < w:
            raise DataError(f"cannot pad {h}x{w} images to the smaller size {th}x{tw}; use resize='interpolate'")
        top, left = (th - h) // 2, (tw - w) // 2
        return F.pad(images, (left, tw - w - left, top, th - h - top))
    if mode != "interpolate":
        raise DataError(f"unknown resize mode {mode!r}; expected 'auto', 'pad' or 'interpolate'")
    out = torch.empty(images.shape[0], images.shape[1], th, tw, dtype=torch.uint8)
    for start in range(0, len(images), 4096):  # chunks: a float copy of all of CIFAR would be 600 MB
        x = images[start : start + 4096].float()
        y = F.interpolate(x, size=(th, tw), mode="bilinear", align_corners=False, antialias=True)
        out[start : start + 4096] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _as_size(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return (image_size, image_size)
    h, w = image_size
    return (int(h), int(w))


def _check_labels(labels: np.ndarray, num_classes: int, path: str | Path) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        raise DataError(
            f"{path}: labels must lie in 0..{num_classes - 1}, found {len(bad)} outside (e.g. {int(bad[0])})"
        )


def _in_memory_dataset(
    name: str,
    classes: list[str],
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    *,
    image_size: tuple[int, int] | None,
    channels: int | None,
    resize: str,
    source: str,
) -> Dataset:
    """Build a Dataset from uint8 (N, C, H, W) arrays and int labels: convert, resize, measure."""
    splits = []
    for images, labels in (train, test):
        x = torch.from_numpy(np.ascontiguousarray(images))
        if channels is not None:
            x = convert_channels(x, channels)
        if image_size is not None:
            x = resize_images(x, image_size, resize)
        splits.append(TensorSplit(x, torch.from_numpy(np.asarray(labels, dtype=np.int64))))
    mean, std, cov = channel_stats(splits[0].images)
    c, h, w = splits[0].images.shape[1:]
    return Dataset(name, classes, c, (h, w), mean, std, cov, splits[0], splits[1], source=source)


# --------------------------------------------------------------------------------------------
# IDX files (Fashion-MNIST, MNIST, KMNIST, EMNIST)


def load_idx_pair(images_path: str | Path, labels_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an IDX image file and its label file.

    Returns:
        uint8 images (N, C, H, W) and int64 labels (N,).

    Raises:
        IDXFormatError: A header that does not match the file's size.
        ValueError: Images that are not uint8 (N, H, W[, C]), or counts that differ.
    """
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DataError(
            f"{images_path}: expected uint8 images (N, H, W) or (N, H, W, C), got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected one label per image (1 dimension), got shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    return images, labels.astype(np.int64)


def _idx_name(directory: Path, stem: str) -> Path | None:
    """The file in ``directory`` whose name holds ``stem`` (gzip or raw), or None; ambiguity is an error."""
    found = sorted(p for p in directory.glob(f"*{stem}*") if p.is_file() and not p.name.endswith(".part"))
    if len(found) > 1:
        # One raw and one gzipped copy of the same file is fine; prefer the raw one.
        raw = [p for p in found if not p.name.endswith(".gz")]
        if len(raw) == 1 and all(p.name.removesuffix(".gz") == raw[0].name for p in found):
            return raw[0]
        raise DataError(f"{directory}: several files match *{stem}*: {', '.join(p.name for p in found)}")
    return found[0] if found else None


def find_idx_files(directory: str | Path) -> dict[str, tuple[Path, Path]] | None:
    """The train and test (images, labels) IDX files in a directory, or None if it has none.

    Names follow MNIST's (``train-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte``),
    with any prefix (EMNIST's ``emnist-letters-train-images-idx3-ubyte``); ``test-`` may
    stand for ``t10k-``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    files = {}
    for split, prefixes in (("train", ("train",)), ("test", ("t10k", "test"))):
        for prefix in prefixes:
            images, labels = _idx_name(directory, f"{prefix}-images-idx"), _idx_name(directory, f"{prefix}-labels-idx")
            if images and labels:
                files[split] = (images, labels)
                break
    return files if len(files) == 2 else None


def load_idx_dataset(
    directory: str | Path,
    *,
    name: str | None = None,
    classes: list[str] | None = None,
    image_size: int | Sequence[int] | None = None,
    channels: int | None = None,
    resize: str = "auto",
) -> Dataset:
    """Load a directory of MNIST-format IDX files (Fashion-MNIST, MNIST, KMNIST, EMNIST).

    Args:
        directory: Holds train and test image and label files (see :func:`find_idx_files`).
        name: Dataset name; the directory's name by default.
        classes: Class names; ``"0"``, ``"1"``, ... up to the largest training label by default.
        image_size: Resize to this (see :func:`resize_images`); native size by default.
        channels: 1 or 3; the files' own by default.
        resize: How to reach ``image_size``: ``auto``, ``pad`` or ``interpolate``.

    Raises:
        FileNotFoundError: No IDX files in the directory.
        ValueError: Malformed files, or labels outside the class range (naming the file).
    """
    directory = Path(directory)
    files = find_idx_files(directory)
    if files is None:
        raise FileNotFoundError(f"{directory}: no train/t10k IDX image and label files")
    train, test = (load_idx_pair(*files[s]) for s in ("train", "test"))
    if classes is None:
        classes = [str(i) for i in range(int(train[1].max()) + 1 if len(train[1]) else 0)]
    for split, (_, labels) in zip(("train", "test"), (train, test), strict=True):
        _check_labels(labels, len(classes), files[split][1])
    return _in_memory_dataset(
        name or directory.name,
        classes,
        train,
        test,
        image_size=_as_size(image_size),
        channels=channels,
        resize=resize,
        source=str(directory),
    )


def _sha256_of_content(path: Path) -> str:
    """SHA-256 of a file's bytes after gunzip (when it is gzip)."""
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    digest = hashlib.sha256()
    with gzip.open(path, "rb") if gz else open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_file(url: str, dest: str | Path, sha256: str | None = None, *, timeout: float = 60) -> Path:
    """Download ``url`` to ``dest``, verifying the SHA-256 of its (decompressed) content.

    The file is written to ``dest.part`` and renamed only once verified, so an interrupted
    or corrupted download never leaves a file that looks complete.

    Raises:
        ConnectionError: The server cannot be reached or answers with an error.
        ValueError: The checksum does not match (the partial file is removed).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
    except (urllib.error.URLError, OSError) as err:
        part.unlink(missing_ok=True)
        raise DownloadError(f"cannot download {url}: {err}") from err
    if sha256 is not None:
        try:
            got = _sha256_of_content(part)
        except (OSError, EOFError) as err:
            got = f"unreadable ({err})"
        if got != sha256:
            part.unlink(missing_ok=True)
            raise DataError(f"checksum mismatch for {url}: expected sha256 {sha256}, got {got}")
    os.replace(part, dest)
    return dest


def download_fashion_mnist(
    dest: str | Path, *, base_url: str | None = None, checksums: dict[str, str] | None = None
) -> Path:
    """Download the four Fashion-MNIST files into ``dest`` (skipping those present) and verify them.

    Args:
        dest: Target directory.
        base_url: Where the files are; :data:`FASHION_MNIST_URL` by default.
        checksums: File name -> SHA-256 of its decompressed content; :data:`FASHION_MNIST_SHA256` by default.
    """
    dest, base_url = Path(dest), (base_url or FASHION_MNIST_URL).rstrip("/")
    for filename, sha in (checksums or FASHION_MNIST_SHA256).items():
        if not (dest / filename).is_file():
            download_file(f"{base_url}/{filename}", dest / filename, sha)
    return dest


def find_fashion_mnist(data_dir: str | Path | None = None, *, download: bool = True) -> Path:
    """The directory holding Fashion-MNIST, downloading it as a last resort.

    Looks in ``data_dir``, ``data_dir/fashion-mnist``, then Debian's package location
    (``/usr/share/datasets/fashion-mnist``); otherwise downloads into
    ``data_dir/fashion-mnist`` (or ``~/.cache/convnets/fashion-mnist``) from the
    dataset's public address, verifying checksums.

    Raises:
        FileNotFoundError: Not found and the download is off or fails.
    """
    candidates = [Path(data_dir), Path(data_dir) / "fashion-mnist"] if data_dir else []
    candidates.append(FASHION_MNIST_SYSTEM_DIR)
    for directory in candidates:
        if find_idx_files(directory):
            return directory
    looked = ", ".join(str(c) for c in candidates)
    hint = "install Debian's dataset-fashion-mnist package or pass --data-dir"
    if not download:
        raise FileNotFoundError(f"Fashion-MNIST not found in {looked}; {hint}")
    target = (Path(data_dir) if data_dir else DEFAULT_CACHE) / "fashion-mnist"
    try:
        return download_fashion_mnist(target)
    except ConnectionError as err:
        raise FileNotFoundError(f"Fashion-MNIST not found in {looked} and the download failed ({err}); {hint}") from err


def load_fashion_mnist(
    data_dir: str | Path | None = None,
    *,
    download: bool = True,
    image_size: int | Sequence[int] | None = None,
    channels: int | None = None,
    resize: str = "auto",
) -> Dataset:
    """Fashion-MNIST (Xiao et al. 2017): 60,000 + 10,000 grey 28x28 images of 10 clothing classes.

    Args:
        data_dir: Where to look first (see :func:`find_fashion_mnist`).
        download: Download when no local copy exists.
        image_size, channels, resize: As for :func:`load_idx_dataset`.
    """
    directory = find_fashion_mnist(data_dir, download=download)
    return load_idx_dataset(
        directory,
        name="fashion-mnist",
        classes=list(FASHION_MNIST_CLASSES),
        image_size=image_size,
        channels=channels,
        resize=resize,
    )


# --------------------------------------------------------------------------------------------
# scikit-learn digits


def load_digits(
    *,
    image_size: int | Sequence[int] | None = None,
    channels: int | None = None,
    resize: str = "auto",
) -> Dataset:
    """scikit-learn's 1,797 8x8 handwritten digits, split 1,437 / 360, stratified, always the same.

    The 0..16 intensities are scaled to 0..255. The split uses a fixed seed (not the run's)
    so that results from different runs are measured on the same test images.

    Args:
        image_size, channels, resize: As for :func:`load_idx_dataset`.
    """
    try:
        from sklearn.datasets import load_digits as sk_load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as err:
        raise DataError("the digits dataset needs scikit-learn: pip install scikit-learn") from err
    bunch = sk_load_digits()
    images = np.rint(bunch.images * (255 / 16)).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=360, stratify=labels, random_state=0)
    return _in_memory_dataset(
        "digits",
        [str(c) for c in bunch.target_names],
        (images[train_idx], labels[train_idx]),
        (images[test_idx], labels[test_idx]),
        image_size=_as_size(image_size),
        channels=channels,
        resize=resize,
        source="sklearn.datasets.load_digits",
    )


# --------------------------------------------------------------------------------------------
# CIFAR-10/100 python batches


def _cifar_layout(root: Path) -> tuple[str, list[str], list[str], str, str] | None:
    """(name, train files, test files, meta file, label key) of a CIFAR folder, or None."""
    for folder in (root, root / "cifar-10-batches-py", root / "cifar-100-python"):
        if (folder / "batches.meta").is_file() and (folder / "test_batch").is_file():
            return (
                "cifar10",
                [str(folder / f"data_batch_{i}") for i in range(1, 6)],
                [str(folder / "test_batch")],
                str(folder / "batches.meta"),
                "labels",
            )
        if (folder / "meta").is_file() and (folder / "train").is_file() and (folder / "test").is_file():
            return "cifar100", [str(folder / "train")], [str(folder / "test")], str(folder / "meta"), "fine_labels"
    return None


def _unpickle(path: str) -> dict:
    if not Path(path).is_file():
        raise FileNotFoundError(f"CIFAR batch file missing: {path}")
    # Pickle runs code from the file: only load CIFAR batches from a source you trust.
    with open(path, "rb") as f:
        try:
            return pickle.load(f, encoding="latin1")
        except Exception as err:  # pickle raises many kinds on a damaged file
            raise DataError(f"{path}: not a CIFAR python batch ({type(err).__name__}: {err})") from err


def load_cifar(
    root: str | Path,
    *,
    image_size: int | Sequence[int] | None = None,
    channels: int | None = None,
    resize: str = "auto",
) -> Dataset:
    """CIFAR-10 or CIFAR-100 (fine labels) from the python-format batches in a local folder.

    Args:
        root: The extracted ``cifar-10-batches-py`` / ``cifar-100-python`` folder or its parent.
        image_size, channels, resize: As for :func:`load_idx_dataset`.
    """
    root = Path(root)
    layout = _cifar_layout(root)
    if layout is None:
        raise FileNotFoundError(f"{root}: no CIFAR python batches (batches.meta + data_batch_*, or meta + train)")
    name, train_files, test_files, meta_file, key = layout
    meta = _unpickle(meta_file)
    classes = list(meta["label_names" if name == "cifar10" else "fine_label_names"])
    splits = []
    for files in (train_files, test_files):
        images, labels = [], []
        for path in files:
            batch = _unpickle(path)
            data, lab = np.asarray(batch["data"]), np.asarray(batch[key], dtype=np.int64)
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(lab):
                raise DataError(
                    f"{path}: expected uint8 data (N, 3072) and N labels, got {data.dtype} {data.shape} "
                    f"and {len(lab)} labels"
                )
            _check_labels(lab, len(classes), path)
            images.append(data.reshape(-1, 3, 32, 32))
            labels.append(lab)
        splits.append((np.concatenate(images), np.concatenate(labels)))
    return _in_memory_dataset(
        name,
        classes,
        splits[0],
        splits[1],
        image_size=_as_size(image_size),
        channels=channels,
        resize=resize,
        source=str(root),
    )


# --------------------------------------------------------------------------------------------
# image folders


def _to_mode(image: Image.Image, channels: int) -> Image.Image:
    """Convert any Pillow mode to L (1 channel) or RGB (3); transparency is composited on black."""
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(black, rgba)
    return image.convert("L" if channels == 1 else "RGB")


def decode_image(path: str | Path, size: tuple[int, int], channels: int = 3) -> torch.Tensor:
    """Decode one image file to a uint8 tensor (C, H, W) of the given (height, width).

    The image is scaled so its shorter side fits and centre-cropped to the target's aspect.
    JPEGs are decoded directly at a reduced scale when the target is much smaller (Pillow's
    ``draft``), which is most of the speed of loading large photos.

    Raises:
        OSError, ValueError, SyntaxError: The file is not a readable image (the loader catches these).
    """
    h, w = size
    with Image.open(path) as image:
        image.draft("RGB" if channels == 3 else "L", (w, h))
        image = ImageOps.fit(_to_mode(image, channels), (w, h), method=Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


class ImageFolderSplit(torch.utils.data.Dataset):
    """One split of an image folder: (path, label) pairs decoded on demand, in worker processes.

    ``dataset[i]`` returns ``(image, label, None)`` with a uint8 (C, H, W) image, or
    ``(None, label, (path, reason))`` when the file cannot be decoded, so one bad file never
    ends an epoch; :func:`collate_images` drops such samples and passes the reasons on.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], image_size: tuple[int, int], channels: int) -> None:
        self.samples = [(str(p), int(y)) for p, y in samples]
        self.image_size = image_size
        self.channels = channels

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> torch.Tensor:
        """int64 labels (N,) of every sample, in order."""
        return torch.tensor([y for _, y in self.samples], dtype=torch.int64)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, tuple[str, str] | None]:
        path, label = self.samples[index]
        try:
            return decode_image(path, self.image_size, self.channels), label, None
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            return None, label, (path, f"{type(err).__name__}: {err}")


def collate_images(
    items: Sequence[tuple[torch.Tensor | None, int, tuple[str, str] | None]],
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
    """Stack the decodable samples of a batch; return (uint8 images, int64 labels, [(path, reason)])."""
    good = [(x, y) for x, y, _ in items if x is not None]
    bad = [err for _, _, err in items if err is not None]
    if not good:
        return torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.int64), bad
    return torch.stack([x for x, _ in good]), torch.tensor([y for _, y in good], dtype=torch.int64), bad


def _scan_class_folders(root: Path, bad: BadFileLog) -> tuple[list[str], list[tuple[str, int]]]:
    """Classes (sorted subfolder names) and (path, label) samples of ``root/CLASS/...``."""
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root}: no class folders; expected {root}/CLASS_NAME/IMAGE.jpg")
    samples = []
    for label, class_dir in enumerate(class_dirs):
        found = 0
        for path in sorted(class_dir.rglob("*")):
            if path.name.startswith(".") or not path.is_file():
                continue  # hidden files (.DS_Store, editor backups) are not data
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                bad.add(path, f"not an image file (extension {path.suffix or 'none'})")
            elif path.stat().st_size == 0:
                bad.add(path, "empty file (0 bytes)")
            else:
                samples.append((str(path), label))
                found += 1
        if not found:
            raise DataError(f"class folder {class_dir} has no images")
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
        torch.utils.data.Subset(split, indices), batch_size=64, num_workers=num_workers, collate_fn=collate_images
    )
    images = []
    for x, _, errors in loader:
        bad.extend(errors)
        images.append(x)
    images = [x for x in images if len(x)]
    if not images:
        raise DataError("no training image could be decoded; see the bad-file report")
    return channel_stats(torch.cat(images))


def _probe_size(samples: Sequence[tuple[str, int]], cap: int = 224) -> int:
    """The shorter side of the first readable image, at most ``cap``."""
    for path, _ in samples[:64]:
        try:
            with Image.open(path) as image:
                return min(min(image.size), cap)
        except (OSError, ValueError, SyntaxError):
            continue
    return cap


def load_image_folder(
    root: str | Path,
    *,
    image_size: int | Sequence[int] | None = None,
    channels: int | None = None,
    seed: int = 0,
    val_fraction: float = 0.2,
    stats_samples: int = 1000,
    num_workers: int | None = None,
) -> Dataset:
    """An image folder ``root/CLASS/*.jpg`` (or ``root/train/CLASS``, ``root/val/CLASS``), streamed from disk.

    Files with other extensions and empty files are skipped and recorded in
    ``Dataset.bad_files``; files that fail to decode are skipped by the loader, which records
    them too.

    Args:
        root: The folder. With ``train/`` and ``val/`` (or ``test/``) subfolders those are the
            splits; otherwise a stratified ``val_fraction`` of every class is held out, chosen by ``seed``.
        image_size: Output (height, width) or side; by default the shorter side of the first
            image, at most 224. Images are scaled to cover it and centre-cropped.
        channels: 1 (grey) or 3 (RGB, the default); other modes (palette, RGBA, CMYK) are converted.
        seed: Seed of the held-out split and of the subset used for statistics.
        val_fraction: Fraction of each class held out when there are no split folders.
        stats_samples: How many training images the mean, std and covariance are estimated from.
        num_workers: Decoding processes for the statistics; ``min(4, cpu count)`` by default.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: No class folders, a class folder without images, or split folders whose classes differ.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    bad = BadFileLog()
    train_dir = root / "train"
    held_out = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
    if train_dir.is_dir() and held_out is not None:
        classes, train = _scan_class_folders(train_dir, bad)
        val_classes, val = _scan_class_folders(held_out, bad)
        if val_classes != classes:
            raise DataError(f"{held_out} has classes {val_classes} but {train_dir} has {classes}")
    else:  # a lone train/ folder is split like a plain one
        classes, samples = _scan_class_folders(train_dir if train_dir.is_dir() else root, bad)
        train, val = _stratified_split(samples, val_fraction, seed)
    c = channels or 3
    if c not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {c}")
    size = _as_size(image_size) or (_probe_size(train),) * 2
    train_split, val_split = ImageFolderSplit(train, size, c), ImageFolderSplit(val, size, c)
    workers = min(4, os.cpu_count() or 1) if num_workers is None else num_workers
    mean, std, cov = _stats_of_folder(train_split, stats_samples, seed, workers, bad)
    return Dataset(root.name, classes, c, size, mean, std, cov, train_split, val_split, bad, str(root))


# --------------------------------------------------------------------------------------------
# one entry point

DATASET_NAMES = ("fashion-mnist", "digits", "cifar10", "cifar100")


def load_dataset(
    name_or_path: str | Path,
    *,
    data_dir: str | Path | None = None,
    image_size: int | Sequence[int] | None = None,
    channels: int | None = None,
    resize: str = "auto",
    seed: int = 0,
    val_fraction: float = 0.2,
    download: bool = True,
    num_workers: int | None = None,
) -> Dataset:
    """Load a dataset by name or path: what ``--data`` accepts everywhere.

    Args:
        name_or_path: ``fashion-mnist``, ``digits``, ``cifar10``/``cifar100`` (batches in
            ``data_dir``), or a directory: CIFAR batches, MNIST-format IDX files, or an image folder.
        data_dir: Where named datasets are looked up (and downloaded to).
        image_size: Output side or (height, width). In-memory data keeps its size by default;
            LeNet-5's 32 on Fashion-MNIST zero-pads 28 -> 32 as LeCun did (``resize``).
        channels: 1 or 3; converts grey <-> RGB. The data's own by default (3 for image folders).
        resize: ``auto``, ``pad`` or ``interpolate`` for in-memory data (see :func:`resize_images`).
        seed: Seed of an image folder's held-out split (named datasets have fixed splits).
        val_fraction: Held-out fraction of an image folder without ``train/`` and ``val/``.
        download: Allow downloading Fashion-MNIST when no local copy exists.
        num_workers: Decoding processes used for an image folder's statistics.

    Raises:
        FileNotFoundError: Unknown name that is not an existing path, or files missing.
        ValueError: Malformed data (the message names the file).
    """
    spec = str(name_or_path)
    key = spec.lower().replace("_", "-")
    shape = {"image_size": _as_size(image_size), "channels": channels, "resize": resize}
    if key in ("fashion-mnist", "fashionmnist"):
        return load_fashion_mnist(data_dir, download=download, **shape)
    if key == "digits":
        return load_digits(**shape)
    if key in ("cifar10", "cifar-10", "cifar100", "cifar-100"):
        if data_dir is None:
            raise FileNotFoundError(f"{spec}: pass --data-dir with the extracted python batches (or --data FOLDER)")
        return load_cifar(data_dir, **shape)
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"unknown dataset {spec!r}: not one of {', '.join(DATASET_NAMES)} nor an existing path")
    if not path.is_dir():
        raise DataError(f"{path}: expected a dataset name or a directory")
    if _cifar_layout(path):
        return load_cifar(path, **shape)
    if find_idx_files(path):
        return load_idx_dataset(path, **shape)
    return load_image_folder(
        path, image_size=image_size, channels=channels, seed=seed, val_fraction=val_fraction, num_workers=num_workers
    )


def subsample_per_class(dataset: Dataset, per_class: int, seed: int = 0, split: str = "train") -> Dataset:
    """The dataset with at most ``per_class`` examples of each class in ``split`` (a seeded, fixed choice).

    For learning-curve and transfer experiments ("10 examples per class"). The other split and
    the normalisation statistics are kept, so results stay comparable across sizes.
    """
    if per_class < 1:
        raise DataError(f"per_class must be at least 1, got {per_class}")
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    labels = getattr(dataset, split).labels
    generator = torch.Generator().manual_seed(seed)
    keep = []
    for c in range(dataset.num_classes):
        members = (labels == c).nonzero().flatten()
        keep.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    index = torch.cat(keep).sort().values
    part = getattr(dataset, split)
    if isinstance(part, TensorSplit):
        kept = TensorSplit(part.images[index], labels[index])
    else:
        kept = ImageFolderSplit([part.samples[i] for i in index.tolist()], part.image_size, part.channels)
    return dataclasses.replace(dataset, **{split: kept})
