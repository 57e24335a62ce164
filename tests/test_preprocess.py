"""Preprocessing exactly as published, on real photos, against references written here step by step.

The references below do each step with Pillow and NumPy as the publishers describe them, not with
convnets' code: torchvision's ``ImageClassification`` (shorter side resized with the model's filter,
the longer side ``int(resize * long / short)``, a centre crop at ``int(round((side - crop) / 2))``,
/255, (x - mean) / std) and Keras's ``preprocess_input`` modes (``caffe``: BGR, mean subtracted on
0..255; ``tf``: x / 127.5 - 1). Photos: scikit-learn's ``china.jpg`` (640x427) and ``flower.jpg``.

Tolerances: the geometry is compared exactly (the same uint8 pixels); the normalised values to
1e-6 where the reference does the same arithmetic in float64 (float32's resolution near 2.6 is
2.4e-7); Keras's caffe mode works on 0..255, where float32's resolution near 150 is 1.5e-5: 3e-5.
The cross-check against torchvision itself (not installable beside the pinned torch) is
``tests/crosscheck/torchvision_preprocess.py``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import sklearn.datasets
import torch
from PIL import Image

import convnets
from convnets.data.datasets import load_dataset
from convnets.data.images import decode_image
from convnets.data.loader import make_loader
from convnets.data.preprocess import Preprocessing
from convnets.weights import get_weights, read_metadata, save_weights, weights_preprocessing
from convnets.weights.keras import KERAS_LAYOUTS
from convnets.weights.load import layout_preprocessing
from test_importers import peer_state

PHOTOS = Path(sklearn.datasets.__file__).parent / "images"
FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}
IMAGENET_MEAN, IMAGENET_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def reference_crop(path: Path, resize: int, crop: int, interpolation: str) -> np.ndarray:
    """torchvision's PIL recipe, step by step: uint8 (crop, crop, 3)."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    size = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    image = image.resize(size, FILTERS[interpolation])
    top, left = int(round((size[1] - crop) / 2.0)), int(round((size[0] - crop) / 2.0))
    return np.asarray(image)[top:top + crop, left:left + crop]


