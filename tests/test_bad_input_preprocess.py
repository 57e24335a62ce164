"""Bad preprocessing recipes (principles 3 and 9): a clear one-line error before any image is read.

A recipe comes from the Python API (:class:`~convnets.data.preprocess.Preprocessing`), from a
weights spec, or from the metadata of a weights file, which a user may have written by hand: each
field is checked when the recipe is made, and a file with a bad one is refused when it is read.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from badinput import Case, check_case, params
from convnets import create_model
from convnets.data.datasets import load_dataset
from convnets.data.preprocess import Preprocessing
from convnets.weights import save_weights

GOOD = dict(size=[32, 32], resize=36, interpolation="bilinear", antialias=True, channels=1, mean=[0.3], std=[0.3])
LENET_META = dict(model="lenet5", num_classes=10, in_chans=1, input_size=[1, 32, 32], mean=[0.3], std=[0.3],
                  classes=[str(i) for i in range(10)], dataset="digits")


def recipe(**changes: object) -> dict:
    return {**GOOD, **changes}


def weights_with(tmp: Path, preprocessing: object) -> Path:
    """A LeNet-5 file whose metadata holds ``preprocessing`` as written by hand (save_weights would refuse it)."""
    state = {k: v.contiguous() for k, v in create_model("lenet5", num_classes=10).state_dict().items()}
    meta = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in LENET_META.items()}
    save_file(state, str(tmp / "w.safetensors"), metadata={**meta, "preprocessing": json.dumps(preprocessing),
                                                          "format": "pt"})
    return tmp / "w.safetensors"


CASES = [
    Case("interpolation-banana", 3, call=lambda tmp: Preprocessing((224, 224), 256, "banana"),
         expect=r"interpolation must be one of nearest, bilinear, bicubic; got 'banana'"),
    Case("resize-smaller-than-crop", 3, call=lambda tmp: Preprocessing((224, 224), 200),
         expect=r"resize 200 is smaller than the crop 224x224.*at least 224"),
    Case("crop-zero", 3, call=lambda tmp: Preprocessing((0, 0), 256), expect=r"height must be a whole number from 1"),
    Case("crop-float", 3, call=lambda tmp: Preprocessing((224.5, 224)), expect=r"height must be a whole number"),
    Case("size-one-number-string", 3, call=lambda tmp: Preprocessing("224"), expect=r"size must be \(height, width\)"),
    Case("resize-huge", 3, call=lambda tmp: Preprocessing((224, 224), 10**6), expect=r"resize must be .* to 4096"),
    Case("mean-for-three-channels-on-grey", 3,
         call=lambda tmp: Preprocessing((32, 32), channels=1, mean=(0.5, 0.5, 0.5), std=(0.5,)),
         expect=r"mean has 3 values for 1 channel"),
    Case("std-too-short", 3, call=lambda tmp: Preprocessing((32, 32), std=(0.2, 0.2)),
         expect=r"std has 2 values for 3 channel"),
    Case("std-zero", 3, call=lambda tmp: Preprocessing((32, 32), std=(0.2, 0.0, 0.2)), expect=r"std must be positive"),
    Case("mean-nan", 3, call=lambda tmp: Preprocessing((32, 32), mean=(0.2, float("nan"), 0.2)),
         expect=r"mean must be a list of finite numbers"),
    Case("mean-a-string", 3, call=lambda tmp: Preprocessing((32, 32), mean="0.5"),
         expect=r"mean must be a list of finite numbers"),
    Case("channels-two", 3, call=lambda tmp: Preprocessing((32, 32), channels=2), expect=r"channels must be 1 .* or 3"),
    Case("antialias-a-string", 3, call=lambda tmp: Preprocessing((32, 32), antialias="yes"),
         expect=r"antialias must be true or false"),
    Case("keras-mode-unknown", 3, call=lambda tmp: Preprocessing.keras("bgr", 224),
         expect=r"Keras preprocessing mode must be one of caffe, tf, torch; got 'bgr'"),
    Case("metadata-not-a-dict", 3, call=lambda tmp: Preprocessing.from_metadata(["input_size", [3, 224, 224]]),
         expect=r"weights metadata must be a JSON object; got list"),
    Case("metadata-recipe-not-a-dict", 3, call=lambda tmp: Preprocessing.from_metadata({"preprocessing": "256/224"}),
         expect=r"preprocessing must be a JSON object of its fields; got '256/224'"),
    Case("metadata-size-a-string", 3, call=lambda tmp: Preprocessing.from_dict(recipe(size="32x32")),
         expect=r"size must be \(height, width\)"),
    Case("metadata-unknown-field", 3, call=lambda tmp: Preprocessing.from_dict(recipe(crop_pct=0.875)),
         expect=r"unknown field\(s\) crop_pct; known: antialias, channels"),
    Case("draft-argument-a-string", 3, call=lambda tmp: Preprocessing(224, draft="no"),
         expect=r"draft must be true or false; got 'no'"),
    Case("metadata-draft-a-string", 3, call=lambda tmp: Preprocessing.from_dict(recipe(draft="no")),
         expect=r"draft must be true or false; got 'no'"),
    Case("metadata-without-size", 3,
         call=lambda tmp: Preprocessing.from_dict({k: v for k, v in GOOD.items() if k != "size"}),
         expect=r"lacks its size"),
    Case("metadata-input-size-a-string", 3,
         call=lambda tmp: Preprocessing.from_metadata({"input_size": "1x32x32", "mean": [0.3], "std": [0.3]}),
         expect=r"input_size must be \[channels, height, width\]; got '1x32x32'"),
    Case("metadata-without-mean", 3, call=lambda tmp: Preprocessing.from_metadata({"input_size": [1, 32, 32]}),
         expect=r"lacks mean, std"),
    Case("load-dataset-with-a-dict-recipe", 3, call=lambda tmp: load_dataset("digits", preprocessing=GOOD),
         expect=r"preprocessing must be a convnets.data.preprocess.Preprocessing .*got dict"),
    Case("load-an-array", 3, call=lambda tmp: Preprocessing.from_dict(GOOD).load(np.zeros((8, 8), np.uint8)),
         expect=r"an image must be a path, a binary file object or a Pillow image; got ndarray"),
    Case("call-a-tensor", 3, call=lambda tmp: Preprocessing.from_dict(GOOD)(torch.zeros(1, 8, 8)),
         expect=r"an image must be a path, a binary file object or a Pillow image; got Tensor"),
    Case("load-none", 3, call=lambda tmp: Preprocessing.from_dict(GOOD).load(None),
         expect=r"an image must be a path, .*; got NoneType"),
    Case("call-an-int", 3, call=lambda tmp: Preprocessing.from_dict(GOOD)(3), expect=r"an image must be .*; got int"),
    Case("save-refuses-a-bad-recipe", 9,
         call=lambda tmp: save_weights(create_model("lenet5"), tmp / "w.safetensors",
                                       {**LENET_META, "preprocessing": recipe(interpolation="lanczos")}),
         expect=r"metadata field 'preprocessing'.*interpolation must be one of",
         after=lambda tmp: not (tmp / "w.safetensors").exists() or pytest.fail("a refused file was written")),
    Case("save-refuses-a-recipe-of-another-size", 9,
         call=lambda tmp: save_weights(create_model("lenet5"), tmp / "w.safetensors",
                                       {**LENET_META, "preprocessing": recipe(size=[28, 28], resize=None)}),
         expect=r"preprocessing.*gives inputs \[1, 28, 28\], input_size says \[1, 32, 32\]"),
    Case("evaluate-a-file-with-a-bad-recipe", 9,
         setup=lambda tmp: weights_with(tmp, recipe(interpolation="banana")),
         argv=["evaluate", "{tmp}/w.safetensors", "--data", "digits"],
         expect=r"w.safetensors: metadata field 'preprocessing'.*interpolation must be one of"),
    Case("evaluate-a-file-with-a-recipe-list", 9, setup=lambda tmp: weights_with(tmp, [32, 36, "bilinear"]),
         argv=["evaluate", "{tmp}/w.safetensors", "--data", "digits"],
         expect=r"metadata field 'preprocessing'.*must be a JSON object of its fields"),
    Case("transfer-from-a-file-with-a-bad-recipe", 9,
         setup=lambda tmp: weights_with(tmp, recipe(resize=8)),
         argv=["transfer", "lenet5", "--weights", "{tmp}/w.safetensors", "--data", "digits", "--epochs", "1",
               "--out", "{tmp}/run", "--no-progress"],
         expect=r"metadata field 'preprocessing'.*resize 8 is smaller than the crop 32x32",
         after=lambda tmp: not (tmp / "run" / "last.safetensors").exists() or pytest.fail("it trained")),
]


@pytest.mark.parametrize("case", params(CASES))
def test_bad_preprocessing(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # evaluate's default report goes to runs/evaluate/ in the working directory
    check_case(case, tmp_path, capsys)
    if case.argv[:1] == ["evaluate"]:
        assert not (tmp_path / "runs").exists(), "a failed evaluate wrote under runs/"


def test_the_good_recipe_of_the_table_is_good(tmp_path: Path) -> None:
    """The cases above differ from a recipe that works by the one field they name."""
    assert Preprocessing.from_dict(GOOD).to_dict() == {**GOOD, "size": [32, 32]}
    path = weights_with(tmp_path, GOOD)
    from convnets.weights import weights_preprocessing

    assert weights_preprocessing(path, "lenet5")["preprocessing"] == Preprocessing.from_dict(GOOD)
    assert torch.equal(Preprocessing.from_dict(GOOD).normalize(torch.full((1, 2, 2), 255, dtype=torch.uint8)),
                       torch.full((1, 2, 2), (1 - 0.3) / 0.3))


@pytest.mark.parametrize("draft", [False, True])
def test_the_removed_draft_argument_warns_and_changes_nothing(draft: bool) -> None:
    """Code written for ``Preprocessing(..., draft=...)`` got a bare TypeError once the argument was removed; it now
    runs, with a warning that says why the argument is gone, and the recipe is the one without it."""
    with pytest.warns(FutureWarning, match=r"draft=\.\.\.\) is ignored.*decoded in full.*remove the argument"):
        prep = Preprocessing(224, 256, draft=draft)
    assert prep == Preprocessing(224, 256) and "draft" not in prep.to_dict()
