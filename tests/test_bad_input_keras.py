"""Keras .h5 weights: bad files and mismatched models (principle 3), each refused in one line that names it.

The files are written with h5py in Keras's two formats (legacy: a group per layer listing its
``weight_names``; Keras 3: ``layers/<class>/vars/<i>`` with the layer's name as an attribute), or,
for the cases that need a whole application, by Keras 3 itself (skipped where Keras is not
installed). The happy paths are in ``test_keras.py``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest

import convnets
from badinput import Case, check_case, params
from convnets.weights import load


def h5py() -> Any:
    return pytest.importorskip("h5py")


def legacy(path: Path, layers: Mapping[str, list[tuple[int, ...]]]) -> Path:
    """A legacy Keras weights file with these layers, each holding zero arrays of these shapes."""
    with h5py().File(path, "w") as f:
        f.attrs["layer_names"] = [name.encode() for name in layers]
        for name, shapes in layers.items():
            group, names = f.create_group(name), []
            for i, shape in enumerate(shapes):
                group.create_dataset(f"{name}/w{i}:0", data=np.zeros(shape, np.float32))
                names.append(f"{name}/w{i}:0".encode())
            group.attrs["weight_names"] = names
    return path


def vgg_like(convs: int, **extra: list[tuple[int, ...]]) -> dict[str, list[tuple[int, ...]]]:
    """Keras VGG's layer names, ``convs`` convolutions over five blocks (shapes: small, not VGG's)."""
    per_block = [convs // 5 + (1 if b < convs % 5 else 0) for b in range(5)]
    layers = {f"block{b + 1}_conv{c + 1}": [(3, 3, 4, 4), (4,)] for b, n in enumerate(per_block) for c in range(n)}
    return {**layers, **extra}


def writes(name: str, layers: Mapping[str, list[tuple[int, ...]]]) -> Callable[[Path], Path]:
    return lambda tmp: legacy(tmp / name, layers)


def notes(tmp: Path) -> None:
    h5py()  # without it, any .h5 is refused for the missing h5py (the h5py-missing case)
    (tmp / "w.h5").write_text("these are my notes\n" * 50)


def truncated(tmp: Path) -> None:
    path = legacy(tmp / "cut.h5", vgg_like(13))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def plain_hdf5(tmp: Path) -> None:
    with h5py().File(tmp / "data.h5", "w") as f:
        f.create_dataset("images", data=np.zeros((4, 8, 8)))


def missing_layer(tmp: Path) -> None:
    path = legacy(tmp / "w.h5", vgg_like(13))
    with h5py().File(path, "a") as f:
        del f["block1_conv1"]


def keras3_without_names(tmp: Path) -> None:
    with h5py().File(tmp / "old.weights.h5", "w") as f:
        f.create_dataset("layers/conv2d/vars/0", data=np.zeros((3, 3, 3, 8), np.float32))


def keras_archive_without_weights(tmp: Path) -> None:
    import zipfile

    with zipfile.ZipFile(tmp / "model.keras", "w") as archive:  # a zip named .keras: config, no weights
        archive.writestr("config.json", "{}")


def group_for_a_weight(tmp: Path) -> None:
    path = legacy(tmp / "w.h5", vgg_like(13))
    with h5py().File(path, "a") as f:
        del f["block1_conv1/block1_conv1/w0:0"]
        f.create_group("block1_conv1/block1_conv1/w0:0")


def int8_kernel(tmp: Path) -> None:
    # Keras's model.quantize("int8") on a Dense without bias saves (int8 kernel, float kernel_scale): two
    # arrays that read as a kernel and a bias; they loaded as kernel values 127 and the scales as biases.
    layers = vgg_like(13)
    path = legacy(tmp / "q.h5", {**layers, "predictions": [(4, 3), (3,)]})
    with h5py().File(path, "a") as f:
        del f["predictions/predictions/w0:0"]
        f.create_dataset("predictions/predictions/w0:0", data=np.full((4, 3), 127, np.int8))


def keras_app(build: str, name: str, size: int = 32, **kwargs: Any) -> Callable[[Path], Path]:
    """A case's setup: ``tmp/name`` holds the weights of a Keras application (random), in legacy HDF5."""

    def setup(tmp: Path) -> Path:
        os.environ["KERAS_BACKEND"] = "torch"
        keras = pytest.importorskip("keras")
        from keras.src.legacy.saving import legacy_h5_format

        model = getattr(keras.applications, build)(weights=None, input_shape=(size, size, 3), **kwargs)
        with h5py().File(tmp / name, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, model)
        return tmp / name

    return setup


