"""IDX files, Fashion-MNIST lookup and download (against a local HTTP server)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from convnets.data import find_fashion_mnist, load_dataset, load_idx_dataset, read_idx, write_idx
from convnets.data.formats import fashion_mnist as ds
from convnets.data.idx import IDXFormatError
from convnets.errors import DownloadError

SYSTEM_FMNIST = ds.FASHION_MNIST_SYSTEM_DIR


def write_mnist_dir(directory: Path, n_train: int = 20, n_test: int = 8, size=(6, 5), classes: int = 3, prefix=""):
    """A tiny MNIST-format directory: image i is filled with value 10*label + 1, so tests can read labels off pixels."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % classes).astype(np.uint8)
        rng.shuffle(labels)
        images = np.broadcast_to((10 * labels + 1).astype(np.uint8)[:, None, None], (n, *size)).copy()
        write_idx(directory / f"{prefix}{split}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{prefix}{split}-labels-idx1-ubyte", labels)
    return directory


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32])
@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_idx_roundtrip_raw_and_gzip(tmp_path, dtype, name):
    array = (np.arange(2 * 3 * 4) * 7 - 20).reshape(2, 3, 4).astype(dtype)
    if dtype == np.uint8:
        array = (np.arange(24) * 7).astype(np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / name, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == (2, 3, 4)
    np.testing.assert_array_equal(back, array)


def test_idx_header_matches_mnist_layout(tmp_path):
    path = write_idx(tmp_path / "x", np.zeros((3, 2, 2), np.uint8))
    assert path.read_bytes()[:16] == bytes([0, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 2])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[:-5], "header says shape"),  # truncated
        (lambda b: b + b"\0\0", "header says shape"),  # trailing bytes
        (lambda b: b"\x00\x00\x42" + b[3:], "not an IDX file"),  # unknown type code
        (lambda b: b[:6], "header declares"),  # cut inside the header
        (lambda b: b"", "not an IDX file"),  # empty
    ],
)
def test_idx_errors_name_the_file(tmp_path, mutate, message):
    good = write_idx(tmp_path / "good", np.zeros((4, 3, 3), np.uint8)).read_bytes()
    bad = tmp_path / "broken-images-idx3-ubyte"
    bad.write_bytes(mutate(good))
    with pytest.raises(IDXFormatError, match=message) as info:
        read_idx(bad)
    assert str(bad) in str(info.value)


def test_truncated_gzip_is_a_format_error(tmp_path):
    data = gzip.compress(b"\0\0\x08\x01\0\0\0\x10" + bytes(16))
    path = tmp_path / "cut.gz"
    path.write_bytes(data[:-6])
    with pytest.raises(IDXFormatError, match="cut.gz"):
        read_idx(path)


def test_idx_dataset_loads_any_prefix_and_keeps_labels(tmp_path):
    d = write_mnist_dir(tmp_path / "emnist", prefix="emnist-letters-")
    data = load_dataset(d)
    assert data.name == "emnist" and data.classes == ["0", "1", "2"]
    assert data.train.images.shape == (20, 1, 6, 5) and data.train.images.dtype == torch.uint8
    assert data.test.labels.dtype == torch.int64
    # Each image's pixel value encodes its label: the pairing survived loading.
    assert (data.train.images[:, 0, 0, 0].long() == 10 * data.train.labels + 1).all()


def test_idx_labels_out_of_range_and_count_mismatch(tmp_path):
    d = write_mnist_dir(tmp_path / "m")
    write_idx(d / "t10k-labels-idx1-ubyte", np.array([0, 1, 2, 7, 0, 1, 2, 0], np.uint8))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte: labels must lie in 0..2"):
        load_idx_dataset(d)
    write_idx(d / "t10k-labels-idx1-ubyte", np.zeros(5, np.uint8))
    with pytest.raises(ValueError, match="has 8 images but .* has 5 labels"):
        load_idx_dataset(d)