def reference_torchvision(path: Path, resize: int, crop: int, interpolation: str) -> np.ndarray:
    """Normalised (3, crop, crop) float64: ToTensor, then Normalize with ImageNet's mean/std."""
    x = reference_crop(path, resize, crop, interpolation).astype(np.float64) / 255
    return ((x - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


@pytest.fixture(scope="module", params=["china.jpg", "flower.jpg", "china-portrait.png"])
def photo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The JPEG as scikit-learn ships it, or the photo turned upright and saved as PNG (the other orientation)."""
    if request.param.endswith(".jpg"):
        return PHOTOS / request.param
    path = tmp_path_factory.mktemp("photos") / request.param
    Image.fromarray(sklearn.datasets.load_sample_image("china.jpg")).transpose(Image.Transpose.ROTATE_90).save(path)
    return path


@pytest.mark.parametrize("model, resize, crop, interpolation", [
    ("resnet50_torchvision", 256, 224, "bilinear"),
    ("efficientnet_b2", 288, 288, "bicubic"),
    ("efficientnet_b3", 320, 300, "bicubic"),
])
def test_torchvision_recipes_match_the_reference(photo: Path, model: str, resize: int, crop: int,
                                                 interpolation: str) -> None:
    prep = Preprocessing.from_spec(get_weights(model, "imagenet"))
    assert (prep.size, prep.resize, prep.interpolation) == ((crop, crop), resize, interpolation)
    assert np.array_equal(prep.load(photo).permute(1, 2, 0).numpy(),
                          reference_crop(photo, resize, crop, interpolation))
    ours = prep(photo)
    assert ours.dtype == torch.float32 and ours.shape == (3, crop, crop)
    assert np.abs(ours.numpy() - reference_torchvision(photo, resize, crop, interpolation)).max() < 1e-6


def test_keras_caffe_mode_is_bgr_with_the_mean_subtracted_on_0_255(photo: Path) -> None:
    prep = layout_preprocessing(KERAS_LAYOUTS["keras:resnet50"].layout)
    assert prep == Preprocessing.keras("caffe", 224, resize=256)
    pixels = reference_crop(photo, 256, 224, "bilinear").astype(np.float64)
    keras_input = pixels[..., ::-1] - np.array([103.939, 116.779, 123.68])  # BGR, Caffe's mean, no scaling
    # Our model reads RGB (the imported first convolution's input channels are reversed): the same
    # numbers, channels in the other order.
    ours = prep(photo).numpy().transpose(1, 2, 0)[..., ::-1]
    assert np.abs(ours - keras_input).max() < 3e-5


def test_keras_tf_mode_is_minus_one_to_one(photo: Path) -> None:
    prep = layout_preprocessing(KERAS_LAYOUTS["keras:mobilenet_v2_1.0"].layout)
    assert prep == Preprocessing.keras("tf", 224, resize=256)
    expected = reference_crop(photo, 256, 224, "bilinear").astype(np.float64) / 127.5 - 1
    ours = prep(photo).numpy().transpose(1, 2, 0)
    assert np.abs(ours - expected).max() < 1e-6 and -1 - 1e-6 <= ours.min() < ours.max() <= 1 + 1e-6


@pytest.mark.keras
def test_keras_modes_against_keras_itself() -> None:
    """Keras's own preprocess_input on the same crop (Keras 3 on the torch backend, from the test extra)."""
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    imagenet_utils = pytest.importorskip("keras.applications.imagenet_utils")

    path = PHOTOS / "china.jpg"
    pixels = reference_crop(path, 256, 224, "bilinear").astype(np.float32)
    for mode in ("caffe", "tf", "torch"):
        theirs = np.asarray(imagenet_utils.preprocess_input(pixels.copy(), mode=mode))
        ours = Preprocessing.keras(mode, 224, resize=256)(path).numpy().transpose(1, 2, 0)
        if mode == "caffe":
            ours = ours[..., ::-1]  # Keras's BGR
        assert np.abs(ours - theirs).max() < (3e-5 if mode == "caffe" else 1e-5), mode


def test_fit_and_crop_is_the_old_decoding_exactly(photo: Path) -> None:
    """Without a published resize, files decode as they always have (runs trained before keep their inputs)."""
    for size in [(224, 224), (32, 32), (90, 160)]:
        assert torch.equal(Preprocessing(size).load(photo), decode_image(photo, size))
    assert torch.equal(Preprocessing((28, 28), channels=1, mean=(0.5,), std=(0.5,)).load(photo),
                       decode_image(photo, (28, 28), 1))


def test_exif_orientation_is_applied_before_the_resize(tmp_path: Path) -> None:
    upright = sklearn.datasets.load_sample_image("flower.jpg")
    turned = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # what the camera stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view": undoes ROTATE_90
    turned.save(tmp_path / "phone.png", exif=exif)
    Image.fromarray(upright).save(tmp_path / "upright.png")
    prep = Preprocessing((224, 224), 256)
    assert torch.equal(prep.load(tmp_path / "phone.png"), prep.load(tmp_path / "upright.png"))


def test_large_jpegs_are_decoded_in_full(tmp_path: Path) -> None:
    """A photo 4x scikit-learn's (2560x1708) gives every recipe the same pixels from its file as from its pixels.

    Both recipes used to decode such a file at a reduced scale (Pillow's JPEG draft), which a decoded image
    cannot be: at 1/4 for the fit to 224 (no published resize), and at 1/2 with ``draft=True`` for 256 -> 224.
    """
    photo = Image.open(PHOTOS / "china.jpg")
    photo.resize((photo.width * 4, photo.height * 4), Image.BICUBIC).save(tmp_path / "big.jpg", quality=95)
    with Image.open(tmp_path / "big.jpg") as opened:
        pixels = np.asarray(opened.convert("RGB"))
    assert np.array_equal(Preprocessing((224, 224), 256).load(tmp_path / "big.jpg").permute(1, 2, 0).numpy(),
                          reference_crop(tmp_path / "big.jpg", 256, 224, "bilinear"))
    for prep in (Preprocessing((224, 224)), Preprocessing((28, 28), channels=1, mean=(0.5,), std=(0.5,))):
        assert torch.equal(prep.load(tmp_path / "big.jpg"), prep.load(Image.fromarray(pixels)))


def test_recipes_written_with_a_draft_field_still_read(tmp_path: Path) -> None:
    """Weights files written before every image was decoded in full carry ``draft``; it is read and dropped."""
    prep = Preprocessing((224, 224), 256)
    for draft in (False, True):
        assert Preprocessing.from_dict({**prep.to_dict(), "draft": draft}) == prep
    assert "draft" not in prep.to_dict()
    grey = Preprocessing((32, 32), 36, "bicubic", channels=1, mean=(0.2,), std=(0.3,))
    meta = {"model": "lenet5", "num_classes": 3, "in_chans": 1, "input_size": [1, 32, 32], "mean": [0.2],
            "std": [0.3], "classes": ["a", "b", "c"], "preprocessing": {**grey.to_dict(), "draft": True}}
    save_weights(convnets.create_model("lenet5", num_classes=3), tmp_path / "w.safetensors", meta)
    assert weights_preprocessing(tmp_path / "w.safetensors", "lenet5")["preprocessing"] == grey


def test_without_antialias_is_torch_interpolate(photo: Path) -> None:
    prep = Preprocessing((224, 224), 256, "bilinear", antialias=False)
    pixels = torch.from_numpy(np.asarray(Image.open(photo).convert("RGB"), dtype=np.float32).copy())
    h, w = pixels.shape[:2]
    size = (256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256)
    resized = torch.nn.functional.interpolate(pixels.permute(2, 0, 1)[None], size=(size[1], size[0]),
                                              mode="bilinear", antialias=False)[0].round().clamp(0, 255)
    top, left = int(round((size[1] - 224) / 2.0)), int(round((size[0] - 224) / 2.0))
    assert torch.equal(prep.load(photo), resized[:, top:top + 224, left:left + 224].to(torch.uint8))
    assert not torch.equal(prep.load(photo), Preprocessing((224, 224), 256).load(photo))


def test_the_loader_feeds_a_folder_exactly_as_the_recipe_says(tmp_path: Path) -> None:
    """End to end: load_dataset(preprocessing=) and the evaluation loader give the recipe's tensors, bit for bit."""
    for name in ("china", "flower"):
        for split in ("train", "val"):
            (tmp_path / split / name).mkdir(parents=True)
            Image.open(PHOTOS / f"{name}.jpg").save(tmp_path / split / name / f"{name}.jpg", quality=90)
    prep = Preprocessing.from_spec(get_weights("efficientnet_b0", "imagenet"))  # 256 -> 224 bicubic
    ds = load_dataset(tmp_path, preprocessing=prep, num_workers=0)
    ds = dataclasses.replace(ds, mean=prep.mean, std=prep.std)
    assert ds.image_size == (224, 224) and ds.channels == 3
    x, y = next(iter(make_loader(ds, "test", batch_size=2, num_workers=0)))
    expected = torch.stack([prep(tmp_path / "val" / name / f"{name}.jpg") for name in ("china", "flower")])
    assert torch.equal(x, expected) and y.tolist() == [0, 1]


def test_in_memory_data_with_a_published_resize_goes_through_the_same_pillow_steps() -> None:
    prep = Preprocessing((24, 24), 32, "bicubic", channels=1, mean=(0.5,), std=(0.25,))
    native = load_dataset("digits")  # 8x8
    ds = load_dataset("digits", preprocessing=prep)
    assert ds.image_size == (24, 24) and len(ds.train) == len(native.train)
    for i in (0, 100):
        image = Image.fromarray(native.train.images[i, 0].numpy()).resize((32, 32), Image.BICUBIC)
        assert np.array_equal(ds.train.images[i, 0].numpy(), np.asarray(image)[4:28, 4:28])
    # Without a published resize, in-memory data is resized as it always was.
    plain = load_dataset("digits", preprocessing=Preprocessing((32, 32), channels=1, mean=(0.5,), std=(0.25,)))
    assert torch.equal(plain.train.images, load_dataset("digits", image_size=32, channels=1).train.images)


def test_round_trip_through_metadata(tmp_path: Path) -> None:
    prep = Preprocessing((288, 288), 288, "bicubic")
    assert Preprocessing.from_dict(prep.to_dict()) == prep
    assert Preprocessing.from_metadata({"preprocessing": prep.to_dict()}) == prep
    # Weights saved before the recipe was recorded: fit and crop at their input size.
    old = Preprocessing.from_metadata({"input_size": [1, 32, 32], "mean": [0.2], "std": [0.3]})
    assert old == Preprocessing((32, 32), None, channels=1, mean=(0.2,), std=(0.3,))
    model = convnets.create_model("lenet5", num_classes=3)
    meta = {"model": "lenet5", "num_classes": 3, "in_chans": 1, "input_size": [1, 32, 32], "mean": [0.2],
            "std": [0.3], "classes": ["a", "b", "c"],
            "preprocessing": Preprocessing((32, 32), 36, "bicubic", channels=1, mean=(0.2,), std=(0.3,)).to_dict()}
    save_weights(model, tmp_path / "w.safetensors", meta)
    assert read_metadata(tmp_path / "w.safetensors")["preprocessing"]["resize"] == 36
    assert weights_preprocessing(tmp_path / "w.safetensors", "lenet5")["preprocessing"].resize == 36


def test_peer_files_bring_their_publishers_recipe(tmp_path: Path) -> None:
    """A torchvision EfficientNet-B2 file evaluates at 288 bicubic (it was 224 bilinear for every peer file)."""
    torch.save(peer_state("torchvision:efficientnet_b2", device="cpu"), tmp_path / "b2.pth")
    pre = weights_preprocessing(tmp_path / "b2.pth", "efficientnet_b2")
    assert pre["input_size"] == (3, 288, 288)
    assert pre["preprocessing"] == Preprocessing((288, 288), 288, "bicubic")


def test_every_torchvision_spec_has_torchvisions_recipe() -> None:
    """torchvision 0.29's ``weights.transforms()`` for each URL we list (crop, resize, filter), copied by hand."""
    published = {"efficientnet_b0": (224, 256, "bicubic"), "efficientnet_b1": (240, 256, "bicubic"),
                 "efficientnet_b2": (288, 288, "bicubic"), "efficientnet_b3": (300, 320, "bicubic"),
                 "efficientnet_b4": (380, 384, "bicubic"), "efficientnet_b5": (456, 456, "bicubic"),
                 "efficientnet_b6": (528, 528, "bicubic"), "efficientnet_b7": (600, 600, "bicubic")}
    specs = [s for s in convnets.weights.list_weights() if s.peer and s.peer.startswith("torchvision:")]
    assert len(specs) == 21
    for spec in specs:
        prep = Preprocessing.from_spec(spec)
        crop, resize, interpolation = published.get(spec.model, (224, 256, "bilinear"))  # IMAGENET1K_V1's default
        assert (prep.size, prep.resize, prep.interpolation) == ((crop, crop), resize, interpolation), spec.model


def photo_folder(root: Path) -> Path:
    """Two classes, a photo each in train/ and val/ (the photos, flipped for val)."""
    for name in ("china", "flower"):
        image = Image.open(PHOTOS / f"{name}.jpg")
        for split, picture in (("train", image), ("val", image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))):
            (root / split / name).mkdir(parents=True)
            picture.save(root / split / name / f"{name}.jpg", quality=90)
    return root


@pytest.mark.slow
def test_transfer_trains_and_evaluates_with_the_weights_recipe(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``convnets transfer --weights`` with a torchvision file feeds the published recipe, saves it, and
    ``evaluate`` feeds the fine-tuned model the same way."""
    from badinput import run_cli
    from test_bad_input_weights import as_peer

    torch.manual_seed(0)
    torch.save(as_peer(convnets.create_model("resnet18"), "torchvision:resnet18"), tmp_path / "resnet18.pth")
    data = photo_folder(tmp_path / "photos")
    status, _, err = run_cli(["transfer", "resnet18", "--weights", str(tmp_path / "resnet18.pth"), "--data", str(data),
                              "--freeze", "all-but-head", "--cache-features", "--cache-dir", str(tmp_path / "cache"),
                              "--epochs", "1", "--out", str(tmp_path / "run"), "--no-progress"], capsys)
    assert status == 0, err
    meta = read_metadata(tmp_path / "run" / "last.safetensors")
    recipe = Preprocessing.from_metadata(meta)
    assert recipe == Preprocessing((224, 224), 256, "bilinear")  # torchvision's, and ImageNet's mean/std
    from convnets.evaluate import load_member, member_probabilities

    member = load_member(tmp_path / "run")
    assert member.preprocessing == recipe
    test = load_dataset(data, preprocessing=recipe, num_workers=0)
    probs, labels, *_ = member_probabilities(member, test, views="none", batch_size=2, device=torch.device("cpu"))
    x = torch.stack([recipe(data / "val" / n / f"{n}.jpg") for n in ("china", "flower")])
    with torch.no_grad():
        expected = torch.softmax(member.model(x), dim=1)
    assert torch.allclose(probs, expected, atol=1e-6) and labels.tolist() == [0, 1]


def test_a_thin_strip_is_refused_before_its_resize_takes_gigabytes(tmp_path: Path) -> None:
    """A 1 x 50000 image resized to 256 on its short side would be 256 x 12.8M: refused as a decoding error."""
    from convnets.data.images import DECODE_ERRORS

    Image.new("RGB", (50000, 1), (200, 10, 10)).save(tmp_path / "strip.png")
    with pytest.raises(DECODE_ERRORS, match="over Pillow's limit"):
        Preprocessing((224, 224), 256).load(tmp_path / "strip.png")
    assert Preprocessing((224, 224)).load(tmp_path / "strip.png").shape == (3, 224, 224)  # fit and crop takes it
