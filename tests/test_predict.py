"""``convnets predict`` and ``convnets.predict``: top-k classes of real photos, batching, test-time views,
the predictions file, bad files among good ones, and agreement with ``convnets evaluate``.

The model is the shipped ``resnet20:fashion-mnist``; the photos are scikit-learn's ``china.jpg`` and
``flower.jpg`` (JPEGs from outside the project) and real Fashion-MNIST test images.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import convnets
import convnets.weights
from badinput import run_cli
from convnets.data.datasets import load_dataset
from convnets.evaluate import load_member, member_probabilities
from convnets.prediction import Prediction, _prepare, predict
from convnets.weights import FASHION_MNIST_CLASSES, IMAGENET_CLASSES, WEIGHTS, get_weights

SOURCE = "resnet20:fashion-mnist"
FASHION_TEST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


@pytest.fixture(scope="module")
def member():
    return load_member(SOURCE)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """scikit-learn's two sample photos as JPEG files, and two more views of them (a crop, a rotation)."""
    from sklearn.datasets import load_sample_image

    root = tmp_path_factory.mktemp("photos")
    paths = {}
    for name in ("china.jpg", "flower.jpg"):
        paths[name] = root / name
        Image.fromarray(load_sample_image(name)).save(paths[name], quality=95)
    china = Image.open(paths["china.jpg"])
    paths["crop.png"] = root / "crop.png"
    china.crop((100, 50, 400, 350)).save(paths["crop.png"])
    paths["turned.png"] = root / "turned.png"
    china.rotate(90, expand=True).save(paths["turned.png"])
    return paths


def test_real_photos_give_sorted_probabilities_named_by_the_weights(photos):
    results = predict(SOURCE, [photos["china.jpg"], photos["flower.jpg"]], top_k=10, device="cpu")
    assert [r.path for r in results] == [str(photos["china.jpg"]), str(photos["flower.jpg"])]
    for r in results:
        assert r.ok and r.error is None
        assert sum(r.probabilities) == pytest.approx(1.0, abs=1e-5)  # all 10 classes: the whole softmax
        assert r.probabilities == sorted(r.probabilities, reverse=True)
        assert r.classes == [FASHION_MNIST_CLASSES[i] for i in r.indices]
        assert sorted(r.indices) == list(range(10))
    assert results[0].probabilities != results[1].probabilities  # two photos, two answers


def test_top_k_keeps_the_most_probable(photos):
    five = predict(SOURCE, photos["china.jpg"], device="cpu")[0]
    every = predict(SOURCE, photos["china.jpg"], top_k=10, device="cpu")[0]
    assert len(five.classes) == 5
    assert five.indices == every.indices[:5]
    assert five.probabilities == pytest.approx(every.probabilities[:5], abs=1e-7)


def test_top_k_beyond_the_classes_shows_them_all(photos):
    assert len(predict(SOURCE, photos["china.jpg"], top_k=1000, device="cpu")[0].classes) == 10


def test_batched_results_equal_one_by_one(photos):
    images = [photos[n] for n in ("china.jpg", "flower.jpg", "crop.png", "turned.png")]
    batched = predict(SOURCE, images, top_k=10, batch_size=3, device="cpu")  # one full batch, one partial
    for path, together in zip(images, batched, strict=True):
        alone = predict(SOURCE, path, top_k=10, batch_size=1, device="cpu")[0]
        assert together.indices == alone.indices
        assert together.probabilities == pytest.approx(alone.probabilities, abs=1e-5)


def test_mirror_views_average_the_softmax_of_image_and_flip(member, photos):
    result = predict(member, photos["flower.jpg"], top_k=10, views="mirror", device="cpu")[0]
    x = _prepare(member, str(photos["flower.jpg"]))[None]
    with torch.no_grad():
        by_hand = (F.softmax(member.model(x), 1) + F.softmax(member.model(torch.flip(x, dims=[3])), 1)) / 2
    assert result.probabilities == pytest.approx(by_hand[0, result.indices].tolist(), abs=1e-6)
    plain = predict(member, photos["flower.jpg"], top_k=10, device="cpu")[0]
    assert plain.probabilities != pytest.approx(result.probabilities, abs=1e-4)  # the flip changed something


def test_ten_crop_views_run_and_sum_to_one(photos):
    result = predict(SOURCE, photos["china.jpg"], top_k=10, views="ten-crop", device="cpu")[0]
    assert sum(result.probabilities) == pytest.approx(1.0, abs=1e-5)


