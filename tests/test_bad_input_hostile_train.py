"""Round 2 of the bad-input suite: what a hostile but realistic user pointed ``train``, ``transfer``,
``augment``, ``experiment`` and the data API at, beyond the first tables.

The table holds what must fail in one line, before any work where it can be known before, and
without leaving anything behind; the tests after it show what must work instead: a batch that
broken files leave too small is skipped, a closed pipe does not end a run, two runs started at
once both run, a bad-file log stays one row per file whatever the names hold, and so on.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import convnets
from badinput import Case, check_case, params, run_cli
from convnets.data import load_dataset, make_loader, subsample_per_class
from convnets.data.idx import write_idx
from convnets.training import TrainConfig, train
from convnets.training import checkpoint as checkpoint_module
from convnets.training import loop as loop_module
from convnets.training.config import probe_model, smallest_batch
from convnets.training.rundir import RunDirectory
from convnets.weights import atomic_write
from test_bad_input_rundir import make_run, nothing_at, unchanged

MISSING = "{tmp}/no-such-data"  # a check that names it never looked at the data
QUICK = dict(model="lenet5", data="digits", image_size=32, batch_size=64, progress=False, device="cpu")


# ------------------------------------------------------------------ setups


def pets(root: Path, per_class: int = 6, broken: int = 0) -> Path:
    """``root/{dark,light}/N.png``: two classes any network separates, and ``broken`` undecodable files in each."""
    rng = np.random.default_rng(0)
    for name, level in (("dark", 40), ("light", 200)):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray((rng.integers(0, 30, (12, 12, 3)) + level).astype(np.uint8)).save(root / name / f"{i}.png")
        for i in range(broken):
            (root / name / f"broken{i}.png").write_bytes(b"<html>404 not found</html>")
    return root


def write(name: str, content: str | bytes) -> Any:
    def setup(tmp: Path) -> None:
        path = tmp / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)

    return setup


def fifo(tmp: Path) -> None:
    os.mkfifo(tmp / "c.json")  # nobody ever writes it: opening it would wait for ever


def sparse(name: str, size: int, head: bytes = b"") -> Any:
    def setup(tmp: Path) -> None:
        with open(tmp / name, "wb") as f:
            f.write(head)
            f.truncate(size)  # a hole: no disk used, but reading it would be `size` bytes

    return setup


def idx_folder(tmp: Path, train_labels: Any = (0, 1) * 5, *, images: Any = None) -> Path:
    root = tmp / "idx"
    root.mkdir(exist_ok=True)
    labels = train_labels if isinstance(train_labels, np.ndarray) else np.array(train_labels, np.uint8)
    write_idx(root / "train-images-idx3-ubyte", np.zeros((len(labels), 4, 4), np.uint8) if images is None else images)
    write_idx(root / "train-labels-idx1-ubyte", labels)
    write_idx(root / "t10k-images-idx3-ubyte", np.zeros((2, 4, 4), np.uint8))
    write_idx(root / "t10k-labels-idx1-ubyte", np.array([0, 1], np.uint8))
    return root


def idx_sparse_images(tmp: Path) -> None:
    root = idx_folder(tmp)
    header = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (10, 4, 4))
    with open(root / "train-images-idx3-ubyte", "wb") as f:
        f.write(header)
        f.truncate(64 << 30)  # 64 GiB of nothing, after a header that says 160 bytes


def idx_gzip_bomb(tmp: Path) -> None:
    root = idx_folder(tmp)
    (root / "train-images-idx3-ubyte").unlink()
    header = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (10, 4, 4))
    with gzip.open(root / "train-images-idx3-ubyte.gz", "wb", compresslevel=1) as f:
        f.write(header)
        for _ in range(16):
            f.write(bytes(4 << 20))  # inflates to 64 MB where 160 bytes are declared


def idx_huge_dims(tmp: Path) -> None:
    root = idx_folder(tmp)
    header = bytes([0, 0, 8, 3]) + (2**31 - 1).to_bytes(4, "big") * 3
    (root / "train-images-idx3-ubyte").write_bytes(header)


def unreadable(tmp: Path, where: str) -> Any:
    """A context in which listing (or stat'ing what is in) ``tmp/where`` is refused, as for another user's folder.

    Tests may run as root, whom chmod does not stop: the refusal is made where the operating system would make it.
    """
    target = str(tmp / where)
    real_listdir, real_scandir, real_stat = os.listdir, os.scandir, os.stat

    def refuse(path: Any) -> None:
        raise PermissionError(13, "Permission denied", os.fspath(path))

    def listdir(path: Any = ".") -> list[str]:
        if os.fspath(path) == target:
            refuse(path)
        return real_listdir(path)

    def scandir(path: Any = ".") -> Any:
        if os.fspath(path) == target:
            refuse(path)
        return real_scandir(path)

    def stat(path: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith(target + os.sep):
            refuse(path)
        return real_stat(path, *args, **kwargs)

    return mock.patch.multiple(os, listdir=listdir, scandir=scandir, stat=stat)


def load_unreadable(tmp: Path, where: str) -> None:
    pets(tmp / "pets")
    with unreadable(tmp, where):
        load_dataset(tmp / "pets")


def folder_run(tmp: Path) -> None:
    """An image-folder run stopped mid-way (step 3 of 6 an epoch) in tmp/run, on tmp/pets."""
    pets(tmp / "pets", per_class=8)
    train(TrainConfig(model="lenet5", data=str(tmp / "pets"), batch_size=2, epochs=2, max_steps=3, progress=False,
                      out=str(tmp / "run")))


def fewer_images(tmp: Path) -> None:
    folder_run(tmp)
    for i in range(2, 8):
        (tmp / "pets" / "dark" / f"{i}.png").unlink()


def renamed_class(tmp: Path) -> None:
    folder_run(tmp)
    (tmp / "pets" / "light").rename(tmp / "pets" / "bright")


def relabelled(tmp: Path) -> None:
    """Two images moved to the other class (a user fixing labels mid-run): as many files, other labels."""
    folder_run(tmp)
    root = tmp / "pets"
    (root / "dark" / "3.png").rename(root / "light" / "d3.png")
    (root / "light" / "5.png").rename(root / "dark" / "l5.png")


def resized_in_place(tmp: Path) -> None:
    """A resnet20 run at the folder's own size (12x12), stopped; then its images resized where they lie."""
    pets(tmp / "pets", per_class=8)
    train(TrainConfig(model="resnet20", data=str(tmp / "pets"), batch_size=4, epochs=2, max_steps=2, progress=False,
                      out=str(tmp / "run")))
    for path in (tmp / "pets").glob("*/*.png"):
        with Image.open(path) as image:
            bigger = image.resize((24, 24))
        bigger.save(path)


def experiment_at_tiny(tmp: Path) -> None:
    convnets.experiments.run_experiment("one-by-one", "tiny", tmp / "exp")


def big_images(tmp: Path) -> None:
    """64 training photos (8 held out a class) of 224x224: the grid's size is known only from the data."""
    for name in ("dark", "light"):
        (tmp / "big" / name).mkdir(parents=True)
        for i in range(40):
            Image.new("RGB", (224, 224), (6 * i, 0, 0)).save(tmp / "big" / name / f"{i}.png")


def digits():
    return load_dataset("digits")


def resume_api(tmp: Path, **fields: Any) -> None:
    train(TrainConfig(model="lenet5", out=str(tmp / "run"), resume=True, progress=False, **fields))


TRAIN = ["train", "lenet5", "--data", "digits", "--no-progress", "--out", "{tmp}/run"]
AUG = ["augment", "--data", "digits", "--out", "{tmp}/grid.png"]


def config(name: str) -> list[str]:
    return ["train", "lenet5", "--config", "{tmp}/" + name, "--out", "{tmp}/run", "--no-progress"]


C = Case
CASES = [
    # --- 3: checked before work starts (the data below does not exist: it was never looked at)
    C("batch-of-one-batchnorm-1x1", 3, ["train", "mobilenet_v2", "--data", MISSING, "--image-size", "32",
                                        "--batch-size", "1", "--out", "{tmp}/run"],
      r"mobilenet_v2 cannot train on batches of 1 at 32x32: its BatchNorm layer stages\.5\.0\.dw\.bn sees a 1x1 "
      r"map.*use --batch-size 2 or more, or pass --image-size 64 or more", after=nothing_at("run")),
    C("batch-of-one-resnet20-at-4", 3, ["train", "resnet20", "--data", MISSING, "--image-size", "4",
                                        "--batch-size", "1", "--out", "{tmp}/run"],
      r"resnet20 cannot train on batches of 1 at 4x4.*--image-size 8 or more", after=nothing_at("run")),
    C("api-batch-of-one", 3, call=lambda tmp: train(TrainConfig(model="efficientnet_b0", data=str(tmp / "none"),
                                                                image_size=32, batch_size=1, out=str(tmp / "run"))),
      expect=r"efficientnet_b0 cannot train on batches of 1 at 32x32", after=nothing_at("run")),
    C("few-images-batch-of-one", 5, call=lambda tmp: smallest_batch("mobilenet_v2", probe_model("mobilenet_v2", {}),
                                                                    1, (32, 32), few_images=True),
      expect=r"the training set gives each process a batch of 1 image: add training images"),
    C("fixed-size-before-data", 3, ["train", "lenet5", "--data", MISSING, "--image-size", "28", "--out", "{tmp}/run"],
      r"lenet5 takes only 32x32 images but --image-size 28 gives 28x28: use --image-size 32", after=nothing_at("run")),
    C("min-size-before-data", 3, ["train", "resnet18", "--data", MISSING, "--image-size", "16", "--out", "{tmp}/run"],
      r"resnet18 needs images of at least 32x32 but --image-size 16 gives 16x16: pass --image-size 32 or "
      r"--model-arg small_input=true", after=nothing_at("run")),
    C("auxiliary-heads-before-data", 3, ["train", "googlenet", "--data", MISSING, "--image-size", "32", "--out",
                                         "{tmp}/run"], r"auxiliary classifiers .* at least 80x80",
      after=nothing_at("run")),
    C("lr-1e308", 3, [*TRAIN, "--lr", "1e308"], r"lr must be > 0 and <= 1e\+06.*got 1e\+308", after=nothing_at("run")),
    C("weight-decay-1e308", 3, [*TRAIN, "--weight-decay", "1e308", "--optimizer", "sgd"],
      r"weight_decay must be >= 0 and <= 1e\+06", after=nothing_at("run")),
    C("api-pretrained-lr-scale-huge", 3, call=lambda tmp: TrainConfig(model="lenet5", pretrained_lr_scale=1e300),
      expect=r"pretrained_lr_scale must be > 0 and <= 1e\+06"),
    C("config-fifo", 3, config("c.json"), r"config file .*c\.json cannot be read: it is not a regular file",
      setup=fifo, after=nothing_at("run")),
    C("config-dev-null", 3, ["train", "lenet5", "--config", "/dev/null", "--out", "{tmp}/run"],
      r"/dev/null cannot be read: it is not a regular file", after=nothing_at("run")),
    C("config-sparse-100g", 3, config("c.json"), r"c\.json is 107,374,182,400 bytes; a config .*at most 1,048,576",
      setup=sparse("c.json", 100 << 30, b'{"epochs": 1'), after=nothing_at("run")),
    C("config-duplicate-key", 3, config("c.json"), r"c\.json: 'lr' is given twice \(0\.1 and 50\); keep one",
      setup=write("c.json", '{"data": "digits", "lr": 0.1, "lr": 50}'), after=nothing_at("run")),
    C("config-duplicate-nested-key", 3, config("c.json"), r"'width' is given twice",
      setup=write("c.json", '{"model_kwargs": {"width": 0.5, "width": 2}}'), after=nothing_at("run")),
    C("config-empty", 3, config("c.json"), r"config file .*c\.json is empty", setup=write("c.json", "\n  \n"),
      after=nothing_at("run")),
    C("config-bom-then-garbage", 3, config("c.json"), r"c\.json: not valid JSON at line 1, column 1",
      setup=write("c.json", b"\xef\xbb\xbfepochs: 3"), after=nothing_at("run")),
    C("model-arg-twice", 3, ["train", "mobilenet_v2", "--data", MISSING, "--model-arg", "width=0.5", "--model-arg",
                             "width=2", "--out", "{tmp}/run"],
      r"--model-arg width is given twice \('width=0\.5' and 'width=2'\); keep one", after=nothing_at("run")),
    C("augment-set-twice", 3, [*AUG, "--set", "rotate=5", "--set", "rotate=90"],
      r"--set rotate is given twice \('rotate=5' and 'rotate=90'\)", after=nothing_at("grid.png")),
    C("augment-grid-gigapixels", 3, [*AUG, "--rows", "64", "--variants", "32", "--image-size", "1024"],
      r"a grid of 64 x 33 images of 1024x1024 would be 2,\d{3} megapixels, more than the 100",
      after=nothing_at("grid.png")),
    C("augment-grid-of-big-folder-images", 3, ["augment", "--data", "{tmp}/big", "--out", "{tmp}/grid.png",
                                               "--rows", "64", "--variants", "32"],
      r"a grid of 64 x 33 images of 224x224 would be 108 megapixels", setup=big_images, after=nothing_at("grid.png")),
    C("batch-size-past-2-to-the-64", 3, [*TRAIN, "--batch-size", "99999999999999999999"],
      r"batch_size must be a whole number from 1 to 16,777,216.*got 99999999999999999999", after=nothing_at("run")),
    C("api-make-loader-batch-past-2-to-the-64", 3, call=lambda tmp: make_loader(digits(), batch_size=10**20),
      expect=r"batch_size must be a whole number from 1 to 16777216"),
    # Cached features are computed once from the images as they are: the augmentation asked for was ignored.
    C("cache-features-with-augment", 3, ["transfer", "resnet20", "--weights", "fashion-mnist", "--data", MISSING,
                                         "--cache-features", "--freeze", "all-but-head", "--augment", "heavy",
                                         "--out", "{tmp}/run"],
      r"--augment heavy cannot apply to cached features: the frozen trunk sees each image once, unaugmented",
      after=nothing_at("run")),
    C("cache-dir-a-device", 3, ["transfer", "resnet20", "--weights", "fashion-mnist", "--data", MISSING,
                                "--cache-features", "--freeze", "all-but-head", "--cache-dir", "/dev/null",
                                "--out", "{tmp}/run"],
      r"cache_dir /dev/null is not a folder", after=nothing_at("run")),
    C("api-make-loader-name", 3, call=lambda tmp: make_loader("digits", batch_size=4),
      expect=r"make_loader takes a Dataset from load_dataset\(\.\.\.\), not str 'digits'"),
    C("api-make-loader-seed-word", 3, call=lambda tmp: make_loader(digits(), batch_size=4, seed="x"),
      expect=r"seed must be a whole number from 0 to \d+; got 'x'"),
    C("api-make-loader-seed-negative", 3, call=lambda tmp: make_loader(digits(), batch_size=4, seed=-1),
      expect=r"seed must be a whole number from 0"),
    C("api-make-loader-seed-fraction", 3, call=lambda tmp: make_loader(digits(), batch_size=4, seed=2.5),
      expect=r"seed must be a whole number .*got 2\.5"),
    C("api-make-loader-shuffle-word", 3, call=lambda tmp: make_loader(digits(), batch_size=4, shuffle="no"),
      expect=r"shuffle must be True, False or None; got 'no'"),
    C("api-make-loader-drop-last-word", 3, call=lambda tmp: make_loader(digits(), batch_size=4, drop_last="yes"),
      expect=r"drop_last must be True or False; got 'yes'"),
    C("api-subsample-seed-word", 3, call=lambda tmp: subsample_per_class(digits(), 2, seed="x"),
      expect=r"seed must be a whole number"),
    C("api-train-a-dict", 3, call=lambda tmp: train({"model": "lenet5", "data": "digits"}),
      expect=r"train\(\) takes a TrainConfig .*not dict"),
    C("api-train-a-name", 3, call=lambda tmp: convnets.train("lenet5"), expect=r"takes a TrainConfig.*not str"),
    C("nan-skip-gives-up-without-advising-skip", 3,
      [*TRAIN, "--lr", "1e6", "--weight-decay", "1e6", "--optimizer", "sgd", "--nan-policy", "skip", "--epochs", "2"],
      r"after 21 skipped steps; the last checkpoint is .*state\.pt: lower --lr \(now 1000000\.0\) or add "
      r"--grad-clip 1\.0\n?$"),
    # --- 4: data that cannot make the classifier is named, without reading gigabytes first
    C("idx-sparse-64g", 4, call=lambda tmp: load_dataset(tmp / "idx"), setup=idx_sparse_images,
      expect=r"train-images-idx3-ubyte: header says shape \(10, 4, 4\) \(160 data bytes\) but the file has "
             r"68719476720 data bytes"),
    C("idx-gzip-bomb", 4, ["augment", "--data", "{tmp}/idx", "--out", "{tmp}/grid.png"],
      r"train-images-idx3-ubyte\.gz: header says shape \(10, 4, 4\) \(160 data bytes\) but the file has more than 160",
      setup=idx_gzip_bomb, after=nothing_at("grid.png")),
    C("idx-dimensions-2g-cubed", 4, call=lambda tmp: load_dataset(tmp / "idx"), setup=idx_huge_dims,
      expect=r"header says shape \(2147483647, 2147483647, 2147483647\) \(9,903,520,\d{3}(,\d{3})* data bytes\), "
             r"which no IDX dataset holds"),
    C("idx-label-2g", 4, call=lambda tmp: load_dataset(tmp / "idx"),
      setup=lambda tmp: idx_folder(tmp, np.array([0, 1] * 4 + [2**31 - 1], np.int32)),
      expect=r"label 2147483647 \(1 image\) lies far beyond the others \(0\.\.1\) and would make a "
             r"2,147,483,648-way classifier"),
    C("idx-no-training-images", 4, call=lambda tmp: load_dataset(tmp / "idx"),
      setup=lambda tmp: idx_folder(tmp, np.zeros(0, np.uint8)),
      expect=r"train-images-idx3-ubyte: holds no images: a dataset needs training images"),
    C("unreadable-class-folder", 4, call=lambda tmp: load_unreadable(tmp, "pets/light"),
      expect=r"class folder .*pets/light cannot be read: Permission denied"),
    C("unreadable-data-folder", 4, call=lambda tmp: load_unreadable(tmp, "pets"),
      expect=r"pets/batches\.meta: permission denied: convnets cannot read it \(check the permissions"),
    C("held-out-folder-beside-classes", 4, ["train", "lenet5", "--data", "{tmp}/pets", "--out", "{tmp}/run"],
      r"pets/test looks like a held-out split, not a class: put the training classes in .*pets/train/CLASS",
      setup=lambda tmp: pets(pets(tmp / "pets") / "test"), after=nothing_at("run")),
    # --- 7: a resumed run never ignores what the user typed, nor data that changed under it
    C("api-resume-data-typed-as-default", 7, call=lambda tmp: resume_api(tmp, data="fashion-mnist"),
      expect=r"--data fashion-mnist \(the run has digits\)", **unchanged(make_run)),
    C("api-resume-seed-typed-as-default", 7, call=lambda tmp: resume_api(tmp, data="digits", seed=0, momentum=0.9,
                                                                         precision="auto", lr=0.5),
      expect=r"cannot resume .* with other settings .*--lr 0\.5 \(the run has 0\.003\)\. Resume without",
      **unchanged(make_run)),
    C("resume-fewer-images", 7, ["train", "lenet5", "--out", "{tmp}/run", "--resume", "--no-progress"],
      r"cannot resume .*run: the data .*pets changed since the run began \(it had 12 training and 4 test images, "
      r"now 7 and 3\); a resumed run must see the same data", setup=fewer_images),
    C("resume-renamed-class", 7, ["train", "lenet5", "--out", "{tmp}/run", "--resume", "--no-progress"],
      r"\(its classes were dark, light, now bright, dark\)", setup=renamed_class),
    C("resume-images-resized-in-place", 7, ["train", "resnet20", "--out", "{tmp}/run", "--resume", "--no-progress"],
      r"the data .*pets changed since the run began \(its images came out at 3x12x12, now 3x24x24\)",
      setup=resized_in_place),
    C("resume-relabelled-images", 7, ["train", "lenet5", "--out", "{tmp}/run", "--resume", "--no-progress"],
      r"\(as many images, but other files or labels\)", setup=relabelled),
    C("experiment-other-budget", 7, ["experiment", "one-by-one", "--budget", "small", "--out", "{tmp}/exp"],
      r"exp holds the one-by-one experiment at --budget tiny --data fashion-mnist: re-run it with those to reuse "
      r"its runs, or choose another --out for one-by-one at --budget small", **unchanged(experiment_at_tiny)),
    # --- 2: nothing the tool did not write is overwritten or lost
    C("experiment-other-name", 2, ["experiment", "degradation", "--budget", "tiny", "--out", "{tmp}/exp"],
      r"exp holds the one-by-one experiment.*choose another --out for degradation",
      **unchanged(experiment_at_tiny)),
    C("run-of-another-model", 2, ["train", "resnet20", "--data", "digits", "--out", "{tmp}/run"],
      r"run already holds a run of lenet5: choose another --out for resnet20", **unchanged(make_run)),
    C("out-a-loop-of-links", 2, [*TRAIN[:-1], "{tmp}/a"], r"a is a link to nothing \(or a loop of links\)",
      setup=lambda tmp: ((tmp / "a").symlink_to(tmp / "b"), (tmp / "b").symlink_to(tmp / "a"))),
    C("out-under-a-file", 2, [*TRAIN[:-1], "{tmp}/notes.txt/run"],
      r"notes\.txt/run cannot be made: .*notes\.txt is a file, not a folder", **unchanged(write("notes.txt", "mine"))),
    C("experiment-out-under-a-file", 2, ["experiment", "one-by-one", "--budget", "tiny", "--out",
                                         "{tmp}/notes.txt/exp"], r"notes\.txt is a file, not a folder",
      **unchanged(write("notes.txt", "mine"))),
    C("out-inside-a-class-folder", 2, ["train", "lenet5", "--data", "{tmp}/pets", "--out", "{tmp}/pets/dark/run"],
      r"--out .*pets/dark/run is inside the image folder .*pets: its files \(curves\.png\.\.\.\) would be read as "
      r"training images, its folder as a class; choose an --out outside the data",
      setup=lambda tmp: pets(tmp / "pets"), after=nothing_at("pets/dark/run")),
    # --- 8: no leftovers from a refused command
    C("refused-experiment-data-leaves-nothing", 8, ["experiment", "classic", "--budget", "tiny", "--data",
                                                    "{tmp}/no-such-data", "--out", "{tmp}/exp"],
      r"unknown dataset .*no-such-data", after=nothing_at("exp")),
    C("refused-batch-leaves-no-folders", 8, ["train", "mobilenet_v2", "--data", "digits", "--image-size", "32",
                                             "--batch-size", "1", "--out", "{tmp}/a/b/run"],
      r"cannot train on batches of 1", after=nothing_at("a")),
]


@pytest.mark.parametrize("case", params(CASES))
def test_bad_input(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    check_case(case, tmp_path, capsys)


# ------------------------------------------------------------------ 3, 5: what the checks let through


def test_batchnorm_check_counts_only_the_layers_that_train() -> None:
    """At 32x32 MobileNetV2's last stage is 1x1: a batch of one fails there in training, not when it is frozen."""
    probe = probe_model("mobilenet_v2", {})
    assert smallest_batch("mobilenet_v2", probe, 2, (32, 32)) == 2
    assert smallest_batch("mobilenet_v2", probe, 1, (64, 64)) == 1  # the hint's --image-size 64 holds
    assert smallest_batch("mobilenet_v2", probe, 1, (32, 32), frozen=["stem", "stages"]) == 1
    assert smallest_batch("lenet5", probe_model("lenet5", {}), 1, (32, 32)) == 1  # no BatchNorm at all


def splits_with_broken_files(root: Path) -> Path:
    """train/{dark,light}: two good images and two broken files each; val/: one good image each."""
    for split, good, broken in (("train", 2, 2), ("val", 1, 0)):
        pets(root / split, per_class=good, broken=broken)
    return root


def test_a_batch_that_broken_files_leave_with_one_image_is_skipped_not_a_traceback(tmp_path, capsys) -> None:
    data = splits_with_broken_files(tmp_path / "pets")
    # Which batches keep 1 image once the broken files are dropped is fixed by the seed: count them first.
    loader = make_loader(load_dataset(data, image_size=32), batch_size=2, seed=0, drop_last=True, num_workers=0)
    sizes = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        sizes += [len(y) for _, y in loader]
    assert 1 in sizes, "the data must make a batch of one for this test"
    result = train(TrainConfig(model="mobilenet_v2", data=str(data), image_size=32, batch_size=2, epochs=2,
                               augment="none", num_workers=0, progress=False, out=str(tmp_path / "run")))
    out = capsys.readouterr().out
    assert out.count("skipped: after its undecodable files too few images are left (the model needs 2 a batch)") == (
        sizes.count(1))
    assert result.steps == sizes.count(2)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [sizes[:len(sizes) // 2].count(2), sizes.count(2)]


def test_an_epoch_of_only_skipped_steps_reports_nan_not_zero(tmp_path, monkeypatch) -> None:
    def cross_entropy(logits, target, **kw):
        loss = F.cross_entropy(logits, target, **kw)
        return loss * math.nan if kw.get("reduction") != "sum" else loss  # every training step, no test batch

    monkeypatch.setattr(loop_module, "F", SimpleNamespace(cross_entropy=cross_entropy))
    monkeypatch.setattr(loop_module.Trainer, "_diverged", lambda self, loss: None)  # skip them all, for ever
    train(TrainConfig(**QUICK, epochs=1, nan_policy="skip", out=str(tmp_path / "run")))
    [row] = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert math.isnan(row["train_loss"]) and math.isnan(row["train_acc"]) and row["step"] == 0


def test_skipped_steps_are_left_out_of_the_epochs_training_loss(tmp_path, monkeypatch) -> None:
    losses = []  # (loss, images) of every training step that counted

    def cross_entropy(logits, target, **kw):
        loss = F.cross_entropy(logits, target, **kw)
        if kw.get("reduction") == "sum":  # evaluation
            return loss
        cross_entropy.calls += 1
        if cross_entropy.calls % 3 == 0:
            return loss * math.nan
        losses.append((loss.item(), len(target)))
        return loss

    cross_entropy.calls = 0
    monkeypatch.setattr(loop_module, "F", SimpleNamespace(cross_entropy=cross_entropy))
    result = train(TrainConfig(**QUICK, epochs=1, nan_policy="skip", out=str(tmp_path / "run")))
    [row] = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert result.steps == len(losses) == 22 - 22 // 3
    expected = sum(loss * n for loss, n in losses) / sum(n for _, n in losses)
    assert row["train_loss"] == pytest.approx(expected, rel=1e-6)  # not diluted by zeros for the 7 skipped


# ------------------------------------------------------------------ 3: config files and options


def test_a_config_file_with_a_byte_order_mark_is_read(tmp_path) -> None:
    path = tmp_path / "c.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"data": "digits", "epochs": 2}).encode())
    assert TrainConfig.from_file(path, model="lenet5").epochs == 2


def test_a_tilde_in_a_config_file_is_the_home_folder(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.json").write_text(json.dumps({"data": "digits", "out": "~/runs/first", "max_steps": 1}))
    status, _, err = run_cli(["train", "lenet5", "--config", "c.json", "--no-progress"], capsys)
    assert status == 0, err
    assert (tmp_path / "home" / "runs" / "first" / "state.pt").exists() and not (tmp_path / "~").exists()
    assert json.loads((tmp_path / "home" / "runs" / "first" / "config.json").read_text())["out"] == str(
        tmp_path / "home" / "runs" / "first")


def test_an_abbreviated_option_is_not_taken_for_another(tmp_path, capsys) -> None:
    # --channels is augment's option; argparse would have read it on train as --channels-last.
    status, _, err = run_cli(["train", "lenet5", "--data", "digits", "--channels", "3", "--out",
                              str(tmp_path / "run")], capsys)
    assert status == 2 and "unrecognized arguments: --channels 3" in err
    assert not (tmp_path / "run").exists()


def test_the_grid_limit_lets_the_largest_side_through_at_the_default_rows() -> None:
    from convnets.cli.augment import MAX_SIDE, check_grid

    check_grid(8, 8, MAX_SIDE, MAX_SIDE)  # the defaults at the largest --image-size: 67 megapixels
    check_grid(64, 33, 28, 28)  # every row and variant of Fashion-MNIST, enlarged to 112 px tiles
    with pytest.raises(convnets.errors.ConfigError, match=r"a grid of 64 x 33 images of 224x224"):
        check_grid(64, 33, 224, 224)


# ------------------------------------------------------------------ 4: what a folder holds


def test_bad_file_log_keeps_one_row_per_file_whatever_its_name_holds(tmp_path) -> None:
    root = pets(tmp_path / "pets", per_class=3)
    names = ["tab\tin.png", "new\nline.png", 'quote".png', "ünïcode.png"]
    for name in names:
        (root / "dark" / name).write_bytes(b"not an image")
    data = load_dataset(root)
    written = data.bad_files.write(tmp_path)
    with open(written, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, dialect="excel-tab"))
    assert rows[0] == ["path", "reason"]
    assert sorted(Path(path).name for path, _ in rows[1:]) == sorted(names)
    assert all(len(row) == 2 for row in rows)


def test_hidden_folders_inside_a_class_are_not_data(tmp_path) -> None:
    root = pets(tmp_path / "pets", per_class=5)
    (root / "dark" / ".thumbnails").mkdir()
    Image.new("RGB", (4, 4)).save(root / "dark" / ".thumbnails" / "0.png")
    (root / "dark" / "more").mkdir()  # a visible subfolder is data, as before
    Image.new("RGB", (12, 12)).save(root / "dark" / "more" / "extra.png")
    data = load_dataset(root, val_fraction=0)
    paths = [p for p, _ in data.train.samples]
    assert len(paths) == 11 and not any(".thumbnails" in p for p in paths)
    assert not len(data.bad_files)


def test_a_folder_another_user_cannot_read(tmp_path) -> None:
    root = pets(tmp_path / "pets", per_class=3)
    (root / "light").chmod(0)
    try:
        if os.geteuid() == 0:  # chmod does not stop root (tests may run as root): the folder loads
            assert load_dataset(root).classes == ["dark", "light"]
        else:
            with pytest.raises(convnets.errors.DataError, match=r"class folder .*light cannot be read"):
                load_dataset(root)
    finally:
        (root / "light").chmod(0o755)


def test_a_subfolder_that_cannot_be_listed_is_a_bad_file(tmp_path) -> None:
    root = pets(tmp_path / "pets", per_class=3)
    (root / "dark" / "private").mkdir()
    with unreadable(tmp_path, "pets/dark/private"):
        data = load_dataset(root)
    assert [(Path(p).name, r.split(":")[0]) for p, r in data.bad_files] == [("private", "PermissionError")]


def test_a_builtin_name_shadowing_a_folder_says_so(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.chdir(tmp_path)
    pets(tmp_path / "digits")
    assert load_dataset("digits").num_classes == 10  # the name wins, as it always has
    assert "the folder digits here is not read (pass --data ./digits for it)" in caplog.text
    assert load_dataset("./digits").classes == ["dark", "light"]


# ------------------------------------------------------------------ 2, 7: run directories and resume


def test_kaggle_style_train_and_test_folders_are_splits_not_classes(tmp_path) -> None:
    pets(tmp_path / "data" / "Train", per_class=4)
    pets(tmp_path / "data" / "Test", per_class=1)
    data = load_dataset(tmp_path / "data")  # was: a classifier of "Test" against "Train"
    assert data.classes == ["dark", "light"] and (len(data.train), len(data.test)) == (8, 2)


def test_max_steps_already_reached_trains_no_more(tmp_path, capsys) -> None:
    from safetensors.torch import load_file

    make_run(tmp_path)  # stopped at step 50
    before = load_file(tmp_path / "run" / "last.safetensors")
    result = train(TrainConfig(**QUICK, out=str(tmp_path / "run"), resume=True, max_steps=5))
    assert result.steps == 50 and result.stopped_early
    assert "--max-steps 5: " in capsys.readouterr().out
    after = load_file(tmp_path / "run" / "last.safetensors")  # the same weights, written again
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_second_interrupt_during_a_checkpoint_write_is_an_interrupt_not_a_torch_error(tmp_path,
                                                                                         monkeypatch) -> None:
    def interrupted_save(obj, f) -> None:
        f.write(b"PK half an archive")
        try:
            raise KeyboardInterrupt  # the second Ctrl-C, inside torch's writer
        finally:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 21109952 vs 21109840")

    monkeypatch.setattr(loop_module.torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "state.pt", lambda tmp: checkpoint_module.save_torch({}, tmp))
    assert os.listdir(tmp_path) == []  # nothing half-written left


def test_given_names_the_fields_passed_even_at_their_default() -> None:
    config = TrainConfig(model="lenet5", data="fashion-mnist", seed=0, lr=None)
    assert config.given == {"model", "data", "seed"}  # None means "the recipe's": never counted
    assert TrainConfig("lenet5", "digits").given == {"model", "data"}


def test_resume_from_python_with_only_the_model_and_out(tmp_path) -> None:
    make_run(tmp_path)  # a run of digits: data="fashion-mnist" (the default) is not taken as typed
    result = train(TrainConfig(model="lenet5", out=str(tmp_path / "run"), resume=True, max_steps=52,
                               progress=False))
    assert result.steps == 52


def test_resume_from_the_command_line_with_its_model_arg_and_nothing_else(tmp_path, capsys) -> None:
    run = ["train", "mobilenet_v2", "--model-arg", "width=0.25", "--out", str(tmp_path / "run"), "--no-progress"]
    assert run_cli([*run, "--data", "digits", "--image-size", "32", "--max-steps", "1"], capsys)[0] == 0
    status, out, err = run_cli([*run, "--resume", "--max-steps", "2"], capsys)  # --data digits not repeated
    assert status == 0 and "resumed" in out, err


def test_two_runs_started_at_once_into_the_default_folder_both_run(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    with RunDirectory(tmp_path / "runs" / "lenet5-digits", "train"):  # the first, still setting up
        status, out, err = run_cli(["train", "lenet5", "--data", "digits", "--max-steps", "1", "--no-progress"],
                                   capsys)
        assert status == 0, err
    assert out.rstrip().endswith("runs/lenet5-digits-2")
    assert (tmp_path / "runs" / "lenet5-digits-2" / "state.pt").exists()


@pytest.mark.slow
def test_output_piped_into_head_does_not_end_the_run(tmp_path) -> None:
    command = [sys.executable, "-m", "convnets", "train", "lenet5", "--data", "digits", "--epochs", "2",
               "--no-progress", "--out", str(tmp_path / "run")]
    train_proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
    first = train_proc.stdout.readline()  # `| head -1`
    train_proc.stdout.close()
    assert train_proc.wait(timeout=300) == 0, train_proc.stderr.read().decode()[-2000:]
    assert first.startswith(b"digits:")
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2 and (tmp_path / "run" / "last.safetensors").exists()


_SLOW_DATA = """
import sys, time
import convnets.training.setup as setup
from convnets.cli import main

def slow(*args, **kwargs):
    print("reading the data", flush=True)
    time.sleep(120)

setup.load_dataset = slow
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigterm_while_the_data_is_read_leaves_no_run_directory(tmp_path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_DATA, "train", "lenet5", "--data", "digits", "--out",
                             str(tmp_path / "a" / "run")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "reading the data\n"
    assert (tmp_path / "a" / "run").is_dir()  # claimed
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130, proc.stderr.read()
    assert "Traceback" not in proc.stderr.read()
    assert not (tmp_path / "a").exists()  # released: the claim made both folders, and removed both


def test_an_interrupted_experiment_says_how_to_continue_it(tmp_path, monkeypatch, capsys) -> None:
    from convnets.experiments import Setting

    started: list[str] = []

    def interrupted(self, name, *args, **kwargs):
        if started:  # the second time, a run is under way when Ctrl-C comes
            (self.out / "runs" / name).mkdir(parents=True)
        started.append(name)
        raise KeyboardInterrupt

    monkeypatch.setattr(Setting, "train", interrupted)
    # The plan times each arm's first steps by training them; here no step is trained before Ctrl-C.
    monkeypatch.setattr(Setting, "probe", lambda self, run, steps: (0.0, 0.0))
    with pytest.raises(KeyboardInterrupt):
        convnets.experiments.run_experiment("classic", "tiny", tmp_path / "exp", data="digits")
    # Stopped before any run: nothing is left, and there is nothing to continue.
    assert not (tmp_path / "exp").exists() and "continues it" not in capsys.readouterr().out
    with pytest.raises(KeyboardInterrupt):
        convnets.experiments.run_experiment("classic", "tiny", tmp_path / "exp", data="digits")
    assert (f"`convnets experiment classic --budget tiny --data digits --out {tmp_path / 'exp'}` continues it"
            in capsys.readouterr().out)
    assert json.loads((tmp_path / "exp" / "experiment.json").read_text()) == {"name": "classic", "budget": "tiny",
                                                                             "data": "digits"}


# ------------------------------------------------------------------ under torchrun


def free_port() -> int:
    """A TCP port nobody listens on now (a fixed one may be taken by another test run on the machine)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_DDP_WORKER = """
import json, sys
from convnets.training import TrainConfig, train
train(TrainConfig(**json.loads(sys.argv[1])))
"""


@pytest.mark.slow
def test_torchrun_with_broken_files_and_a_shard_smaller_than_a_batch(tmp_path) -> None:
    """Each process gets a batch of 6 of the 12 training files, 10 of them broken: a process whose batch is
    empty no longer leaves the other waiting on it, and the bad-file log holds the files both processes met."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    data = tmp_path / "pets"
    pets(data / "train", per_class=1, broken=5)
    pets(data / "val", per_class=1)
    worker = tmp_path / "worker.py"
    worker.write_text(_DDP_WORKER)
    # Seed 1 shuffles both good images onto one process in the first epoch (see BatchLoader._shard).
    config = dict(model="lenet5", data=str(data), epochs=2, batch_size=64, seed=1, num_workers=0, progress=False,
                  device="cpu", out=str(tmp_path / "run"))
    proc = subprocess.run([torchrun, "--nproc_per_node=2", f"--master_port={free_port()}", str(worker),
                           json.dumps(config)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training on batches of 6" in proc.stdout
    # One process had nothing but broken files: both skipped that step together.
    assert "skipped: after its undecodable files on some process too few images are left" in proc.stdout
    with open(tmp_path / "run" / "bad_files.tsv", newline="") as f:
        logged = {path for path, _ in list(csv.reader(f, dialect="excel-tab"))[1:]}
    assert logged == {str(p) for p in (data / "train").rglob("broken*.png")}


@pytest.mark.slow
def test_sigterm_to_the_whole_job_with_decoding_workers_stops_with_a_checkpoint(tmp_path) -> None:
    """A cluster preempting a job signals every process of it, decoding workers included."""
    data = pets(tmp_path / "pets", per_class=100)
    command = [sys.executable, "-m", "convnets", "train", "lenet5", "--data", str(data), "--batch-size", "4",
               "--epochs", "20", "--workers", "2", "--no-progress", "--out", str(tmp_path / "run")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    for line in proc.stdout:  # training is under way once the model is described
        if line.startswith("lenet5:"):
            break
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # hung (as it could before): leave no process behind
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-2000:]  # was: "DataLoader worker ... exited unexpectedly", no checkpoint
    assert "stopped at step" in out and "Traceback" not in err
    assert torch.load(tmp_path / "run" / "state.pt", weights_only=True)["step"] > 0


def test_a_data_folder_and_a_class_not_named_in_utf8_train_and_evaluate(tmp_path, capsys, monkeypatch) -> None:
    """Folders named in Latin-1 by an old archive: the run trained, then its curves' title (a TypeError in
    matplotlib) and evaluate's evaluation.txt (UnicodeEncodeError) ended it with a traceback, the report lost;
    a run folder so named could not be evaluated (safetensors refused the path, its report's name a traceback)."""
    root = Path(os.fsdecode(bytes(tmp_path) + b"/p\xe9ts"))
    pets(root)
    (root / "light").rename(Path(os.fsdecode(bytes(root) + b"/cl\xe4r")))
    run = Path(os.fsdecode(bytes(tmp_path) + b"/r\xe9n"))
    status, _, err = run_cli(["train", "lenet5", "--data", str(root), "--epochs", "1", "--batch-size", "4",
                              "--no-progress", "--out", str(run)], capsys)
    assert status == 0, err
    assert (run / "curves.png").is_file() and b"# lenet5 on " + bytes(root) in (run / "report.md").read_bytes()
    monkeypatch.chdir(tmp_path)  # the report goes to runs/evaluate/RUN_NAME
    status, _, err = run_cli(["evaluate", str(run), "--data", str(root)], capsys)
    assert status == 0, err
    report = Path("runs", "evaluate", run.name)
    assert b"cl\xe4r" in (report / "evaluation.txt").read_bytes() and (report / "confusion.png").is_file()


def test_training_on_the_current_folder_says_where_the_run_cannot_go(tmp_path, capsys, monkeypatch) -> None:
    """``convnets train lenet5 --data .`` in a data folder: the default runs/... made a class 'runs' with no images."""
    pets(tmp_path)
    monkeypatch.chdir(tmp_path)
    status, _, err = run_cli(["train", "lenet5", "--data", ".", "--no-progress"], capsys)
    assert status == 2 and "--out runs/lenet5-" in err and f"is inside the image folder {tmp_path}:" in err, err
    assert not (tmp_path / "runs").exists()
