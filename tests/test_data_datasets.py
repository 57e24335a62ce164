"""Digits, CIFAR batches, image folders and their bad files, in-memory resizing and statistics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from convnets.data import (
    BadFileLog,
    channel_stats,
    convert_channels,
    load_dataset,
    load_image_folder,
    make_loader,
    resize_images,
)

# ------------------------------------------------------------------ in-memory helpers


def test_resize_pad_centres_and_interpolate_resizes():
    x = torch.full((2, 1, 28, 28), 200, dtype=torch.uint8)
    padded = resize_images(x, (32, 32))  # auto: within 25% -> pad
    assert padded.shape == (2, 1, 32, 32)
    assert padded[:, :, 2:30, 2:30].eq(200).all() and padded.sum() == x.sum()
    big = resize_images(x, (64, 48))  # auto: too far -> interpolate, a constant stays constant
    assert big.shape == (2, 1, 64, 48) and big.eq(200).all()
    with pytest.raises(ValueError, match="cannot pad"):
        resize_images(x, (20, 20), "pad")


def test_convert_channels_and_stats():
    grey = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)
    rgb = convert_channels(grey, 3)
    assert rgb.shape == (1, 3, 1, 2) and rgb[0, :, 0, 1].tolist() == [255, 255, 255]
    red = torch.zeros(1, 3, 1, 1, dtype=torch.uint8)
    red[0, 0] = 255
    assert convert_channels(red, 1).item() == 76  # ITU-R 601-2: 0.299 * 255
    images = torch.stack([torch.zeros(3, 2, 2), torch.ones(3, 2, 2)]).mul(255).to(torch.uint8)
    images[:, 2] = 51  # channel 2 constant at 0.2
    mean, std, cov = channel_stats(images, chunk=1)
    assert mean == pytest.approx((0.5, 0.5, 0.2)) and std[:2] == pytest.approx((0.5, 0.5))
    assert cov[0, 1].item() == pytest.approx(0.25) and cov[2].abs().max().item() < 1e-6


# ------------------------------------------------------------------ digits


def test_digits_split_is_fixed_and_stratified():
    pytest.importorskip("sklearn")
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=123)
    assert (len(a.train), len(a.test)) == (1437, 360) and a.num_classes == 10
    assert torch.equal(a.test.labels, b.test.labels) and torch.equal(a.test.images, b.test.images)
    counts = torch.bincount(a.test.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # 10% of every class, within rounding
    assert a.train.images.max() == 255 and a.train.images.shape[1:] == (1, 8, 8)


# ------------------------------------------------------------------ image folders


def _image(mode: str, size=(12, 9), value: int = 100) -> Image.Image:
    if mode == "P":
        image = Image.new("P", size, 1)
        image.putpalette([0, 0, 0, value, value, value] + [0] * 762)
        return image
    fill = {"L": value, "RGB": (value, value, value), "RGBA": (value, value, value, 255)}[mode]
    return Image.new(mode, size, fill)


def make_folder(root: Path, per_class: int = 5, classes=("cat", "dog"), size=(12, 9)) -> Path:
    """Class k's images have pixel value 60*(k+1), in assorted modes and formats."""
    modes = [("RGB", ".jpg"), ("L", ".png"), ("RGBA", ".png"), ("P", ".gif"), ("RGB", ".bmp")]
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            mode, ext = modes[i % len(modes)]
            _image(mode, size, 60 * (k + 1)).save(root / name / f"{i}{ext}")
    return root


def test_image_folder_classes_modes_and_seeded_split(tmp_path):
    root = make_folder(tmp_path / "pets")
    data = load_image_folder(root, image_size=8, num_workers=0)
    assert data.classes == ["cat", "dog"] and data.channels == 3 and data.image_size == (8, 8)
    assert (len(data.train), len(data.test)) == (8, 2)  # one of five per class held out
    assert sorted(y for _, y in data.test.samples) == [0, 1]
    for i in range(len(data.train)):
        image, label, error = data.train[i]
        assert error is None and image.shape == (3, 8, 8) and image.dtype == torch.uint8
        # Every mode (grey, RGBA, palette, JPEG) decodes to the class's grey level (JPEG within rounding).
        assert (image.float().mean() - 60 * (label + 1)).abs() < 3
    again = load_image_folder(root, image_size=8, num_workers=0)
    other = load_image_folder(root, image_size=8, num_workers=0, seed=5)
    assert again.test.samples == data.test.samples
    assert other.test.samples != data.test.samples  # a different seed holds out other files
    grey = load_image_folder(root, image_size=(6, 10), channels=1, num_workers=0)
    assert grey.train[0][0].shape == (1, 6, 10) and len(grey.mean) == 1