def test_pil_images_and_tensors_give_what_their_file_gives(member, tmp_path, photos):
    png = tmp_path / "china.png"
    picture = Image.open(photos["china.jpg"]).convert("RGB")
    picture.save(png)  # lossless: the same pixels as the in-memory image
    pixels = torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1)
    results = predict(member, [png, picture, pixels, pixels.float() / 255], top_k=10, device="cpu")
    assert [r.path for r in results[1:]] == ["<image 1>", "<image 2>", "<image 3>"]
    for r in results[1:]:
        assert r.indices == results[0].indices
        assert r.probabilities == pytest.approx(results[0].probabilities, abs=1e-6)


def test_a_jpeg_gives_what_its_pil_image_and_its_pixels_give(member):
    """scikit-learn's flower.jpg as shipped, opened by Pillow, and as load_sample_image's array: one answer.

    The file used to be decoded at 1/8 scale (Pillow's JPEG draft), which a decoded image cannot be:
    Bag 0.496 from the file, 0.399 from its pixels.
    """
    import sklearn.datasets

    path = Path(sklearn.datasets.__file__).parent / "images" / "flower.jpg"
    pixels = sklearn.datasets.load_sample_image("flower.jpg")
    with Image.open(path) as opened, open(path, "rb") as file:
        results = predict(member, [path, opened, Image.fromarray(pixels),
                                   torch.from_numpy(pixels.copy()).permute(2, 0, 1), file,
                                   io.BytesIO(path.read_bytes()), pixels, pixels[:, :, 0]],
                          top_k=10, device="cpu")
    grey = predict(member, Image.fromarray(pixels[:, :, 0]), top_k=10, device="cpu")[0]
    assert [r.path for r in results[4:]] == [str(path), "<image 5>", "<image 6>", "<image 7>"]
    assert results[7].indices == grey.indices
    assert results[7].probabilities == pytest.approx(grey.probabilities, abs=1e-6)
    for r in results[1:7]:
        assert r.indices == results[0].indices
        assert r.probabilities == pytest.approx(results[0].probabilities, abs=1e-6)


def test_a_pil_image_is_turned_by_its_exif_orientation_as_its_file_is(member, tmp_path, photos):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: the viewer turns it clockwise
    Image.open(photos["china.jpg"]).transpose(Image.Transpose.ROTATE_90).save(tmp_path / "phone.jpg", exif=exif)
    with Image.open(tmp_path / "phone.jpg") as opened:
        from_file, from_pil = predict(member, [tmp_path / "phone.jpg", opened], top_k=10, device="cpu")
    assert from_pil.indices == from_file.indices
    assert from_pil.probabilities == pytest.approx(from_file.probabilities, abs=1e-6)


def test_pil_images_of_any_mode_are_classified_and_a_damaged_one_is_reported(member, tmp_path, photos):
    """PIL images are decoded as files are: CMYK and 16-bit ones (which PNG cannot hold) give what their file
    gives; one whose file is truncated gets its reason and the rest are still classified."""
    china = Image.open(photos["china.jpg"])
    china.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    deep = (np.asarray(china.convert("L"), np.uint16) * 257).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    (tmp_path / "cut.jpg").write_bytes(photos["china.jpg"].read_bytes()[:2000])
    files = [tmp_path / "cmyk.jpg", tmp_path / "deep.png"]
    opened = [Image.open(path) for path in [*files, tmp_path / "cut.jpg"]]  # lazily: nothing decoded yet
    assert [image.mode for image in opened[:2]] == ["CMYK", "I;16"]
    by_file = predict(member, files, top_k=10, device="cpu")
    by_image = predict(member, opened, top_k=10, device="cpu")
    for file, image in zip(by_file, by_image[:2], strict=True):
        assert image.indices == file.indices
        assert image.probabilities == pytest.approx(file.probabilities, abs=1e-6)
    assert by_image[2].path == "<image 2>" and by_image[2].error.startswith("OSError")


def test_a_bare_model_with_its_classes_and_normalisation(member, photos):
    bare = predict(member.model, photos["china.jpg"], classes=member.classes, mean=member.mean, std=member.std,
                   input_size=member.input_size, device="cpu")[0]
    loaded = predict(member, photos["china.jpg"], device="cpu")[0]
    assert bare.classes == loaded.classes
    assert bare.probabilities == pytest.approx(loaded.probabilities, abs=1e-6)


def test_a_weights_file_and_a_run_directory_give_what_the_name_gives(tmp_path, photos):
    shipped = Path(convnets.weights.PACKAGE_DIR) / get_weights("resnet20", "fashion-mnist").source
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "best.safetensors").write_bytes(shipped.read_bytes())
    by_name = predict(SOURCE, photos["china.jpg"], top_k=10, device="cpu")[0]
    for source in (shipped, tmp_path / "run"):
        result = predict(source, photos["china.jpg"], top_k=10, device="cpu")[0]
        assert result.indices == by_name.indices
        assert result.probabilities == pytest.approx(by_name.probabilities, abs=1e-7)


