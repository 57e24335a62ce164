"""torchvision's checkpoint layouts reproduce torchvision's own logits to 1e-4.

The fixture was made with torchvision by ``tests/data/make_torchvision_fixtures.py`` (torchvision is
not needed here): ``torchvision_outputs.safetensors`` holds the logits torchvision gave, in eval mode,
for the state dict that ``fill_state`` rebuilds from the keys and shapes of ``peer_state_dicts.json``.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import convnets
from convnets.weights import IMAGENET_MEAN, IMAGENET_STD, LAYOUTS, load, weights_preprocessing
from fixture_scripts import fixture_script

DATA = Path(__file__).resolve().parent / "data"
OUTPUTS = DATA / "torchvision_outputs.safetensors"
TOLERANCE = 1e-4


fixtures = fixture_script("make_torchvision_fixtures")


@functools.cache
def torchvision_outputs() -> dict[str, torch.Tensor]:
    return load_file(OUTPUTS)


@functools.cache
def metadata() -> dict[str, str]:
    with safe_open(OUTPUTS, "pt") as f:
        return f.metadata()


def relative(ours: torch.Tensor, reference: torch.Tensor) -> float:
    assert ours.shape == reference.shape
    return float((ours - reference).abs().max() / reference.abs().max())


def weights_file(name: str, tmp_path: Path) -> tuple[Path, str]:
    """The fixture's torchvision state dict written to a file, and the model of ours its layout names."""
    state = fixtures.fill_state(fixtures.keys_of(name, metadata()))
    path = tmp_path / f"{name}.safetensors"
    save_file(state, path)
    return path, LAYOUTS[f"torchvision:{fixtures.FIXTURES[name].builder}"].model


def logits(model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The model's eval-mode logits for ``x``, computed in ``dtype`` (the fixture's), as float32."""
    with torch.no_grad():
        return model.eval().to(dtype)(x.to(dtype)).float()


# Over 5 s on a 2-core machine: 133 million parameters to fill, write and read, and 7.6 GMACs at 224 px.
SLOW = {"vgg11", "vgg11_bn"}
COMPARED = [name for name in fixtures.FIXTURES if name != "googlenet_transform_input"]


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in COMPARED])
def test_torchvision_logits_are_reproduced(name: str, tmp_path: Path) -> None:
    path, model_name = weights_file(name, tmp_path)
    fixture = fixtures.FIXTURES[name]
    x = fixtures.fixed_input(fixture.input)
    ours = logits(convnets.create_model(model_name, weights=str(path)), x, fixture.dtype)
    difference = relative(ours, torchvision_outputs()[name])
    print(f"{name} (into {model_name}): max relative difference {difference:.2e}")
    assert difference <= TOLERANCE
    # The other way in, the layout detected from the keys alone: the same model, the same bits.
    detected = load(path)
    assert type(detected) is convnets.create_model(model_name).__class__
    assert torch.equal(logits(detected, x, fixture.dtype), ours)


def test_googlenet_preprocessing_replaces_transform_input(tmp_path: Path) -> None:
    # torchvision's published GoogLeNet weights set transform_input=True: the model takes ImageNet-normalised
    # images and re-normalises them to mean = std = 0.5 inside. Ours has no such step; the layout's
    # preprocessing normalises with 0.5/0.5 instead. The same pixels prepared each way give the same logits.
    name = "googlenet_transform_input"
    path, model_name = weights_file(name, tmp_path)
    prep = weights_preprocessing(path, model_name)
    assert prep["mean"] == prep["std"] == (0.5, 0.5, 0.5)
    imagenet = fixtures.fixed_input(fixtures.FIXTURES[name].input)  # what torchvision's model was fed
    pixels = imagenet * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    half = (pixels - torch.tensor(prep["mean"]).view(3, 1, 1)) / torch.tensor(prep["std"]).view(3, 1, 1)
    model = convnets.create_model(model_name, weights=str(path))
    difference = relative(logits(model, half), torchvision_outputs()[name])
    print(f"{name}: max relative difference {difference:.2e}")
    assert difference <= TOLERANCE
    # The control: fed the ImageNet-normalised images as they are, ours is far off.
    assert relative(logits(model, imagenet), torchvision_outputs()[name]) > 1e-2


def test_fixture_covers_every_torchvision_family() -> None:
    # One fixture per kind of torchvision layout we claim: the depths of VGG, ResNet and EfficientNet share
    # their rules (ResNet-18 and -50 are both here for the basic and the bottleneck block).
    def kind(layout: str) -> str:
        return re.sub(r"\d+", "N", layout)

    claimed = {kind(name) for name in LAYOUTS if name.startswith("torchvision:")}
    assert {kind(f"torchvision:{f.builder}") for f in fixtures.FIXTURES.values()} == claimed
    eps = {LAYOUTS[f"torchvision:{f.builder}"].bn_eps for f in fixtures.FIXTURES.values()}
    assert eps == {None, 1e-3}


@pytest.mark.parametrize("name", ["googlenet", "efficientnet_b5"])
def test_torchvision_batchnorm_eps_is_not_cosmetic(name: str, tmp_path: Path) -> None:
    # torchvision builds GoogLeNet and EfficientNet-B5 to B7 with BatchNorm eps 1e-3; the load sets it,
    # and the same weights with PyTorch's default 1e-5 are off by far more than the tolerance (GoogLeNet 9.9e-3).
    path, model_name = weights_file(name, tmp_path)
    fixture = fixtures.FIXTURES[name]
    model = convnets.create_model(model_name, weights=str(path))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and {m.eps for m in norms} == {1e-3}
    for m in norms:
        m.eps = 1e-5
    x = fixtures.fixed_input(fixture.input)
    assert relative(logits(model, x, fixture.dtype), torchvision_outputs()[name]) > 10 * TOLERANCE
