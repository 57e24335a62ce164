"""Keras Applications weights give Keras's own outputs (issue 12, section 2).

Each application is built by Keras 3 (torch backend) with random weights, random BatchNorm
statistics and random biases (Keras starts them at zero, which would hide a misplaced bias), then
saved as the legacy HDF5 that ``keras.applications`` downloads, as Keras 3's ``.weights.h5``, and
renamed into Keras 2's ``:0``-suffixed names. The model convnets builds from each file must give
Keras's outputs on two real photos (scikit-learn's china.jpg and flower.jpg), each side fed the
way its weights say: Keras the application's ``preprocess_input`` on 0..255 pixels (EfficientNet
none: it normalises inside), ours ``(x - mean) / std`` on 0..1 pixels with the mean and std that
:func:`weights_preprocessing` reports. Agreement: max |ours - Keras| / max |Keras| <= 1e-4.

Controls show the comparison can fail: without TensorFlow's padding or ReLU6 the same weights are
1e-2 or more off. Keras is optional: these tests are skipped where it is not installed
(``pip install keras h5py``; it runs on the torch backend, no TensorFlow needed).
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import convnets
from convnets.layers import pad_same
from convnets.weights import IMAGENET_MEAN, IMAGENET_STD, load, weights_preprocessing
from convnets.weights.keras import KERAS_LAYOUTS, detect_keras_layout

TOLERANCE = 1e-4


# ---------------------------------------------------------------------------------------------
# Without Keras: TensorFlow's padding, ReLU6, detection from names alone
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [7, 8, 224, 225])
@pytest.mark.parametrize(("kernel", "stride"), [(3, 2), (5, 2), (3, 1), (1, 2)])
def test_pad_same_gives_tensorflows_output_size_and_offsets(size: int, kernel: int, stride: int) -> None:
    # TensorFlow's "same": ceil(size / stride) outputs; the total padding (out - 1) * stride + kernel - size,
    # its odd pixel on the right/bottom (the TensorFlow documentation's formula, computed here by hand).
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    x = torch.arange(size * size, dtype=torch.float32).reshape(1, 1, size, size) + 1
    padded = pad_same(x, kernel, stride)
    assert padded.shape[-2:] == (size + total, size + total)
    top, left = total // 2, total // 2
    assert torch.equal(padded[0, 0, top:top + size, left:left + size], x[0, 0])
    assert int((padded != 0).sum()) == size * size  # only zeros were added
    assert (torch.nn.functional.conv2d(padded, torch.ones(1, 1, kernel, kernel), stride=stride).shape[-1]) == out


def test_tf_same_is_a_builder_option_that_changes_only_strided_convs() -> None:
    plain = convnets.create_model("efficientnet_b0").eval()
    tf = convnets.create_model("efficientnet_b0", tf_same=True).eval()
    for module in plain.modules():  # fresh EfficientNets start some BatchNorm scales at 0: make every layer count
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
    tf.load_state_dict(plain.state_dict())  # same keys: the padding has no parameters
    assert tf.tf_same and not plain.tf_same
    pads = [name for name, m in tf.named_modules() if type(m).__name__ == "TFSamePad"]
    assert pads == ["stem.pad"] + [f"stages.{s}.0.dw.pad" for s in (1, 2, 3, 5)]  # B0's stride-2 layers
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert relative(tf.forward_features(x).numpy(), plain.forward_features(x).numpy()) > 1e-2


def test_relu6_is_a_mobilenet_v1_option() -> None:
    model = convnets.create_model("mobilenet_v1_025", relu6=True)
    acts = {type(m).__name__ for name, m in model.named_modules() if name.endswith(".act") or name == "stem.act"}
    assert acts == {"ReLU6"}
    assert {type(m).__name__ for m in convnets.create_model("mobilenet_v1_025").modules()} >= {"ReLU"}


def _shapes_of_names(names: list[str], width: int = 64) -> dict[str, list[tuple[int, ...]]]:
    return {n: [(3, 3, 3, width)] for n in names}


def test_resnet_depth_is_told_by_the_block_names() -> None:
    # ResNet152 is too big to build in a test; its names and shapes alone say which it is.
    names = ["conv1_conv", "conv1_bn"]
    for stage, blocks in zip((2, 3, 4, 5), (3, 8, 36, 3), strict=True):
        names += [f"conv{stage}_block{b}_{k}_conv" for b in range(1, blocks + 1) for k in (1, 2, 3)]
    assert detect_keras_layout(_shapes_of_names(names)).layout.name == "keras:resnet152"
    old = ["conv1", "bn_conv1"] + [f"res{s}{chr(97 + b)}_branch2a" for s, n in ((2, 3), (3, 4), (4, 23), (5, 3))
                                   for b in range(n)]
    assert detect_keras_layout(_shapes_of_names(old)).layout.name == "keras:resnet101"


def test_every_keras_layout_names_a_registered_model() -> None:
    for name, variant in KERAS_LAYOUTS.items():
        convnets.registry.check_arguments(variant.layout.model, dict(variant.model_kwargs))
        assert name.startswith("keras:")


# ---------------------------------------------------------------------------------------------
# Against Keras
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keras() -> Any:
    os.environ["KERAS_BACKEND"] = "torch"  # Keras 3 on PyTorch: no TensorFlow needed
    module = pytest.importorskip("keras")
    if module.backend.backend() != "torch":
        pytest.skip(f"Keras was imported with the {module.backend.backend()} backend")
    return module


@functools.cache
def photos(size: int) -> np.ndarray:
    """china.jpg and flower.jpg, centre-cropped square and resized: (2, size, size, 3) float32 in 0..255."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    out = []
    for name in ("china.jpg", "flower.jpg"):
        image = load_sample_image(name)
        h, w = image.shape[:2]
        side = min(h, w)
        crop = image[(h - side) // 2:(h + side) // 2, (w - side) // 2:(w + side) // 2]
        out.append(np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR), dtype=np.float32))
    return np.stack(out)