def test_a_named_file_is_tried_whatever_its_suffix(tmp_path, photos):
    odd = tmp_path / "photo.data"
    odd.write_bytes(photos["china.jpg"].read_bytes())
    assert predict(SOURCE, [odd], device="cpu")[0].ok  # only a folder's files are chosen by suffix


def test_the_package_exports_predict_and_its_result():
    assert convnets.predict is predict
    assert convnets.Prediction is Prediction
    assert {f.name for f in dataclasses.fields(Prediction)} == {"path", "classes", "probabilities", "indices",
                                                                "error"}


def _fashion_test_images(count: int) -> np.ndarray:
    """The first ``count`` images of the real Fashion-MNIST test file, read here with numpy (16-byte header)."""
    with gzip.open(FASHION_TEST, "rb") as f:
        data = np.frombuffer(f.read(16 + count * 784), np.uint8)
    return data[16:].reshape(count, 28, 28)


def test_fashion_mnist_test_images_get_the_class_evaluate_gives(member, tmp_path):
    """Two paths to one answer: predict on PNG files of real test images vs evaluate's pass over the test split."""
    count = 12
    images = _fashion_test_images(count)
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i:02d}.png")
        Image.fromarray(image).save(paths[-1])
    results = predict(member, tmp_path, top_k=10, device="cpu")
    assert [r.path for r in results] == [str(p) for p in paths]

    dataset = load_dataset("fashion-mnist", image_size=(28, 28), channels=1)
    dataset = dataclasses.replace(dataset, test=dataset.test.subset(torch.arange(count)))
    assert torch.equal(dataset.test.images[:, 0], torch.from_numpy(images.copy()))  # the same test images
    probs, labels, *_ = member_probabilities(member, dataset, views="none", batch_size=count,
                                             device=torch.device("cpu"))
    for r, p in zip(results, probs, strict=True):
        assert r.indices[0] == int(p.argmax())
        assert r.probabilities == pytest.approx(p[r.indices].tolist(), abs=1e-5)
    # The shipped weights are 91% accurate: most of these real images are named right.
    assert sum(r.indices[0] == int(y) for r, y in zip(results, labels, strict=True)) >= count - 3


def test_registered_imagenet_weights_name_their_1000_classes():
    specs = [w for w in WEIGHTS if w.dataset == "ImageNet-1k"]
    assert specs
    for spec in specs:
        assert spec.categories == IMAGENET_CLASSES
    names = get_weights("resnet18", "imagenet").categories
    assert len(names) == 1000 == len(set(names))
    assert (names[0], names[1], names[948], names[999]) == ("tench", "goldfish", "Granny Smith", "toilet tissue")
    # torchvision 0.29.1's _IMAGENET_CATEGORIES, joined with newlines: the file is that list, unchanged.
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()
    assert digest == "0b0f9fee7c952f257418d62aa701f023a9da13b443a14f5c4291e5724d92967c"


def test_the_class_names_file_ships_with_the_package():
    pyproject = (Path(__file__).parent.parent / "pyproject.toml").read_text()
    assert "weights/imagenet_classes.txt" in pyproject


def test_evaluate_loads_registered_weights_by_name(member):
    assert member.classes == list(FASHION_MNIST_CLASSES)
    assert member.input_size == (1, 28, 28)
    assert member.data == "fashion-mnist"  # so evaluate finds its test data without --data
    assert member.source == SOURCE


# ---- the command


def _printed(out: str) -> dict[str, str]:
    """``path -> first class name`` (or ``error: ...``) from predict's lines."""
    rows = {}
    for line in out.splitlines():
        path, _, rest = line.partition(": ")
        rows[path] = rest if rest.startswith("error:") else rest.rsplit(" ", 1)[0].split(", ")[0].rsplit(" ", 1)[0]
    return rows