def test_image_folder_train_val_subfolders(tmp_path):
    make_folder(tmp_path / "d" / "train", per_class=3)
    make_folder(tmp_path / "d" / "val", per_class=2)
    data = load_dataset(tmp_path / "d", image_size=8, num_workers=0)
    assert (len(data.train), len(data.test)) == (6, 4) and not data.in_memory
    make_folder(tmp_path / "lone" / "train", per_class=5)
    lone = load_dataset(tmp_path / "lone", image_size=8, num_workers=0)
    assert lone.classes == ["cat", "dog"] and (len(lone.train), len(lone.test)) == (8, 2)
    make_folder(tmp_path / "e" / "train", per_class=2)
    make_folder(tmp_path / "e" / "val", per_class=2, classes=("cat", "owl"))
    with pytest.raises(ValueError, match="has classes"):
        load_dataset(tmp_path / "e", image_size=8)


def test_empty_class_and_imageless_folders_are_clear_errors(tmp_path):
    root = make_folder(tmp_path / "a")
    (root / "zebra").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*zebra has no images"):
        load_image_folder(root)
    (tmp_path / "b" / "x").mkdir(parents=True)
    (tmp_path / "b" / "x" / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"class folder .*x has no images"):
        load_image_folder(tmp_path / "b")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "readme.md").write_text("no classes")
    with pytest.raises(ValueError, match="no class folders"):
        load_image_folder(tmp_path / "c")


def add_bad_files(root: Path) -> dict[str, str]:
    """Put one of each kind of broken file into class ``cat``; return name -> expected reason fragment."""
    cat = root / "cat"
    (cat / "empty.jpg").write_bytes(b"")
    (cat / "notes.txt").write_text("not an image")
    (cat / "text.png").write_text("this is text with an image extension")
    _image("RGB", (64, 64), 90).save(cat / "big.jpg", quality=95)
    (cat / "truncated.jpg").write_bytes((cat / "big.jpg").read_bytes()[:300])
    return {
        "empty.jpg": "empty file",
        "notes.txt": "not an image file",
        "text.png": "UnidentifiedImageError",
        "truncated.jpg": "OSError",
    }


def test_bad_files_are_skipped_reported_and_written(tmp_path):
    root = make_folder(tmp_path / "pets", per_class=5)
    expected = add_bad_files(root)
    data = load_image_folder(root, image_size=8, val_fraction=0, num_workers=2)
    scanned = dict((Path(p).name, r) for p, r in data.bad_files)
    assert set(scanned) >= {"empty.jpg", "notes.txt"}  # found by the scan, before any decoding
    loader = make_loader(data, batch_size=4, augment="standard", num_workers=2)
    seen = sum(len(y) for _, y in loader)
    assert seen == len(data.train) - 2  # the epoch finished; only the two undecodable files are missing
    log = BadFileLog(data.bad_files.items + loader.bad_files.items)
    reasons = {Path(p).name: r for p, r in log}
    assert set(reasons) == set(expected)
    for name, fragment in expected.items():
        assert fragment in reasons[name], (name, reasons[name])
    written = log.write(tmp_path / "run").read_text().splitlines()
    assert written[0] == "path\treason" and len(written) == 5
    assert any(line.startswith(str(root / "cat" / "truncated.jpg") + "\t") for line in written)
    assert log.summary().startswith("4 bad files skipped")
    # The loader records into the dataset's log, so that one log covers the scan and every split;
    # a second epoch meets the same files again but does not report them twice.
    assert loader.bad_files is data.bad_files and len(data.bad_files) == 4
    loader.set_epoch(1)
    list(loader)
    assert len(data.bad_files) == 4


def test_unknown_names_and_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(ValueError, match="expected a dataset name or a directory"):
        load_dataset(tmp_path / "x.csv")
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        load_dataset("cifar10")


def test_subsample_per_class_keeps_n_of_each_class_and_the_test_split():
    from convnets.data.datasets import load_dataset, subsample_per_class

    full = load_dataset("digits")
    small = subsample_per_class(full, 10, seed=3)
    assert small.train.labels.bincount().tolist() == [10] * 10
    assert small.test is full.test and small.mean == full.mean
    again = subsample_per_class(full, 10, seed=3)
    assert torch.equal(again.train.images, small.train.images)  # seeded: the same choice every time
    assert not torch.equal(subsample_per_class(full, 10, seed=4).train.images, small.train.images)


def test_files_beside_the_images_are_summed_up_not_listed_one_by_one(tmp_path, caplog):
    """A detection dataset's annotations (.xml, .json) beside its images printed one warning line each."""
    root = make_folder(tmp_path / "pets", per_class=5)
    for i in range(40):
        (root / "cat" / f"{i}.xml").write_text("<annotation/>")
    (root / "cat" / "labels.json").write_text("{}")
    with caplog.at_level("WARNING", logger="convnets.data"):
        data = load_image_folder(root, image_size=8, num_workers=0)
    lines = [r.getMessage() for r in caplog.records if "not images" in r.getMessage() or ".xml" in r.getMessage()]
    assert lines == [f"skipped 41 files in {root / 'cat'} that are not images (1 .json, 40 .xml); listed in "
                     "bad_files.tsv"]
    assert len(data.bad_files) == 41  # each still in the log bad_files.tsv is written from