def randomize(keras: Any, model: Any, app: App, seed: int = 0) -> None:
    """Random biases, BatchNorm scales and shifts, and BatchNorm statistics near the activations' own, in place.

    Statistics drawn at random would let the signal die out or blow up within a few layers and leave
    outputs that hardly depend on the input (which any converter would match); so each BatchNorm's
    running statistics are those of its input on other images (four flipped photos: one training-mode
    pass with momentum 0), then jittered.
    """
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D | keras.layers.Dense) and getattr(layer, "use_bias", False):
            kernel, bias = layer.get_weights()
            # 2% of the layer's output scale on unit inputs: present, and not drowning the input's part.
            scale = 0.02 * kernel.std() * np.sqrt(np.prod(kernel.shape[:-1]))
            layer.set_weights([kernel, rng.normal(0, scale, bias.shape)])
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        n = layer.get_weights()[0].shape
        layer.set_weights([rng.uniform(*app.gamma, n), rng.normal(app.beta, 0.5, n), np.zeros(n), np.ones(n)])
        layer.momentum = 0.0
    images = photos(app.size)
    calibration = np.concatenate([images[:, ::-1], images[:, :, ::-1]])
    model(preprocessed(app, calibration), training=True)
    for layer in norms:
        gamma, beta, mean, var = layer.get_weights()
        # A floor under the variance: channels the calibration images left (nearly) constant would
        # otherwise multiply rounding errors by up to 1/sqrt(eps) (1e-3 relative differences in float32).
        var = (var + 0.1 * var.mean()) * rng.uniform(0.7, 1.4, var.shape)
        layer.set_weights([gamma, beta, mean + rng.normal(0, 0.1, mean.shape) * np.sqrt(var), var])


def preprocessed(app: App, images: np.ndarray) -> np.ndarray:
    """What Keras's application takes: its preprocess_input on 0..255 pixels (EfficientNet: the pixels)."""
    if app.preprocess is None:
        return images.copy()
    return importlib.import_module(f"keras.applications.{app.preprocess}").preprocess_input(images.copy())