@pytest.fixture
def folder(tmp_path, photos) -> Path:
    """Two photos (one in a subfolder), a truncated JPEG, an empty file, text named .png, and a note."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    (root / "china.jpg").write_bytes(photos["china.jpg"].read_bytes())
    (root / "sub" / "flower.jpg").write_bytes(photos["flower.jpg"].read_bytes())
    (root / "cut.jpg").write_bytes(photos["china.jpg"].read_bytes()[:4000])
    (root / "empty.png").write_bytes(b"")
    (root / "text.png").write_text("not a picture\n")
    (root / "notes.txt").write_text("labels go elsewhere\n")
    return root


def test_cli_folder_reports_bad_files_and_classifies_the_rest(folder, tmp_path, capsys):
    out_file = tmp_path / "predictions.csv"
    status, out, err = run_cli(["predict", SOURCE, str(folder), "--out", str(out_file), "--device", "cpu",
                                "--threads", "1"], capsys)
    assert status == 0, err
    printed = _printed(out)
    names = ["china.jpg", "cut.jpg", "empty.png", "notes.txt", "sub/flower.jpg", "text.png"]
    assert list(printed) == [str(folder / n) for n in names]  # recursive, sorted
    assert printed[str(folder / "china.jpg")] in FASHION_MNIST_CLASSES
    assert printed[str(folder / "sub/flower.jpg")] in FASHION_MNIST_CLASSES
    assert "truncated" in printed[str(folder / "cut.jpg")]
    assert "empty file" in printed[str(folder / "empty.png")]
    assert "cannot identify image" in printed[str(folder / "text.png")]
    assert "not an image file" in printed[str(folder / "notes.txt")]
    for bad in ("cut.jpg", "empty.png", "text.png", "notes.txt"):
        assert f"skipped {folder / bad}: " in err
    assert "classified 2 images; 4 could not be read" in err
    rows = {row["path"]: row for row in csv.DictReader(out_file.open(newline="", encoding="utf-8"))}
    assert list(rows) == list(printed)
    for path, row in rows.items():
        if printed[path].startswith("error:"):
            assert row["error"] and printed[path] == f"error: {row['error']}" and not row["class_1"]
        else:
            assert not row["error"] and row["class_1"] == printed[path]
            probs = [float(row[f"probability_{r}"]) for r in range(1, 6)]
            assert probs == sorted(probs, reverse=True)
            assert FASHION_MNIST_CLASSES[int(row["index_1"])] == row["class_1"]


def test_cli_json_matches_the_printed_top_1(photos, tmp_path, capsys):
    out_file = tmp_path / "p.json"
    args = ["predict", SOURCE, str(photos["china.jpg"]), str(photos["flower.jpg"]), "--top-k", "3", "--tta",
            "mirror", "--out", str(out_file), "--device", "cpu"]
    status, out, _ = run_cli(args, capsys)
    assert status == 0
    payload = json.loads(out_file.read_text(encoding="utf-8"))
    assert payload["views"] == "mirror" and payload["top_k"] == 3 and payload["weights"] == SOURCE
    printed = _printed(out)
    for entry in payload["predictions"]:
        assert entry["error"] is None and len(entry["classes"]) == 3
        assert printed[entry["path"]] == entry["classes"][0]
    # Run again into the same file: an earlier predictions file is ours to replace.
    status, _, _ = run_cli(args[:3] + args[8:], capsys)
    assert status == 0
    assert len(json.loads(out_file.read_text(encoding="utf-8"))["predictions"]) == 1


def test_cli_force_replaces_a_file_that_is_not_ours(photos, tmp_path, capsys):
    mine = tmp_path / "mine.csv"
    mine.write_text("name,score\nx,1\n")
    status, _, err = run_cli(["predict", SOURCE, str(photos["china.jpg"]), "--out", str(mine)], capsys)
    assert status == 2 and "not a predictions file" in err and mine.read_text() == "name,score\nx,1\n"
    status, _, _ = run_cli(["predict", SOURCE, str(photos["china.jpg"]), "--out", str(mine), "--force",
                            "--device", "cpu"], capsys)
    assert status == 0 and mine.read_text().startswith("path,error,class_1")


def test_cli_quiet_prints_only_the_results(folder, capsys):
    status, out, err = run_cli(["predict", SOURCE, str(folder), "--quiet", "--device", "cpu"], capsys)
    assert status == 0 and err == ""
    assert len(out.splitlines()) == 6


def test_cli_nothing_classified_is_an_error_after_the_reasons(tmp_path, capsys):
    (tmp_path / "a.png").write_text("text")
    (tmp_path / "b.txt").write_text("text")
    status, out, err = run_cli(["predict", SOURCE, str(tmp_path), "--device", "cpu"], capsys)
    assert status == 2
    assert f"{tmp_path / 'a.png'}: error: " in out and f"{tmp_path / 'b.txt'}: error: " in out
    assert err.strip().splitlines()[-1].startswith("convnets predict: error: none of the 2 inputs could be classified")


def test_progress_bar_goes_to_standard_error_only_when_asked(photos, capsys):
    predict(SOURCE, [photos["china.jpg"], photos["flower.jpg"]], device="cpu", progress=True)
    shown = capsys.readouterr()
    assert "0/2 [" in shown.err and "image/s" in shown.err and shown.out == ""
    predict(SOURCE, [photos["china.jpg"]], device="cpu")  # the default: none
    predict(SOURCE, [photos["china.jpg"]], device="cpu", progress=None)  # None: a terminal only; pytest's is not
    assert capsys.readouterr().err == ""
