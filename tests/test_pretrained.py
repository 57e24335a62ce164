"""The weights registry and the project's own shipped weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import convnets
from convnets.export import accuracy_of, dataset_images
from convnets.weights import (
    IMAGENET_MEAN,
    PACKAGE_DIR,
    get_weights,
    list_weights,
    read_metadata,
    specs,
    weights_preprocessing,
)

OURS = [w for w in list_weights() if w.tag == "fashion-mnist"]


def test_every_spec_names_a_registered_model_and_its_layers() -> None:
    for spec in list_weights():
        with torch.device("meta"):
            model = convnets.create_model(spec.model, num_classes=spec.num_classes, in_chans=spec.input_size[0],
                                          **spec.model_kwargs)
        keys = model.state_dict()
        assert f"{spec.first_conv}.weight" in keys, spec
        assert f"{spec.classifier}.weight" in keys, spec
        if spec.is_url:
            assert spec.sha256 in spec.source and len(spec.sha256) >= 8  # torchvision's name-hash convention


@pytest.mark.parametrize("spec", OURS, ids=lambda s: s.model)
def test_shipped_weights_load_offline_and_reach_their_recorded_accuracy(spec) -> None:
    model = convnets.create_model(spec.model, weights="fashion-mnist").eval()
    assert model.pretrained is spec and model.num_classes == 10
    meta = read_metadata(PACKAGE_DIR / spec.source)
    assert meta["model"] == spec.model and tuple(meta["input_size"]) == spec.input_size
    data = dataset_images(meta, "test")  # Fashion-MNIST: CI installs it
    with torch.inference_mode():
        accuracy = accuracy_of(model, *data)
    assert accuracy == pytest.approx(spec.accuracy, abs=0.002)


def test_a_damaged_shipped_file_is_refused(tmp_path: Path, monkeypatch) -> None:
    spec = OURS[0]
    shutil.copy(PACKAGE_DIR / spec.source, tmp_path / spec.source)
    data = bytearray((tmp_path / spec.source).read_bytes())
    data[-10] ^= 0xFF
    (tmp_path / spec.source).write_bytes(bytes(data))
    monkeypatch.setattr(specs, "PACKAGE_DIR", tmp_path)
    with pytest.raises(ValueError, match="sha256 differs from the registry's"):
        convnets.create_model(spec.model, weights="fashion-mnist")


def test_unknown_tags_list_the_known_ones() -> None:
    with pytest.raises(ValueError, match="no 'cifar' weights for lenet5; known for it: fashion-mnist"):
        get_weights("lenet5", "cifar")


def test_registered_weights_are_named_as_freely_as_models() -> None:
    # create_model("LeNet5") builds lenet5, but "LeNet5:Fashion-MNIST" was "no weights for LeNet5: it has none".
    spec = get_weights("lenet5", "fashion-mnist")
    for model, tag in [("LeNet5", "Fashion-MNIST"), (" lenet-5", "fashion-mnist "), ("LENET5", "FASHION-MNIST")]:
        assert get_weights(model, tag) is spec
    assert convnets.create_model("LeNet5", weights="Fashion-MNIST").name == "lenet5"


def test_the_weights_command_shows_one_set_named_as_predict_takes_it(capsys: pytest.CaptureFixture[str]) -> None:
    from convnets.cli import main

    assert main(["weights", "LeNet5:Fashion-MNIST"]) == 0
    rows = [line.split()[:2] for line in capsys.readouterr().out.splitlines()[1:] if line.strip()]
    assert rows[0] == ["lenet5", "fashion-mnist"] and len(rows) == 2  # the set, then the "Use:" line


def test_preprocessing_comes_from_the_weights() -> None:
    pre = weights_preprocessing("fashion-mnist", "lenet5")
    assert pre["input_size"] == (1, 32, 32) and len(pre["mean"]) == 1
    assert weights_preprocessing("imagenet", "resnet18")["mean"] == IMAGENET_MEAN
    assert weights_preprocessing("imagenet", "googlenet_torchvision")["mean"] == (0.5, 0.5, 0.5)
