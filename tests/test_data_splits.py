"""``load_dataset(..., splits=("test",))``: every format reads only the splits asked for, and the same test split."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from convnets.data import load_dataset, make_loader
from convnets.errors import ConfigError
from test_data_cifar import write_cifar10
from test_data_datasets import make_folder
from test_data_idx import write_mnist_dir


def same_split(a, b) -> bool:
    """Equal tensors (in memory) or the same files in the same order with the same size (image folders)."""
    if hasattr(a, "images"):
        return torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    return a.samples == b.samples and a.image_size == b.image_size and a.channels == b.channels


def check_test_only(load) -> None:
    both, test_only, train_only = load(None), load(("test",)), load(("train",))
    assert test_only.train is None and test_only.mean is None and test_only.std is None
    assert test_only.pixel_cov is None
    assert same_split(test_only.test, both.test)
    assert (test_only.classes, test_only.channels, test_only.image_size) == (both.classes, both.channels,
                                                                             both.image_size)
    assert train_only.test is None and same_split(train_only.train, both.train)
    assert (train_only.mean, train_only.std) == (both.mean, both.std)  # the statistics are the training split's
    assert "not loaded" in test_only.describe()


def kwargs(splits):
    return {} if splits is None else {"splits": splits}


def test_digits_loads_only_the_splits_asked_for() -> None:
    check_test_only(lambda splits: load_dataset("digits", image_size=12, **kwargs(splits)))


def test_cifar_reads_no_training_batch_for_the_test_split(tmp_path: Path) -> None:
    root = write_cifar10(tmp_path / "cifar")
    check_test_only(lambda splits: load_dataset(root, **kwargs(splits)))
    for i in range(1, 6):  # the training batches are not even opened
        (root / f"data_batch_{i}").unlink()
    assert len(load_dataset(root, splits=("test",)).test) == 6
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        load_dataset(root)


def test_idx_reads_no_training_image_for_the_test_split(tmp_path: Path) -> None:
    write_mnist_dir(tmp_path / "idx")
    check_test_only(lambda splits: load_dataset(tmp_path / "idx", **kwargs(splits)))
    # The training labels still give the class count (the test labels may miss a class); the images are not read.
    (tmp_path / "idx" / "train-images-idx3-ubyte.gz").write_bytes(b"damaged")
    assert load_dataset(tmp_path / "idx", splits=("test",)).classes == ["0", "1", "2"]


def test_fashion_mnist_test_split_is_the_same_without_the_training_split(tmp_path: Path, monkeypatch) -> None:
    import convnets.data.formats.fashion_mnist as fashion

    monkeypatch.setattr(fashion, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "nowhere")  # the files below, not the system's
    directory = write_mnist_dir(tmp_path / "fashion-mnist", classes=10)
    check_test_only(lambda splits: load_dataset("fashion-mnist", data_dir=directory, download=False,
                                                **kwargs(splits)))


def test_image_folder_test_split_decodes_no_training_image(tmp_path: Path, monkeypatch) -> None:
    make_folder(tmp_path / "d" / "train", per_class=3)
    make_folder(tmp_path / "d" / "val", per_class=2)
    check_test_only(lambda splits: load_dataset(tmp_path / "d", image_size=8, num_workers=0, **kwargs(splits)))
    make_folder(tmp_path / "plain", per_class=5)  # held out by the seed: the same files either way
    check_test_only(lambda splits: load_dataset(tmp_path / "plain", image_size=8, num_workers=0, **kwargs(splits)))
    import convnets.data.formats.folder as folder

    def no_statistics(*args, **kwargs):
        raise AssertionError("the training images were decoded for statistics")

    monkeypatch.setattr(folder, "_stats_of_folder", no_statistics)
    assert len(load_dataset(tmp_path / "d", image_size=8, splits=("test",)).test) == 4


def test_a_split_not_loaded_makes_no_loader() -> None:
    test_only = load_dataset("digits", splits=("test",))
    with pytest.raises(ConfigError, match=r"the train split was not loaded"):
        make_loader(test_only, "train", batch_size=4)
    with pytest.raises(ConfigError, match=r"no normalisation statistics"):
        make_loader(test_only, "test", batch_size=4)
    import dataclasses

    given = dataclasses.replace(test_only, mean=(0.5,), std=(0.25,))
    x, _ = next(iter(make_loader(given, "test", batch_size=4)))
    first = test_only.test.images[:4].float() / 255
    assert torch.allclose(x, (first - 0.5) / 0.25)


def test_splits_order_and_lists_are_accepted() -> None:
    both = load_dataset("digits", splits=["test", "train"])  # a list, in any order
    assert both.train is not None and both.test is not None
