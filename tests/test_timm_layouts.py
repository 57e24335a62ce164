"""timm's checkpoint layouts: detected by their own keys, and timm's own logits reproduced to 1e-4.

The fixtures were made with timm by ``tests/data/make_timm_fixtures.py`` (timm is not needed here):
``timm_layouts.json`` holds each timm model's keys and shapes, ``timm_outputs.safetensors`` the
logits timm gave for the state dict that :func:`make_timm_fixtures.fill_state` rebuilds from them.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import convnets
from convnets.weights import LAYOUTS, LayoutError, WeightsMismatchError, convert_state_dict, detect_layout, load
from fixture_scripts import fixture_script

DATA = Path(__file__).resolve().parent / "data"
TOLERANCE = 1e-4


fixtures = fixture_script("make_timm_fixtures")


@functools.cache
def timm_layouts() -> dict[str, dict]:
    return json.loads((DATA / "timm_layouts.json").read_text())


@functools.cache
def timm_outputs() -> dict[str, torch.Tensor]:
    return load_file(DATA / "timm_outputs.safetensors")


def keys_of(name: str) -> list[tuple[str, list[int]]]:
    return [(k, s) for k, s in timm_layouts()[name]["state_dict"]]


def meta_state(name: str) -> dict[str, torch.Tensor]:
    """Keys and shapes without values (BatchNorm's counters int64, as in a real checkpoint)."""
    return {k: torch.empty(s, device="meta", dtype=torch.int64 if k.endswith("num_batches_tracked") else None)
            for k, s in keys_of(name)}


def relative(ours: torch.Tensor, reference: torch.Tensor) -> float:
    assert ours.shape == reference.shape
    return float((ours - reference).abs().max() / reference.abs().max())


# timm model -> the layout it is detected as (timm's ResNets have torchvision's keys, and its ResNet-50
# torchvision's stride on the 3x3: ours resnet50_torchvision), or the layout it must be loaded with.
CLAIMED = {
    **{f"efficientnet_b{i}": f"timm:efficientnet_b{i}" for i in range(8)},
    **{f"mobilenetv2_{w}": f"timm:mobilenetv2_{w}" for w in ("035", "050", "075", "100", "140")},
    **{f"vgg{d}{bn}": f"timm:vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")},
    "mobilenetv1_100": "timm:mobilenetv1_100",
    "resnet18": "torchvision:resnet18",
    "resnet50": "torchvision:resnet50",
}
# Same keys as efficientnet_bN: the layout is named, never detected.
TF_VARIANTS = {f"tf_efficientnet_b{i}": f"timm:tf_efficientnet_b{i}" for i in range(8)}


@pytest.mark.parametrize("timm_name", sorted(CLAIMED))
def test_timm_layout_is_detected_by_its_own_keys(timm_name: str) -> None:
    assert detect_layout(meta_state(timm_name)) == CLAIMED[timm_name]


@pytest.mark.parametrize("timm_name", sorted(TF_VARIANTS))
def test_tf_efficientnet_has_the_keys_of_efficientnet(timm_name: str) -> None:
    assert keys_of(timm_name) == keys_of(timm_name.removeprefix("tf_"))
    assert detect_layout(meta_state(timm_name)) == TF_VARIANTS[timm_name].replace("tf_", "")


@pytest.mark.parametrize("timm_name", sorted({**CLAIMED, **TF_VARIANTS}))
def test_timm_layout_fills_every_parameter_and_buffer(timm_name: str) -> None:
    layout = LAYOUTS[{**CLAIMED, **TF_VARIANTS}[timm_name]]
    name, ours = convert_state_dict(meta_state(timm_name), layout.name)
    with torch.device("meta"):
        expected = convnets.create_model(name, **layout.model_kwargs).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    # Both libraries register modules in forward order: the i-th timm key is the i-th of ours (catches
    # swaps the shapes cannot, such as conv_pw/bn1 of a separable block read as an expansion).
    assert list(ours) == list(expected)


WITH_OUTPUTS = sorted(fixtures.WITH_OUTPUTS)
# Over 5 s on a 2-core machine: VGG's 133 million parameters at 224 px.
SLOW = {"vgg11_bn"}


