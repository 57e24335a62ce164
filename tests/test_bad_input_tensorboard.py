"""TensorBoard logging and the mistakes grid: what the trainer may hand them wrongly, refused in one line.

Python-API cases (principle 3): each must raise a :class:`~convnets.errors.ConvnetsError` whose message
names the value and what is allowed. The happy paths are in ``test_tensorboard.py``.
"""

from __future__ import annotations

import sys
from unittest import mock

import numpy as np
import pytest
import torch

from badinput import Case, check_case, params
from convnets.training.tensorboard import Mistakes, TensorBoardLog

CLASSES = ["a", "b", "c"]


def without_tensorboard(tmp):
    # None in sys.modules makes "import tensorboard" fail as if it were not installed
    with mock.patch.dict(sys.modules, {"tensorboard": None}):
        TensorBoardLog(tmp / "tb")


def with_a_broken_tensorboard(tmp):
    """Installed, but its import fails, as with a protobuf of another major version."""
    real = __import__

    def refuse(name, *args, **kwargs):
        if name == "torch.utils.tensorboard":
            raise ImportError("cannot import name 'builder' from 'google.protobuf.internal'")
        return real(name, *args, **kwargs)

    with mock.patch.dict(sys.modules), mock.patch("builtins.__import__", refuse):
        sys.modules.pop("torch.utils.tensorboard", None)
        TensorBoardLog(tmp / "tb")


def logged(action):
    def call(tmp):
        with TensorBoardLog(tmp / "tb") as log:
            action(log)
    return call


def updated(x_shape=(2, 1, 4, 4), logits_shape=(2, 3), y_shape=(2,), mean=(0.5,)):
    def call(tmp):
        Mistakes(2, CLASSES, mean, [0.2] * len(mean)).update(
            torch.zeros(x_shape), torch.zeros(logits_shape), torch.zeros(y_shape, dtype=torch.long))
    return call


def label_outside_classes(tmp):
    mistakes = Mistakes(2, CLASSES, [0.5], [0.2])
    mistakes.update(torch.zeros(1, 1, 4, 4), torch.tensor([[5.0, 0.0, 0.0]]), torch.tensor([7]))
    mistakes.grid()


GREY = np.zeros((8, 8, 1), np.uint8)