def save_legacy(model: Any, path: Path) -> Path:
    """The legacy HDF5 weights format (what keras.applications downloads), as Keras 3 writes it."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return path


def as_keras2(source: Path, path: Path, layer: Callable[[str], str] = str,
              weight: Callable[[str, str], str] = lambda layer, leaf: f"{layer}/{leaf}:0") -> Path:
    """A legacy file rewritten with Keras 2's (or another era's) names: ``conv1_conv/kernel:0``."""
    import h5py

    with h5py.File(source, "r") as src, h5py.File(path, "w") as dst:
        names = [n.decode() if isinstance(n, bytes) else n for n in src.attrs["layer_names"]]
        dst.attrs["layer_names"] = [layer(n).encode() for n in names]
        dst.attrs["backend"], dst.attrs["keras_version"] = b"tensorflow", b"2.4.0"
        for name in names:
            group, new = dst.create_group(layer(name)), []
            for old in src[name].attrs["weight_names"]:
                old = old.decode() if isinstance(old, bytes) else old
                renamed = weight(layer(name), old.rsplit("/", 1)[-1])
                group.create_dataset(renamed, data=src[name][old][()])
                new.append(renamed.encode())
            group.attrs["weight_names"] = new
    return path


def resnet50_keras22_name(name: str) -> str:
    """Keras 2.2's ResNet50 layer names, which the published ResNet50 file has: res2a_branch2a, bn_conv1, fc1000."""
    import re

    if name in ("conv1_conv", "conv1_bn", "predictions"):
        return {"conv1_conv": "conv1", "conv1_bn": "bn_conv1", "predictions": "fc1000"}[name]
    m = re.fullmatch(r"conv(\d)_block(\d+)_(\d)_(conv|bn)", name)
    if not m:
        return name
    branch = "branch1" if m[3] == "0" else "branch2" + "abc"[int(m[3]) - 1]
    return f"{'res' if m[4] == 'conv' else 'bn'}{m[1]}{chr(96 + int(m[2]))}_{branch}"


@dataclass(frozen=True)
class App:
    """One Keras application under test.

    Attributes:
        id: test id.
        build: the ``keras.applications`` function.
        size: input side (small where the architecture allows).
        top: with the classifier (compared on logits) or features only (on the last feature map).
        preprocess: the ``keras.applications`` module whose ``preprocess_input`` feeds Keras; None: raw pixels.
        layout: the layout convnets must detect.
        model: the model it must build.
        kwargs: more arguments of the Keras builder.
        gamma: range of the random BatchNorm scales.
        beta: mean of the random BatchNorm shifts (MobileNet's push activations over 6, where ReLU6 clips).
    """

    id: str
    build: str
    size: int
    top: bool
    preprocess: str | None
    layout: str
    model: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    gamma: tuple[float, float] = (0.5, 1.5)
    beta: float = 0.0


APPS = [
    App("resnet50", "ResNet50", 64, True, "resnet", "keras:resnet50", "resnet50"),
    App("resnet101-features", "ResNet101", 64, False, "resnet", "keras:resnet101", "resnet101"),
    App("vgg16-features", "VGG16", 32, False, "vgg16", "keras:vgg16", "vgg16"),
    App("vgg19-features", "VGG19", 32, False, "vgg19", "keras:vgg19", "vgg19"),
    App("mobilenet-0.25", "MobileNet", 64, True, "mobilenet", "keras:mobilenet_0.25", "mobilenet_v1_025",
        {"alpha": 0.25}, gamma=(1.0, 3.0), beta=3.0),
    App("mobilenet-1.0-features", "MobileNet", 96, False, "mobilenet", "keras:mobilenet_1.0", "mobilenet_v1",
        {"alpha": 1.0}, gamma=(1.0, 3.0), beta=3.0),
    App("mobilenet_v2-1.0", "MobileNetV2", 96, True, "mobilenet_v2", "keras:mobilenet_v2_1.0", "mobilenet_v2"),
    App("mobilenet_v2-0.35-features", "MobileNetV2", 64, False, "mobilenet_v2", "keras:mobilenet_v2_0.35",
        "mobilenet_v2", {"alpha": 0.35}),
    App("efficientnet-b0", "EfficientNetB0", 64, True, None, "keras:efficientnet_b0", "efficientnet_b0"),
    App("efficientnet-b3-features", "EfficientNetB3", 64, False, None, "keras:efficientnet_b3", "efficientnet_b3"),
]
FORMATS = ["legacy-h5", "keras3-weights-h5", "keras2-names"]