def our_logits(timm_name: str, tmp_path: Path) -> torch.Tensor:
    """Our model's logits for timm's fixture input, its weights loaded as a user would: from a file."""
    state = fixtures.fill_state(keys_of(timm_name))
    path = tmp_path / f"{timm_name}.safetensors"
    save_file(state, path)
    layout = TF_VARIANTS.get(timm_name)
    if layout is None:
        model = convnets.create_model(LAYOUTS[CLAIMED[timm_name]].model, weights=str(path))
    else:
        model = load(path, layout=layout)  # the keys cannot tell a tf_ checkpoint: the user names it
    x = fixtures.fixed_input(tuple(timm_layouts()[timm_name]["input"]))
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("timm_name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                       for n in WITH_OUTPUTS])
def test_timm_logits_are_reproduced(timm_name: str, tmp_path: Path) -> None:
    reference = timm_outputs()[timm_name]
    difference = relative(our_logits(timm_name, tmp_path), reference)
    print(f"{timm_name}: max relative difference {difference:.2e}")
    assert difference <= TOLERANCE


def test_tf_efficientnet_needs_its_layout(tmp_path: Path) -> None:
    # Loaded as the plain efficientnet_b0 it looks like, the logits are off: the layout is not cosmetic.
    state = fixtures.fill_state(keys_of("tf_efficientnet_b0"))
    x = fixtures.fixed_input(tuple(timm_layouts()["tf_efficientnet_b0"]["input"]))
    with torch.no_grad():
        plain = load(state).eval()(x)
    assert relative(plain, timm_outputs()["tf_efficientnet_b0"]) > 1e-2
    # And a model built without TensorFlow's padding is refused, naming the option.
    with pytest.raises(WeightsMismatchError, match=r"tf_same=True"):
        load(state, convnets.create_model("efficientnet_b0"), layout="timm:tf_efficientnet_b0")


def test_timm_mobilenet_v2_width_is_built_from_the_layout(tmp_path: Path) -> None:
    state = fixtures.fill_state(keys_of("mobilenetv2_050"))
    assert load(state).width == 0.5
    with pytest.raises(WeightsMismatchError, match=r"width=0\.5"):
        load(state, convnets.create_model("mobilenet_v2"))


# ---------------------------------------------------------------------------------------------
# timm checkpoints we do not have a model for, and damaged ones
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("timm_name", "message"), [
    ("mobilenetv1_125", r"timm MobileNet v1 with stem width 40: only timm:mobilenetv1_100"),
    ("mobilenetv2_110d", r"timm MobileNet v2-like state dict .* blocks per stage \(1, 3, 4, 5, 4, 4, 1\).*"
                         r"other widths and depths are not supported"),
    ("efficientnet_b8", r"timm EfficientNet-like state dict .*\(72, .*none of timm's efficientnet_b0-b7"),
    ("mobilenetv3_large_100", r"timm EfficientNet-like state dict .*MobileNet v3"),
])
def test_timm_checkpoint_we_have_no_model_for_is_refused(timm_name: str, message: str) -> None:
    with pytest.raises(LayoutError, match=message):
        detect_layout(meta_state(timm_name))
    with pytest.raises(LayoutError, match=message):
        load(meta_state(timm_name))


def test_truncated_timm_state_dict_lists_the_missing_keys() -> None:
    state = meta_state("efficientnet_b0")
    missing = [k for k in state if k.startswith("blocks.6.")]
    for key in missing:
        del state[key]
    # Detection sees six stages instead of seven: no EfficientNet; named, it loads and lists what is missing.
    with pytest.raises(LayoutError, match=r"none of timm's efficientnet_b0-b7"):
        load(state)
    with pytest.raises(WeightsMismatchError, match=r"(?s)missing.*stages\.6\.0\.expand\.conv\.weight"):
        load(state, layout="timm:efficientnet_b0")
    head = meta_state("vgg11")
    del head["pre_logits.fc2.weight"]
    with pytest.raises(WeightsMismatchError, match=r"(?s)missing.*head\.hidden\.1\.fc\.weight"):
        load(head)


# ---------------------------------------------------------------------------------------------
# The command line: --layout names what the keys cannot tell
# ---------------------------------------------------------------------------------------------


def transfer_tf_b0(tmp_path: Path, *layout: str) -> Path:
    """``convnets transfer efficientnet_b0`` from the tf_efficientnet_b0 fixture as a file, on four tiny photos."""
    import numpy as np
    from PIL import Image

    from convnets.cli import main

    save_file(fixtures.fill_state(keys_of("tf_efficientnet_b0")), tmp_path / "tf_b0.safetensors")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(2):
            (tmp_path / "photos" / split / f"c{c}").mkdir(parents=True, exist_ok=True)
            for i in range(2):
                pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / "photos" / split / f"c{c}" / f"{i}.png")
    run = tmp_path / ("run" + "".join(layout).replace(":", "-"))
    assert main(["transfer", "efficientnet_b0", "--weights", str(tmp_path / "tf_b0.safetensors"), *layout,
                 "--data", str(tmp_path / "photos"), "--image-size", "64", "--epochs", "1", "--cache-features",
                 "--cache-dir", str(tmp_path / "cache"), "--batch-size", "4", "--workers", "0", "--device", "cpu",
                 "--no-progress", "--out", str(run)]) == 0
    return run / "best.safetensors"


def logits_with_timm_head(trained: Path) -> torch.Tensor:
    """The fine-tuned trunk with the fixture's 1000-class head put back: timm's logits if the trunk is timm's."""
    from convnets.weights import load_weights

    model = load_weights(trained)
    head = {k: v for k, v in load(fixtures.fill_state(keys_of("tf_efficientnet_b0")),
                                  layout="timm:tf_efficientnet_b0").state_dict().items() if k.startswith("head.fc.")}
    model.reset_classifier(1000)
    model.load_state_dict({**model.state_dict(), **head})
    with torch.no_grad():
        return model.eval()(fixtures.fixed_input(tuple(timm_layouts()["tf_efficientnet_b0"]["input"])))


@pytest.mark.slow
def test_cli_layout_gives_the_publisher_s_logits_and_without_it_the_warning_names_it(tmp_path: Path, caplog) -> None:
    reference = timm_outputs()["tf_efficientnet_b0"]
    named = transfer_tf_b0(tmp_path, "--layout", "timm:tf_efficientnet_b0")
    assert relative(logits_with_timm_head(named), reference) <= TOLERANCE
    caplog.clear()
    guessed = transfer_tf_b0(tmp_path)  # detected as timm:efficientnet_b0: same keys, other padding and eps
    assert relative(logits_with_timm_head(guessed), reference) > 1e-2
    assert "load them with layout='timm:tf_efficientnet_bN' (--layout on the command line)" in caplog.text