CASES = [
    Case("tensorboard-missing", 3, call=without_tensorboard,
         expect=r"tensorboard.*pip install 'convnets\[tensorboard\]'"),
    Case("tensorboard-installed-but-broken", 3, call=with_a_broken_tensorboard,
         expect=r"--tensorboard: the tensorboard package is installed but cannot be imported \(ImportError: cannot "
                r"import name 'builder' from 'google\.protobuf\.internal'\); repair that installation"),
    Case("step-negative", 3, call=logged(lambda log: log.step(-1, {"loss": 1.0})),
         expect=r"step must be a whole number >= 0; got -1"),
    Case("step-bool", 3, call=logged(lambda log: log.step(True, {"loss": 1.0})),
         expect=r"step must be a whole number.*got True"),
    Case("epoch-float", 3, call=logged(lambda log: log.epoch(1.5, {"acc": 1.0})),
         expect=r"epoch must be a whole number.*got 1\.5"),
    Case("image-float", 3, call=logged(lambda log: log.image("g", GREY.astype(np.float32), 0)),
         expect=r"uint8.*got a float32 array of shape \(8, 8, 1\)"),
    Case("image-2d", 3, call=logged(lambda log: log.image("g", GREY[..., 0], 0)),
         expect=r"image 'g' must be uint8 pixels \(height, width, 1 or 3 channels\); got .*\(8, 8\)"),
    Case("image-4-channels", 3, call=logged(lambda log: log.image("g", np.zeros((8, 8, 4), np.uint8), 0)),
         expect=r"1 or 3 channels.*\(8, 8, 4\)"),
    Case("image-chw-tensor", 3, call=logged(lambda log: log.image("g", torch.zeros(3, 8, 8, dtype=torch.uint8), 0)),
         expect=r"\(height, width, 1 or 3 channels\).*\(3, 8, 8\)"),
    Case("image-empty", 3, call=logged(lambda log: log.image("g", np.zeros((0, 8, 3), np.uint8), 0)),
         expect=r"got a uint8 array of shape \(0, 8, 3\)"),
    Case("image-list", 3, call=logged(lambda log: log.image("g", [[0]], 0)), expect=r"got a list"),
    Case("image-step-negative", 3, call=logged(lambda log: log.image("g", GREY, -2)),
         expect=r"step must be a whole number >= 0; got -2"),
    Case("k-negative", 3, call=lambda tmp: Mistakes(-1, CLASSES, [0.5], [0.2]),
         expect=r"k \(mistakes to keep\) must be a whole number >= 0; got -1"),
    Case("k-float", 3, call=lambda tmp: Mistakes(2.5, CLASSES, [0.5], [0.2]), expect=r"k .*got 2\.5"),
    Case("k-bool", 3, call=lambda tmp: Mistakes(True, CLASSES, [0.5], [0.2]), expect=r"k .*got True"),
    Case("classes-empty", 3, call=lambda tmp: Mistakes(2, [], [0.5], [0.2]),
         expect=r"classes must name at least one class"),
    Case("std-zero", 3, call=lambda tmp: Mistakes(2, CLASSES, [0.5], [0.0]), expect=r"std must be > 0; got 0\.0"),
    Case("mean-nan", 3, call=lambda tmp: Mistakes(2, CLASSES, [float("nan")], [0.2]),
         expect=r"mean must be a number; got nan"),
    Case("mean-text", 3, call=lambda tmp: Mistakes(2, CLASSES, ["0.5"], [0.2]),
         expect=r"mean must be a number; got '0\.5'"),
    Case("mean-std-lengths", 3, call=lambda tmp: Mistakes(2, CLASSES, [0.5, 0.5, 0.5], [0.2]),
         expect=r"one value per channel each; got 3 and 1"),
    Case("mean-std-empty", 3, call=lambda tmp: Mistakes(2, CLASSES, [], []),
         expect=r"one value per channel each; got 0 and 0"),
    Case("update-images-3d", 3, call=updated(x_shape=(2, 4, 4)), expect=r"images \(N, 1, H, W\).*got \(2, 4, 4\)"),
    Case("update-channels", 3, call=updated(x_shape=(2, 3, 4, 4)), expect=r"images \(N, 1, H, W\).*got \(2, 3, 4, 4\)"),
    Case("update-classes", 3, call=updated(logits_shape=(2, 10)), expect=r"logits \(N, 3\).*\(2, 10\)"),
    Case("update-batch-sizes", 3, call=updated(y_shape=(3,)),
         expect=r"labels \(N,\); got \(2, 1, 4, 4\), \(2, 3\) and \(3,\)"),
    Case("update-labels-2d", 3, call=updated(x_shape=(1, 1, 4, 4), logits_shape=(1, 3), y_shape=(1, 1)),
         expect=r"labels \(N,\).*\(1, 1\)"),
    Case("label-outside-classes", 4, call=label_outside_classes, expect=r"label 7 is not one of the 3 classes"),
]


@pytest.mark.parametrize("case", params(CASES))
def test_bad_input(case, tmp_path, capsys):
    check_case(case, tmp_path, capsys)


def test_log_dir_that_is_a_file_names_it(tmp_path):
    # an OSError (the CLI boundary prints it as one line), naming the path, before anything is written
    (tmp_path / "tb").write_text("my notes")
    with pytest.raises(OSError, match="tb") as raised:
        TensorBoardLog(tmp_path / "tb")
    # SummaryWriter's own error said only "File exists"
    assert raised.value.filename == str(tmp_path / "tb") and "where --tensorboard writes its logs" in str(raised.value)
    assert (tmp_path / "tb").read_text() == "my notes"