def fine_tuned(tmp: Path) -> Path:
    """Keras's transfer-learning recipe: Sequential([the application without its top, pooling, a new Dense])."""
    os.environ["KERAS_BACKEND"] = "torch"
    keras = pytest.importorskip("keras")
    base = keras.applications.MobileNet(weights=None, include_top=False, input_shape=(32, 32, 3), alpha=0.25)
    model = keras.Sequential([keras.Input((32, 32, 3)), base, keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(5)])
    model.save_weights(tmp / "fine_tuned.weights.h5")
    return tmp / "fine_tuned.weights.h5"


def normalised_in_front(tmp: Path) -> Path:
    """Keras's recipe for new data: a Normalization adapted to it, in front of EfficientNetB0 (its own inside)."""
    os.environ["KERAS_BACKEND"] = "torch"
    keras = pytest.importorskip("keras")
    norm = keras.layers.Normalization()
    norm.adapt(np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32))
    base = keras.applications.EfficientNetB0(weights=None, include_top=False, input_shape=(32, 32, 3))
    keras.Sequential([keras.Input((32, 32, 3)), norm, base]).save_weights(tmp / "normalised.weights.h5")
    return tmp / "normalised.weights.h5"


def without_h5py(tmp: Path) -> None:
    with mock.patch.dict(sys.modules, {"h5py": None}):
        load(tmp / "resnet50.h5")


TRANSFER = ["transfer", "mobilenet_v1_025", "--data", "digits", "--out", "{tmp}/run", "--no-progress",
            "--epochs", "1", "--weights"]


def nothing_written(tmp: Path) -> None:
    assert sorted(p.name for p in tmp.iterdir()) == ["v.h5"]


def no_run(tmp: Path) -> None:
    assert not (tmp / "run").exists()