def test_fashion_mnist_label_range_uses_its_ten_classes(tmp_path, monkeypatch):
    monkeypatch.setattr(ds, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "nowhere")
    d = write_mnist_dir(tmp_path / "f", classes=3)
    write_idx(d / "train-labels-idx1-ubyte", np.full(20, 12, np.uint8))
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte: labels must lie in 0..9"):
        load_dataset("fashion-mnist", data_dir=d, download=False)


def test_fashion_mnist_lookup_order(tmp_path, monkeypatch):
    system = write_mnist_dir(tmp_path / "system")
    monkeypatch.setattr(ds, "FASHION_MNIST_SYSTEM_DIR", system)
    user = write_mnist_dir(tmp_path / "user" / "fashion-mnist")
    assert find_fashion_mnist(tmp_path / "user", download=False) == user
    assert find_fashion_mnist(tmp_path / "empty", download=False) == system
    monkeypatch.setattr(ds, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        find_fashion_mnist(tmp_path / "empty", download=False)


@pytest.fixture
def http_server(tmp_path):
    """Serve tmp_path/www on 127.0.0.1 from a thread; yields (directory, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _sums(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(gzip.decompress(p.read_bytes())).hexdigest() for p in directory.glob("*.gz")}


def test_download_verifies_checksums_and_loads(tmp_path, http_server, monkeypatch):
    www, url = http_server
    src = write_mnist_dir(tmp_path / "src", classes=10)
    for p in src.iterdir():  # the public files are all gzipped
        (www / (p.name if p.suffix == ".gz" else p.name + ".gz")).write_bytes(
            p.read_bytes() if p.suffix == ".gz" else gzip.compress(p.read_bytes())
        )
    sums = _sums(www)
    monkeypatch.setattr(ds, "FASHION_MNIST_URL", url)
    monkeypatch.setattr(ds, "FASHION_MNIST_SHA256", sums)
    monkeypatch.setattr(ds, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "nowhere")
    data = load_dataset("fashion-mnist", data_dir=tmp_path / "data")
    assert sorted(p.name for p in (tmp_path / "data" / "fashion-mnist").iterdir()) == sorted(sums)
    assert len(data.train) == 20 and data.classes[9] == "Ankle boot"


def test_download_rejects_a_wrong_checksum_and_leaves_nothing(tmp_path, http_server):
    www, url = http_server
    (www / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"tampered"))
    dest = tmp_path / "dl"
    with pytest.raises(DownloadError, match="checksum mismatch"):
        ds.download_fashion_mnist(dest, base_url=url, checksums={"train-labels-idx1-ubyte.gz": "0" * 64})
    assert not dest.exists() or not any(dest.iterdir())


def test_download_failure_is_a_clear_not_found(tmp_path, http_server, monkeypatch):
    _, url = http_server  # serves nothing: every file is a 404
    monkeypatch.setattr(ds, "FASHION_MNIST_URL", url)
    monkeypatch.setattr(ds, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="download failed"):
        find_fashion_mnist(tmp_path / "data")


@pytest.mark.skipif(not (SYSTEM_FMNIST / "train-images-idx3-ubyte.gz").is_file(), reason="dataset-fashion-mnist absent")
def test_real_fashion_mnist_and_lenet_padding():
    data = load_dataset("fashion-mnist", image_size=32)
    assert (len(data.train), len(data.test)) == (60000, 10000)
    assert data.train.images.shape[1:] == (1, 32, 32) and data.num_classes == 10
    # 28 -> 32 is zero padding (LeCun et al. 1998), so the 2-pixel border is empty everywhere.
    assert data.train.images[:, :, :2].max() == 0 and data.train.images[:, :, :, -2:].max() == 0
    # The dataset's published statistics are for 28x28: padding scales the mean by 784/1024.
    assert data.mean[0] == pytest.approx(0.2860 * 784 / 1024, abs=1e-3)
    assert _sums(SYSTEM_FMNIST) == ds.FASHION_MNIST_SHA256