@dataclass
class Built:
    """A Keras application's files and its outputs on the photos."""

    files: dict[str, Path]
    reference: np.ndarray


def keras_outputs(keras: Any, model: Any, app: App, images: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(model(preprocessed(app, images), training=False))


def build(keras: Any, app: App, folder: Path) -> Built:
    """Build ``app`` in Keras with random weights and statistics, save it in every format, run it on the photos."""
    kwargs = {"classifier_activation": None} if app.top else {}  # logits, not probabilities
    model = getattr(keras.applications, app.build)(weights=None, include_top=app.top,
                                                   input_shape=(app.size, app.size, 3), **kwargs, **app.kwargs)
    if app.build.startswith("EfficientNet"):  # its in-model normalisation, with statistics of its own
        norm = next(layer for layer in model.layers if isinstance(layer, keras.layers.Normalization))
        norm.set_weights([np.array([0.45, 0.5, 0.42]), np.array([0.06, 0.05, 0.07]), np.array(0)])
    randomize(keras, model, app)
    folder.mkdir(parents=True, exist_ok=True)
    legacy = save_legacy(model, folder / f"{app.id}.h5")
    model.save_weights(folder / f"{app.id}.weights.h5")
    files = {"legacy-h5": legacy, "keras3-weights-h5": folder / f"{app.id}.weights.h5",
             "keras2-names": as_keras2(legacy, folder / f"{app.id}-keras2.h5")}
    reference = keras_outputs(keras, model, app, photos(app.size))
    assert relative(reference[1], reference[0]) > 0.05, "Keras's outputs hardly depend on the image"
    return Built(files, reference)


@pytest.fixture(scope="module")
def built(keras: Any, tmp_path_factory: pytest.TempPathFactory) -> Callable[[App], Built]:
    folder = tmp_path_factory.mktemp("keras")
    cache: dict[str, Built] = {}

    def get(app: App) -> Built:
        if app.id not in cache:
            cache[app.id] = build(keras, app, folder / app.id)
        return cache[app.id]

    return get


def our_outputs(model: torch.nn.Module, weights: Path, size: int, top: bool) -> np.ndarray:
    """Our model on the photos, normalised as weights_preprocessing says: logits, or the NHWC feature map."""
    pre = weights_preprocessing(weights, model.name)
    x = torch.from_numpy(photos(size)).permute(0, 3, 1, 2) / 255
    x = (x - torch.tensor(pre["mean"]).view(1, 3, 1, 1)) / torch.tensor(pre["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        out = model.eval()(x) if top else model.eval().forward_features(x).permute(0, 2, 3, 1)
    return out.numpy()


def relative(ours: np.ndarray, reference: np.ndarray) -> float:
    assert ours.shape == reference.shape
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


# The second application of a family is built at its larger size or depth: over 5 s, marked slow.
SLOW = {"resnet101-features", "vgg19-features", "efficientnet-b3-features"}


@pytest.mark.keras
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("app", [pytest.param(a, id=a.id, marks=pytest.mark.slow if a.id in SLOW else ())
                                 for a in APPS])
def test_keras_outputs_are_reproduced(app: App, fmt: str, built: Callable[[App], Built]) -> None:
    case = built(app)
    model = load(case.files[fmt])  # the layout, the model and its options all come from the file
    assert model.name == app.model
    assert model.num_classes == (1000 if app.top else 0)
    assert relative(our_outputs(model, case.files[fmt], app.size, app.top), case.reference) <= TOLERANCE


def app_named(app_id: str) -> App:
    return next(a for a in APPS if a.id == app_id)


@pytest.mark.keras
@pytest.mark.parametrize(("app_id", "options"), [
    ("mobilenet-0.25", {"tf_same": False}),
    ("mobilenet-0.25", {"relu6": False}),
    ("mobilenet_v2-1.0", {"tf_same": False}),
    ("efficientnet-b0", {"tf_same": False}),
])
def test_without_tensorflows_padding_or_relu6_the_outputs_differ(app_id: str, options: dict[str, bool],
                                                                 built: Callable[[App], Built]) -> None:
    # The control: the same weights in a model built the PyTorch way are far off, so the 1e-4 above means something.
    app = app_named(app_id)
    case = built(app)
    exact = load(case.files["legacy-h5"])
    kwargs = {**weights_preprocessing(case.files["legacy-h5"], app.model)["model_kwargs"], **options}
    wrong = convnets.create_model(app.model, **kwargs)
    wrong.load_state_dict(exact.state_dict())
    for module in wrong.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eps = 1e-3
    assert relative(our_outputs(wrong, case.files["legacy-h5"], app.size, app.top), case.reference) > 1e-2


# ---------------------------------------------------------------------------------------------
# The published files' own quirks, other containers, and the ways in
# ---------------------------------------------------------------------------------------------


@pytest.mark.keras
def test_resnet50_with_keras22_names_of_the_published_file(built: Callable[[App], Built], tmp_path: Path) -> None:
    # keras.applications' ResNet50 file dates from Keras 2.2 (conv1, bn_conv1, res2a_branch2a, fc1000): Keras
    # loads it by position into layers now called conv1_conv, conv2_block1_1_conv...; we read it by those names.
    app = app_named("resnet50")
    case = built(app)
    path = as_keras2(case.files["legacy-h5"], tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels.h5",
                     layer=resnet50_keras22_name)
    import h5py

    with h5py.File(path) as f:
        assert {"conv1", "bn_conv1", "res2a_branch2a", "bn5c_branch2c", "res3a_branch1", "fc1000"} <= set(f)
    model = convnets.create_model("resnet50", weights=str(path))
    assert relative(our_outputs(model, path, app.size, True), case.reference) <= TOLERANCE


@pytest.mark.keras
def test_vgg16_with_keras1_weight_names(built: Callable[[App], Built], tmp_path: Path) -> None:
    # The published VGG16 file names its weights block1_conv1_W_1:0 and block1_conv1_b_1:0: read by position.
    app = app_named("vgg16-features")
    case = built(app)
    path = as_keras2(case.files["legacy-h5"], tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                     weight=lambda layer, leaf: f"{layer}_{'W' if leaf == 'kernel' else 'b'}_1:0")
    import h5py

    with h5py.File(path) as f:
        assert list(f["block1_conv1"]) == ["block1_conv1_W_1:0", "block1_conv1_b_1:0"]
    assert relative(our_outputs(load(path), path, app.size, False), case.reference) <= TOLERANCE


@pytest.mark.keras
@pytest.mark.parametrize("container", ["x.keras", "x_full_model.h5"])
def test_whole_model_files_give_their_weights(keras: Any, container: str, tmp_path: Path) -> None:
    # model.save() writes a .keras archive (config + model.weights.h5) or, for .h5, the legacy whole-model
    # file (model_config + model_weights/). Only the weights are read: nothing in the config is run.
    app = App("mobilenet-0.25-saved", "MobileNet", 64, True, "mobilenet", "keras:mobilenet_0.25",
              "mobilenet_v1_025", {"alpha": 0.25}, gamma=(1.0, 3.0), beta=3.0)
    model = getattr(keras.applications, app.build)(weights=None, input_shape=(64, 64, 3),
                                                   classifier_activation=None, **app.kwargs)
    randomize(keras, model, app)
    model.save(tmp_path / container)
    reference = keras_outputs(keras, model, app, photos(64))
    ours = load(tmp_path / container)
    assert relative(our_outputs(ours, tmp_path / container, 64, True), reference) <= TOLERANCE


@pytest.mark.keras
def test_a_renamed_keras_archive_is_read_by_its_content(keras: Any, tmp_path: Path) -> None:
    # A .keras file stored under another name (a download's, "model.bin") was "not a weights file: a zip archive
    # that is not a PyTorch checkpoint, a NumPy .npz perhaps".
    model = keras.applications.MobileNet(weights=None, include_top=False, input_shape=(32, 32, 3), alpha=0.25)
    model.save(tmp_path / "m.keras")
    (tmp_path / "model.bin").write_bytes((tmp_path / "m.keras").read_bytes())
    named, renamed = load(tmp_path / "m.keras").state_dict(), load(tmp_path / "model.bin").state_dict()
    assert named.keys() == renamed.keys() and all(torch.equal(named[k], renamed[k]) for k in named)


@pytest.mark.keras
@pytest.mark.parametrize("fmt", ["nested.h5", "nested.weights.h5"])
def test_an_application_nested_in_a_model(keras: Any, fmt: str, tmp_path: Path) -> None:
    # keras.Sequential([MobileNet(...)]): the legacy file has one group for the inner model, whose weight
    # names say their layer (mobilenet_0.25_64/conv1/kernel); Keras 3 nests layers/ groups.
    app = App("mobilenet-0.25-nested", "MobileNet", 64, False, "mobilenet", "keras:mobilenet_0.25",
              "mobilenet_v1_025", {"alpha": 0.25}, gamma=(1.0, 3.0), beta=3.0)
    inner = keras.applications.MobileNet(weights=None, include_top=False, input_shape=(64, 64, 3), alpha=0.25)
    randomize(keras, inner, app)
    outer = keras.Sequential([keras.Input((64, 64, 3)), inner])
    if fmt.endswith(".weights.h5"):
        outer.save_weights(tmp_path / fmt)
    else:
        save_legacy(outer, tmp_path / fmt)
    reference = keras_outputs(keras, outer, app, photos(64))
    assert relative(our_outputs(load(tmp_path / fmt), tmp_path / fmt, 64, False), reference) <= TOLERANCE


@pytest.mark.keras
def test_published_efficientnet_normalisation(keras: Any, tmp_path: Path) -> None:
    # The published EfficientNet files store ImageNet's std as the Normalization layer's "variance", and
    # EfficientNetB0(weights="imagenet") divides by its square root once more: the model Keras runs normalises
    # with ImageNet's mean and std. Its reference: the same network with the variance set to std**2.
    app = App("efficientnet-b0-published", "EfficientNetB0", 64, True, None, "keras:efficientnet_b0",
              "efficientnet_b0")
    model = keras.applications.EfficientNetB0(weights=None, input_shape=(64, 64, 3), classifier_activation=None)
    norm = next(layer for layer in model.layers if isinstance(layer, keras.layers.Normalization))
    norm.set_weights([np.array(IMAGENET_MEAN), np.array(IMAGENET_STD) ** 2, np.array(0)])
    randomize(keras, model, app)
    reference = keras_outputs(keras, model, app, photos(64))
    norm.set_weights([np.array(IMAGENET_MEAN), np.array(IMAGENET_STD), np.array(0)])  # as published
    path = save_legacy(model, tmp_path / "efficientnetb0.h5")
    pre = weights_preprocessing(path, "efficientnet_b0")
    assert pre["std"] == IMAGENET_STD and pre["mean"] == pytest.approx(IMAGENET_MEAN)
    assert pre["input_size"] == (3, 224, 224) and pre["model_kwargs"] == {"tf_same": True}
    assert relative(our_outputs(load(path), path, 64, True), reference) <= TOLERANCE


@pytest.mark.keras
def test_create_model_and_weights_preprocessing_take_the_options_from_the_file(built: Callable[[App], Built]) -> None:
    app = app_named("mobilenet_v2-0.35-features")
    path = built(app).files["keras3-weights-h5"]
    pre = weights_preprocessing(path, "mobilenet_v2")
    assert pre["model_kwargs"] == {"tf_same": True, "width": 0.35}
    # options another model does not take are not passed
    assert weights_preprocessing(path, "resnet50")["model_kwargs"] == {}
    assert (pre["mean"], pre["std"], pre["input_size"]) == ((0.5,) * 3, (0.5,) * 3, (3, 224, 224))
    model = convnets.create_model("mobilenet_v2", weights=str(path), num_classes=0)
    assert model.tf_same and model.width == 0.35
    assert relative(our_outputs(model, path, app.size, False), built(app).reference) <= TOLERANCE


@pytest.mark.keras
def test_features_only_vgg_into_a_model_with_a_classifier(built: Callable[[App], Built],
                                                         caplog: pytest.LogCaptureFixture) -> None:
    # Keras's include_top=False files (vgg16_..._notop.h5, for transfer learning) have no fc1/fc2: the
    # convolutions load, the head is the model's own, and the log says so.
    app = app_named("vgg16-features")
    model = convnets.create_model("vgg16", num_classes=5)
    load(built(app).files["legacy-h5"], model)
    assert "new head.fc, head.hidden.0.fc, head.hidden.1.fc (freshly initialised)" in caplog.text
    ours = our_outputs(model, built(app).files["legacy-h5"], app.size, False)
    assert relative(ours, built(app).reference) <= TOLERANCE


@pytest.mark.keras
@pytest.mark.slow
def test_vgg16_with_its_classifier_at_224(keras: Any, tmp_path: Path) -> None:
    # Only at 224x224 does Keras's VGG16 flatten a 7x7 map into fc1, whose 25,088 input rows are in NHWC
    # order: the one test of that permutation (without it the logits are off by ~1).
    app = App("vgg16", "VGG16", 224, True, "vgg16", "keras:vgg16", "vgg16")
    model = keras.applications.VGG16(weights=None, classifier_activation=None)
    randomize(keras, model, app)
    reference = keras_outputs(keras, model, app, photos(224))
    path = save_legacy(model, tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels.h5")
    del model
    ours = load(path)
    assert relative(our_outputs(ours, path, 224, True), reference) <= TOLERANCE
    fc1 = ours.head.hidden[0].fc.weight
    with torch.no_grad():  # the control: fc1's columns back in Keras's (H, W, C) order
        fc1.copy_(fc1.reshape(-1, 512, 7, 7).permute(0, 2, 3, 1).reshape(fc1.shape))
    assert relative(our_outputs(ours, path, 224, True), reference) > 1e-2


@pytest.mark.keras
def test_a_run_fine_tuned_from_keras_weights_is_rebuilt_with_their_options(built: Callable[[App], Built],
                                                                           tmp_path: Path) -> None:
    # transfer builds mobilenet_v1_025 with the file's tf_same/relu6; the run's weights must say so, or
    # evaluate and export would rebuild a network with PyTorch's padding and ReLU (same shapes, other outputs).
    from convnets.cli import main
    from convnets.weights import load_weights, read_metadata

    weights = built(app_named("mobilenet-0.25")).files["legacy-h5"]
    status = main(["transfer", "mobilenet_v1_025", "--weights", str(weights), "--data", "digits", "--out",
                   str(tmp_path / "run"), "--epochs", "1", "--max-steps", "1", "--train-per-class", "2",
                   "--test-per-class", "1", "--image-size", "32", "--no-progress", "--threads", "1"])
    assert not status
    assert read_metadata(tmp_path / "run" / "best.safetensors")["model_kwargs"] == {"tf_same": True, "relu6": True}
    model = load_weights(tmp_path / "run" / "best.safetensors")
    assert model.tf_same and model.relu6
