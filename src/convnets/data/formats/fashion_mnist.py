"""Fashion-MNIST (Xiao et al. 2017): found locally (Debian's package, --data-dir) or downloaded, then read as IDX."""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from convnets.data.core import SPLITS, Dataset
from convnets.data.formats.idx import find_idx_files, load_idx_dataset
from convnets.errors import DownloadError

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
DEFAULT_CACHE = Path(os.environ.get("CONVNETS_DATA", Path.home() / ".cache" / "convnets"))


def _sha256_of_content(path: Path) -> str:
    """SHA-256 of a file's bytes after gunzip (when it is gzip)."""
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    digest = hashlib.sha256()
    with gzip.open(path, "rb") if gz else open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_file(url: str, dest: str | Path, sha256: str | None = None) -> Path:
    """Download ``url`` to ``dest`` (with the weights' downloader: a deadline, a progress bar, nothing left
    half-written), then check the SHA-256 of its *decompressed* content.

    Raises:
        DownloadError: The server cannot be reached, answers an error or stalls, or the checksum does
            not match (the file is removed).
    """
    from convnets.weights.io import download

    dest = download(url, dest)
    if sha256 is not None:
        try:
            got = _sha256_of_content(dest)
        except (OSError, EOFError) as err:
            got = f"unreadable ({err})"
        if got != sha256:
            dest.unlink(missing_ok=True)
            raise DownloadError(f"checksum mismatch for {url}: expected sha256 {sha256}, got {got}; "
                                "the file was not kept")
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
    splits: tuple[str, ...] = SPLITS,
) -> Dataset:
    """Fashion-MNIST (Xiao et al. 2017): 60,000 + 10,000 grey 28x28 images of 10 clothing classes.

    Args:
        data_dir: Where to look first (see :func:`find_fashion_mnist`).
        download: Download when no local copy exists.
        image_size, channels, resize, splits: As for :func:`~convnets.data.load_idx_dataset`.
    """
    directory = find_fashion_mnist(data_dir, download=download)
    return load_idx_dataset(
        directory,
        name="fashion-mnist",
        classes=list(FASHION_MNIST_CLASSES),
        image_size=image_size,
        channels=channels,
        resize=resize,
        splits=splits,
    )
