"""Bad input to the data side: datasets that would run code or cannot make a classifier, and out-of-range options.

Covers ``convnets augment``, ``--data`` under ``convnets train``, and the Python API (``load_dataset``,
``make_loader``, ``AugmentConfig``/``get_preset``, ``subsample_per_class``).
"""

from __future__ import annotations

import builtins
import functools
import os
import pickle
from pathlib import Path

import numpy as np
import numpy.testing._private.utils as numpy_test_utils
import pytest
from PIL import Image

from badinput import Case, check_case, params
from convnets.data import (
    AugmentConfig,
    get_preset,
    load_dataset,
    load_image_folder,
    make_loader,
    subsample_per_class,
)
from convnets.data.idx import write_idx
from test_data_cifar import Payload, py2_pickle, write_cifar10

# ------------------------------------------------------------------ setups


def cifar_with_payload(target: str, function, make_code, *, cifar100: bool = False):
    """A setup: a CIFAR folder at tmp/cifar whose ``target`` file asks ``function`` to create tmp/marker."""

    def setup(tmp: Path) -> None:
        root = tmp / "cifar"
        if cifar100:
            root.mkdir()
            (root / "meta").write_bytes(py2_pickle({"fine_label_names": [str(i) for i in range(100)]}))
            for split in ("train", "test"):
                (root / split).write_bytes(py2_pickle({"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0, 1]}))
        else:
            write_cifar10(root, n=2)
        batch = pickle.loads((root / target).read_bytes(), encoding="latin1")
        key = next(k for k in ("label_names", "fine_label_names", "labels", "fine_labels") if k in batch)
        batch[key] = [Payload(function, *make_code(tmp / "marker"))] + list(batch[key])[1:]
        (root / target).write_bytes(pickle.dumps(batch, protocol=2))

    return setup


def shell(marker: Path) -> tuple:
    return (f"touch {marker}",)


def python(marker: Path) -> tuple:
    return (f"open({str(marker)!r}, 'w').write('ran')",)


def no_marker(tmp: Path) -> None:
    assert not (tmp / "marker").exists(), "the payload ran"
    assert not (tmp / "grid.png").exists()


def object_array_payload(tmp: Path) -> None:
    """The image data itself an object array whose one element is a payload."""
    write_cifar10(tmp / "cifar", n=2)
    data = np.empty(1, dtype=object)
    data[0] = Payload(os.system, *shell(tmp / "marker"))
    (tmp / "cifar" / "data_batch_2").write_bytes(pickle.dumps({"data": data, "labels": [0]}))


def folder(classes: dict[str, int], loose: int = 0):
    """A setup: tmp/images with ``classes`` (name -> image count) of small PNGs, and ``loose`` images at its root."""

    def setup(tmp: Path) -> None:
        root = tmp / "images"
        root.mkdir()
        for k, (name, count) in enumerate(classes.items()):
            (root / name).mkdir()
            for i in range(count):
                Image.new("RGB", (12, 12), (40 * k, 80, 120)).save(root / name / f"{i}.png")
        for i in range(loose):
            Image.new("RGB", (12, 12)).save(root / f"loose{i}.png")

    return setup


def unreadable_class(tmp: Path) -> None:
    folder({"cat": 3, "dog": 3})(tmp)
    (tmp / "images" / "owl").mkdir()
    (tmp / "images" / "owl" / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (tmp / "images" / "owl" / "b.png").write_bytes(b"<html>404 not found</html>")


def only_text_class(tmp: Path) -> None:
    folder({"cat": 3, "dog": 3})(tmp)
    (tmp / "images" / "notes").mkdir()
    (tmp / "images" / "notes" / "readme.txt").write_text("not images")


def idx(train_labels, test_labels=(0, 1), dtype=np.uint8):
    """A setup: tmp/idx with MNIST-format files holding these labels (4x4 blank images)."""

    def setup(tmp: Path) -> None:
        root = tmp / "idx"
        root.mkdir()
        for split, labels in (("train", train_labels), ("t10k", test_labels)):
            write_idx(root / f"{split}-images-idx3-ubyte", np.zeros((len(labels), 4, 4), np.uint8))
            write_idx(root / f"{split}-labels-idx1-ubyte", np.array(labels, dtype))

    return setup


def cifar_one_class(tmp: Path) -> None:
    root = write_cifar10(tmp / "cifar", n=2)
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        batch = pickle.loads((root / name).read_bytes(), encoding="latin1")
        (root / name).write_bytes(py2_pickle(dict(batch, labels=[4, 4])))


def a_file(tmp: Path) -> None:
    (tmp / "data.csv").write_text("label,pixels\n")


def out_under_a_file(tmp: Path) -> None:
    (tmp / "notes.txt").write_text("mine")


def notes_untouched(tmp: Path) -> None:
    assert (tmp / "notes.txt").read_text() == "mine"


def out_is_a_dir(tmp: Path) -> None:
    (tmp / "grid.png").mkdir()
    (tmp / "grid.png" / "keep.txt").write_text("mine")


def dir_untouched(tmp: Path) -> None:
    assert (tmp / "grid.png" / "keep.txt").read_text() == "mine"


def a_photo(tmp: Path) -> None:
    Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp / "photo.jpg")


def photo_untouched(tmp: Path) -> None:
    with Image.open(tmp / "photo.jpg") as photo:
        assert photo.size == (16, 16) and not list(tmp.glob(".*part"))


def grid_untouched(tmp: Path) -> None:
    assert (tmp / "grid.png").read_text() == "mine"


def nothing_written(tmp: Path) -> None:
    assert not list(tmp.glob("grid*")) and not list(tmp.glob(".*part")), list(tmp.iterdir())


@functools.cache
def digits():
    return load_dataset("digits")


AUG = ["augment", "--data", "digits", "--out", "{tmp}/grid.png"]

CASES = [
    # 1. no input runs code: a CIFAR batch that asks for anything but data is refused, naming the file
    Case("train-cifar-meta-os-system", 1,
         ["train", "lenet5", "--data", "{tmp}/cifar", "--out", "{tmp}/run", "--epochs", "1", "--device", "cpu"],
         r"batches\.meta: refused to load: the pickle asks for posix\.system",
         setup=cifar_with_payload("batches.meta", os.system, shell), after=no_marker),
    Case("augment-cifar10-data-dir-exec", 1,
         ["augment", "--data", "cifar10", "--data-dir", "{tmp}/cifar", "--out", "{tmp}/grid.png"],
         r"data_batch_1: refused to load: the pickle asks for (__builtin__|builtins)\.exec",
         setup=cifar_with_payload("data_batch_1", builtins.exec, python), after=no_marker),
    Case("load-dataset-test-batch-numpy-runstring", 1, call=lambda tmp: load_dataset(tmp / "cifar"),
         expect=r"test_batch: refused to load: the pickle asks for numpy\.testing\._private\.utils\.runstring",
         setup=cifar_with_payload("test_batch", numpy_test_utils.runstring, lambda m: (*python(m), {})),
         after=no_marker),
    Case("load-dataset-cifar100-meta-os-system", 1,
         call=lambda tmp: load_dataset("cifar100", data_dir=tmp / "cifar"),
         expect=r"meta: refused to load.*posix\.system",
         setup=cifar_with_payload("meta", os.system, shell, cifar100=True), after=no_marker),
    Case("load-dataset-cifar100-train-exec", 1, call=lambda tmp: load_dataset(tmp / "cifar"),
         expect=r"train: refused to load.*(__builtin__|builtins)\.exec",
         setup=cifar_with_payload("train", builtins.exec, python, cifar100=True), after=no_marker),
    Case("augment-payload-inside-an-object-array", 1, ["augment", "--data", "{tmp}/cifar", "--out", "{tmp}/grid.png"],
         r"data_batch_2: refused to load.*posix\.system", setup=object_array_payload, after=no_marker),
    # 3. options checked before work, with the allowed range in the message
    Case("augment-rows-zero", 3, [*AUG, "--rows", "0"], r"--rows.*from 1 to 64", after=nothing_written),
    Case("augment-rows-huge", 3, [*AUG, "--rows", "100000"], r"--rows.*from 1 to 64"),
    Case("augment-variants-negative", 3, [*AUG, "--variants", "-1"], r"--variants.*from 0 to 32"),
    Case("augment-image-size-zero", 3, [*AUG, "--image-size", "0"], r"--image-size.*from 1 to 1024"),
    Case("augment-image-size-negative", 3, [*AUG, "--image-size", "-5"], r"--image-size.*from 1 to 1024"),
    Case("augment-image-size-20000", 3, [*AUG, "--image-size", "20000"], r"--image-size.*from 1 to 1024"),
    Case("augment-seed-negative", 3, [*AUG, "--seed", "-1"], r"--seed.*whole number from 0"),
    Case("augment-channels-two", 3, [*AUG, "--channels", "2"], r"--channels.*choose from 1, 3"),
    Case("augment-set-unknown-key", 3, [*AUG, "--set", "spin=3"], r"unknown augmentation settings: spin; known: hflip"),
    Case("augment-set-rotate-negative", 3, [*AUG, "--set", "rotate=-5"],
         r"rotate \(degrees\) must be a number from 0 to 180; got -5", after=nothing_written),
    Case("augment-set-crop-scale-reversed", 3, [*AUG, "--set", "crop_scale=(2, 1)"],
         r"crop_scale .* must be None \(off\) or \(min, max\) with 0\.01 <= min <= max <= 1; got \(2, 1\)"),
    Case("augment-set-crop-scale-number", 3, [*AUG, "--set", "crop_scale=0.5"], r"crop_scale .*got 0\.5"),
    Case("augment-set-hflip-word", 3, [*AUG, "--set", "hflip=yes"], r"hflip \(a probability\).*from 0 to 1; got 'yes'"),
    Case("augment-set-hflip-two", 3, [*AUG, "--set", "hflip=2"], r"hflip .*from 0 to 1; got 2"),
    Case("augment-set-infinite", 3, [*AUG, "--set", "color_shift=1e999"], r"color_shift .*from 0 to 255; got inf"),
    Case("augment-set-no-equals", 3, [*AUG, "--set", "rotate"], r"--set takes KEY=VALUE, got 'rotate'"),
    Case("augment-out-under-a-file", 3, ["augment", "--data", "digits", "--out", "{tmp}/notes.txt/grid.png"],
         r"notes\.txt/grid\.png: cannot be written: .*notes\.txt is a file", setup=out_under_a_file,
         after=notes_untouched),
    Case("augment-out-a-directory", 3, ["augment", "--data", "digits", "--out", "{tmp}/grid.png"],
         r"grid\.png: is a directory", setup=out_is_a_dir, after=dir_untouched),
    Case("augment-out-unknown-extension", 3, ["augment", "--data", "digits", "--out", "{tmp}/grid.xyz"],
         r"grid\.xyz: --out must end in an image extension", after=nothing_written),
    Case("augment-data-empty", 3, ["augment", "--data", "", "--out", "{tmp}/grid.png"],
         r"expected a dataset name \(fashion-mnist, digits, cifar10, cifar100\) or a path, got ''"),
    Case("load-dataset-not-a-path", 3, call=lambda tmp: load_dataset(3), expect=r"or a path, got 3"),
    Case("load-image-size-zero", 3, call=lambda tmp: load_dataset("digits", image_size=0),
         expect=r"image_size must be .* from 1 to 4096; got 0"),
    Case("load-image-size-20000", 3, call=lambda tmp: load_dataset("digits", image_size=20000),
         expect=r"image_size .*from 1 to 4096; got 20000"),
    Case("load-image-size-text", 3, call=lambda tmp: load_dataset("digits", image_size="32"),
         expect=r"image_size .*; got '32'"),
    Case("load-image-size-three-sides", 3, call=lambda tmp: load_dataset("digits", image_size=(8, 8, 3)),
         expect=r"image_size must be a whole number or \(height, width\)"),
    Case("load-channels-two", 3, call=lambda tmp: load_dataset("digits", channels=2),
         expect=r"channels must be 1 \(grey\) or 3 \(RGB\); got 2"),
    Case("load-resize-unknown", 3, call=lambda tmp: load_dataset("digits", resize="nearest"),
         expect=r"resize must be one of auto, pad, interpolate; got 'nearest'"),
    Case("load-seed-negative", 3, call=lambda tmp: load_dataset(tmp / "images", seed=-1),
         expect=r"seed must be a whole number from 0", setup=folder({"a": 2, "b": 2})),
    Case("load-val-fraction-one", 3, call=lambda tmp: load_dataset(tmp / "images", val_fraction=1.0),
         expect=r"val_fraction must be a number in \[0, 1\); got 1\.0", setup=folder({"a": 2, "b": 2})),
    Case("load-num-workers-negative", 3, call=lambda tmp: load_dataset("digits", num_workers=-1),
         expect=r"num_workers must be a whole number from 0 to 256"),
    Case("load-splits-a-string", 3, call=lambda tmp: load_dataset("digits", splits="test"),
         expect=r"splits must be a non-empty tuple of 'train', 'test'; got 'test' \(a tuple: \('test',\)\)"),
    Case("load-splits-empty", 3, call=lambda tmp: load_dataset("digits", splits=()),
         expect=r"splits must be a non-empty tuple of 'train', 'test'; got \(\)"),
    Case("load-splits-val", 3, call=lambda tmp: load_dataset(tmp / "images", splits=("val",)),
         expect=r"got \('val',\) \(the held-out split, an image folder's val/ folder among them, is 'test'\)",
         setup=folder({"a": 2, "b": 2})),
    Case("load-splits-unknown", 3, call=lambda tmp: load_dataset("digits", splits=("train", "dev")),
         expect=r"splits must be .*; got \('train', 'dev'\)"),
    Case("load-splits-number", 3, call=lambda tmp: load_dataset("digits", splits=[0]),
         expect=r"splits must be .*; got \[0\]"),
    Case("load-splits-none", 3, call=lambda tmp: load_dataset("digits", splits=None),
         expect=r"splits must be .*; got None"),
    Case("subsample-split-not-loaded", 3,
         call=lambda tmp: subsample_per_class(load_dataset("digits", splits=("test",)), 2),
         expect=r"the train split was not loaded"),
    Case("loader-batch-size-zero", 3, call=lambda tmp: make_loader(digits(), batch_size=0),
         expect=r"batch_size must be a whole number from 1 to 16777216; got 0"),
    Case("loader-batch-size-fraction", 3, call=lambda tmp: make_loader(digits(), batch_size=2.5),
         expect=r"batch_size must be a whole number from 1 to 16777216; got 2\.5"),
    Case("loader-split-val", 3, call=lambda tmp: make_loader(digits(), "val", batch_size=4),
         expect=r"split must be 'train' or 'test', got 'val'"),
    Case("loader-augment-unknown", 3, call=lambda tmp: make_loader(digits(), batch_size=4, augment="extreme"),
         expect=r"unknown augmentation preset 'extreme'; choose from none, light, standard, heavy"),
    Case("loader-device-banana", 3, call=lambda tmp: make_loader(digits(), batch_size=4, device="banana"),
         expect=r"device must be cpu, cuda.*got 'banana'"),
    Case("loader-rank-outside", 3, call=lambda tmp: make_loader(digits(), batch_size=4, rank=2, world_size=2),
         expect=r"rank must be a whole number from 0 to 1; got 2"),
    Case("augment-config-rotate-negative", 3, call=lambda tmp: AugmentConfig(rotate=-5),
         expect=r"rotate \(degrees\) must be a number from 0 to 180; got -5"),
    Case("get-preset-crop-scale-reversed", 3, call=lambda tmp: get_preset("heavy", crop_scale=(0.9, 0.2)),
         expect=r"crop_scale .*got \(0\.9, 0\.2\)"),
    Case("subsample-zero-per-class", 3, call=lambda tmp: subsample_per_class(digits(), 0),
         expect=r"per_class must be a whole number >= 1; got 0"),
    # 2. nothing the tool did not write is overwritten: an existing picture at --out is kept unless it is a grid
    Case("augment-out-a-users-file", 2, AUG, r"grid\.png exists and is not a grid written by convnets augment",
         setup=lambda tmp: (tmp / "grid.png").write_text("mine"), after=grid_untouched),
    Case("augment-out-a-users-photo", 2, [*AUG[:-1], "{tmp}/photo.jpg"], r"photo\.jpg exists and is not a grid",
         setup=a_photo, after=photo_untouched),
    # 4. data that cannot make the classifier the user expects is named, not trained on
    Case("folder-one-class", 4, ["augment", "--data", "{tmp}/images", "--out", "{tmp}/grid.png"],
         r"images: a classifier needs at least two classes; found 1 \(cat\)", setup=folder({"cat": 5}),
         after=nothing_written),
    Case("train-folder-one-class", 4,
         ["train", "lenet5", "--data", "{tmp}/images", "--out", "{tmp}/run", "--epochs", "1", "--device", "cpu"],
         r"a classifier needs at least two classes; found 1 \(cat\)", setup=folder({"cat": 5})),
    Case("folder-class-of-unreadable-files", 4, ["augment", "--data", "{tmp}/images", "--out", "{tmp}/grid.png"],
         r"class folder .*owl: none of its 2 image files can be decoded \(e\.g\. a\.jpg: ", setup=unreadable_class),
    Case("folder-class-of-text-files", 4, call=lambda tmp: load_dataset(tmp / "images"),
         expect=r"class folder .*notes has no images", setup=only_text_class),
    Case("folder-empty", 4, ["augment", "--data", "{tmp}", "--out", "{tmp}/grid.png"],
         r": no class folders; images go in one folder per class"),
    Case("folder-images-without-classes", 4, call=lambda tmp: load_dataset(tmp / "images"),
         expect=r"no class folders; found 3 images directly in it", setup=folder({}, loose=3)),
    Case("data-is-a-file", 4, ["augment", "--data", "{tmp}/data.csv", "--out", "{tmp}/grid.png"],
         r"data\.csv: expected a dataset name or a directory, not a file", setup=a_file),
    Case("image-folder-is-a-file", 4, call=lambda tmp: load_image_folder(tmp / "data.csv"),
         expect=r"data\.csv: is a file", setup=a_file),
    Case("idx-stray-label-255", 4, ["augment", "--data", "{tmp}/idx", "--out", "{tmp}/grid.png"],
         r"label 255 \(1 image\) lies far beyond the others \(0\.\.9\) and would make a 256-way classifier",
         setup=idx([*range(10), *range(10), 255], list(range(10)))),
    Case("idx-stray-labels-several", 4, call=lambda tmp: load_dataset(tmp / "idx"),
         expect=r"labels 200 \(2 images\), 201 \(1 image\) lie far beyond the others \(0\.\.2\)",
         setup=idx([0, 1, 2, 0, 1, 2, 200, 200, 201], [0, 1])),
    Case("idx-negative-label", 4, call=lambda tmp: load_dataset(tmp / "idx"),
         expect=r"train-labels-idx1-ubyte: labels must be 0 or more; found 1 negative \(e\.g\. -3\)",
         setup=idx([0, 1, -3, 1], [0, 1], dtype=np.int8)),
    Case("idx-one-class", 4, call=lambda tmp: load_dataset(tmp / "idx"),
         expect=r"a classifier needs at least two classes; found 1 \(0\)", setup=idx([0, 0, 0, 0], [0])),
    Case("cifar-training-images-of-one-class", 4, call=lambda tmp: load_dataset(tmp / "cifar"),
         expect=r"the training images show 1 class \(all 10 are 'deer'\); a classifier needs two",
         setup=cifar_one_class),
]


@pytest.mark.parametrize("case", params(CASES))
def test_bad_input(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    check_case(case, tmp_path, capsys)


def test_augment_writes_a_grid_when_the_options_are_in_range(tmp_path: Path, capsys) -> None:
    """The happy side of the option checks: the largest sizes in range work and the grid has their shape."""
    from convnets.cli import main

    out = tmp_path / "new" / "grid.png"
    assert main(["augment", "--data", "digits", "--rows", "2", "--variants", "3", "--seed", "5", "--out", str(out),
                 "--set", "rotate=180", "--set", "crop_scale=[0.5, 0.5]"]) == 0
    with Image.open(out) as grid:  # 8x8 digits enlarged to 96 px tiles with 2 px gaps: 4 columns, 2 rows
        assert grid.size == (4 * 98 + 2, 2 * 98 + 2)
    assert not list(out.parent.glob(".*part"))
    assert "rotate=180.0" in capsys.readouterr().out
    # --image-size brings only the shown images to that size (resizing all of a dataset would not fit
    # in memory at the larger sides): 8x8 digits shown at 40 px, enlarged x3 to 120 px tiles.
    assert main(["augment", "--data", "digits", "--rows", "1", "--variants", "1", "--image-size", "40",
                 "--out", str(out)]) == 0
    with Image.open(out) as grid:
        assert grid.size == (2 * 122 + 2, 122 + 2)
    assert "1x8x8" in capsys.readouterr().out  # the dataset itself was not resized