CASES = [
    # 3: a file that is not Keras Applications weights, or not whole, is named before any work.
    Case("garbage-named-h5", 3, [*TRANSFER, "{tmp}/w.h5"], r"w\.h5: not a readable Keras weights file",
         setup=notes, after=no_run),
    Case("empty-h5", 3, [*TRANSFER, "{tmp}/w.h5"], r"w\.h5: the file is empty",
         setup=lambda tmp: (tmp / "w.h5").write_bytes(b""), after=no_run),
    Case("truncated-h5", 3, [*TRANSFER, "{tmp}/cut.h5"], r"cut\.h5: not a readable Keras weights file.*truncated",
         setup=truncated, after=no_run),
    Case("missing-h5", 3, [*TRANSFER, "{tmp}/nope.h5"], r"no weights file at .*nope\.h5", after=no_run),
    Case("unknown-architecture", 3, [*TRANSFER, "{tmp}/mine.h5"],
         r"unrecognised Keras weights \(layers such as conv2d, dense\).*keras:resnet50",
         setup=writes("mine.h5", {"conv2d": [(3, 3, 3, 8), (8,)], "dense": [(8, 10), (10,)]}), after=no_run),
    Case("hdf5-not-keras", 3, [], r"data\.h5: an HDF5 file but not Keras weights", setup=plain_hdf5,
         call=lambda tmp: load(tmp / "data.h5")),
    Case("layer-listed-not-there", 3, [], r"w\.h5: a damaged Keras weights file.*block1_conv1", setup=missing_layer,
         call=lambda tmp: load(tmp / "w.h5")),
    Case("keras-archive-without-weights", 3, [],
         r"model\.keras: a zip archive without model\.weights\.h5.*config\.json",
         setup=keras_archive_without_weights, call=lambda tmp: load(tmp / "model.keras")),
    Case("group-in-place-of-a-weight", 3, [], r"w\.h5: a damaged Keras weights file.*w0:0 is a group, not an array",
         setup=group_for_a_weight, call=lambda tmp: load(tmp / "w.h5")),
    Case("int8-quantized-layer", 3, [], r"Keras layer 'predictions' holds int8 weights \(a model quantized",
         setup=int8_kernel, call=lambda tmp: load(tmp / "q.h5")),
    # 3: Keras weights where a file saved by convnets is needed: said so (was "damaged, truncated or another format",
    # export after loading the whole model).
    *[Case(f"keras-file-to-{cmd}", 3, [cmd, "{tmp}/v.h5", *more], r"v\.h5: not a readable safetensors file: it is "
           r"HDF5 or a \.keras archive, as Keras weights are: .*convnets transfer MODEL --weights PATH",
           setup=writes("v.h5", vgg_like(13)), after=nothing_written)
      for cmd, more in [("predict", ["{tmp}/v.h5"]), ("evaluate", ["--out", "{tmp}/report"]),
                        ("export", ["--out", "{tmp}/export"])]],
    # Any HDF5 file starts as Keras's do: it was called "Keras weights" outright.
    Case("hdf5-not-keras-to-predict", 3, ["predict", "{tmp}/data.h5", "{tmp}/data.h5"],
         r"data\.h5: not a readable safetensors file: it is HDF5 or a \.keras archive, as Keras weights are",
         setup=plain_hdf5),
    Case("keras3-without-layer-names", 3, [], r"does not record its layers' names.*save it again",
         setup=keras3_without_names, call=lambda tmp: load(tmp / "old.weights.h5")),
    Case("resnet-v2", 3, [], r"a Keras ResNetV2 \(pre-activation\): convnets has the original ResNet only",
         setup=writes("r.h5", {"conv1_conv": [(7, 7, 3, 64)], "conv2_block1_preact_bn": [(64,)] * 4,
                               "post_bn": [(2048,)] * 4}), call=lambda tmp: load(tmp / "r.h5")),
    Case("efficientnet-v2", 3, [], r"unrecognised Keras weights",
         setup=writes("e.h5", {"stem_conv": [(3, 3, 3, 32)], "block1a_project_conv": [(3, 3, 32, 16)],
                               "top_conv": [(1, 1, 256, 1280)]}), call=lambda tmp: load(tmp / "e.h5")),
    Case("vgg-of-ten-convs", 3, [], r"a Keras VGG with 10 convolutions, neither VGG16 \(13\) nor VGG19 \(16\)",
         setup=writes("v.h5", vgg_like(10)), call=lambda tmp: load(tmp / "v.h5")),
    Case("mobilenet-alpha-0.625", 3, [], r"a Keras MobileNet with alpha 0\.625.*convnets has alpha 1\.0, 0\.75",
         setup=writes("m.h5", {"conv1": [(3, 3, 3, 20)], "conv_dw_1": [(3, 3, 20, 1)]}),
         call=lambda tmp: load(tmp / "m.h5")),
    Case("extra-layer", 3, [], r"keras:vgg16: 1 Keras layer\(s\) that no rule covers: my_dense",
         setup=writes("v.h5", vgg_like(13, my_dense=[(4, 2), (2,)])), call=lambda tmp: load(tmp / "v.h5")),
    Case("three-arrays-layer", 3, [], r"Keras layer 'fc1' holds weights of shapes \[\(4,\), \(4,\), \(4,\)\]",
         setup=writes("v.h5", vgg_like(13, fc1=[(4,)] * 3)), call=lambda tmp: load(tmp / "v.h5")),
    Case("unknown-keras-layout", 3, [], r"unknown Keras layout 'keras:resnet18'; known: keras:vgg16",
         setup=writes("v.h5", vgg_like(13)), call=lambda tmp: load(tmp / "v.h5", layout="keras:resnet18")),
    Case("pytorch-layout-for-a-keras-file", 3, [],
         r"timm:efficientnet_b0 is a layout of PyTorch state dicts .*; v\.h5 is a Keras weights file, whose layouts "
         r"are keras:vgg16", setup=writes("v.h5", vgg_like(13)),
         call=lambda tmp: load(tmp / "v.h5", layout="timm:efficientnet_b0")),
    Case("h5py-missing", 3, [], r"needs h5py: pip install 'convnets\[keras\]'",
         setup=lambda tmp: (tmp / "resnet50.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64)), call=without_h5py),
    # 3: Keras weights for another variant or options than the model: named, not loaded.
    Case("mobilenet-0.25-into-1.0", 3, [], r"does not fit mobilenet_v1:.*different shapes.*stem\.conv\.weight",
         setup=keras_app("MobileNet", "mobilenet_2_5_224_tf.h5", alpha=0.25),
         call=lambda tmp: convnets.create_model("mobilenet_v1", weights=str(tmp / "mobilenet_2_5_224_tf.h5"))),
    Case("mobilenet_v2-0.35-width-1.0", 3, [], r"needs mobilenet_v2 built with tf_same=True, width=0\.35; this "
         r"one has width=1\.0", setup=keras_app("MobileNetV2", "v2.h5", alpha=0.35),
         call=lambda tmp: convnets.create_model("mobilenet_v2", weights=str(tmp / "v2.h5"), width=1.0)),
    Case("mobilenet-file-for-mobilenet_v2", 3, [], r"cannot build mobilenet_v2 with .*: the weights are for "
         r"mobilenet_v1_025, whose options mobilenet_v2 does not take \(mobilenet_v2 takes no argument 'relu6'",
         setup=keras_app("MobileNet", "mobilenet_2_5_224_tf.h5", alpha=0.25),
         call=lambda tmp: convnets.create_model("mobilenet_v2", weights=str(tmp / "mobilenet_2_5_224_tf.h5"))),
    Case("efficientnet-b0-into-b1", 3, [], r"does not fit efficientnet_b1:.*missing.*stages\.0\.1\.dw",
         setup=keras_app("EfficientNetB0", "efficientnetb0.h5"),
         call=lambda tmp: convnets.create_model("efficientnet_b1", weights=str(tmp / "efficientnetb0.h5"))),
    Case("efficientnet-without-tf-padding", 3, [], r"efficientnetb0_notop\.h5 needs efficientnet_b0 built with "
         r"tf_same=True; this one has tf_same=False: build it with create_model\('efficientnet_b0', tf_same=True\)",
         setup=keras_app("EfficientNetB0", "efficientnetb0_notop.h5", include_top=False),
         call=lambda tmp: load(tmp / "efficientnetb0_notop.h5", convnets.create_model("efficientnet_b0"))),
    Case("mobilenet-relu", 3, [], r"needs mobilenet_v1_025 built with tf_same=True, relu6=True; this one has "
         r"relu6=False", setup=keras_app("MobileNet", "m.h5", alpha=0.25),
         call=lambda tmp: convnets.create_model("mobilenet_v1_025", weights=str(tmp / "m.h5"), relu6=False)),
    # One of the two became the preprocessing and the other was dropped, without a word (which one: the format's
    # order, so the .h5 and .weights.h5 of one model normalised differently).
    Case("normalization-in-front-of-efficientnet", 3, [], r"normalised\.weights\.h5: 2 Normalization layers "
         r"\(normalization.*\), where EfficientNet has one", setup=normalised_in_front,
         call=lambda tmp: load(tmp / "normalised.weights.h5")),
    Case("fine-tuned-with-own-classifier", 3, [], r"keras:mobilenet_0\.25: 1 Keras layer\(s\) that no rule "
         r"covers: dense", setup=fine_tuned, call=lambda tmp: load(tmp / "fine_tuned.weights.h5")),
    Case("vgg19-as-vgg16", 3, [], r"does not fit vgg16:.*not in the model.*stages\.2\.conv4",
         setup=keras_app("VGG19", "vgg19_notop.h5", include_top=False),
         call=lambda tmp: load(tmp / "vgg19_notop.h5", layout="keras:vgg16")),
]


@pytest.mark.parametrize("case", params(CASES))
def test_bad_input(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    check_case(case, tmp_path, capsys)
