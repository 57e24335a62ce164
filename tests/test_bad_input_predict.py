"""Bad input to ``convnets predict`` and ``convnets.predict``: options out of range, outputs that are not
ours, models that cannot be loaded, and inputs of which nothing can be classified.

Files that cannot be read among good ones are not errors (they are reported and the rest classified):
``tests/test_predict.py`` tests those. Here every case must fail with one line, before any work.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from badinput import Case, check_case, params
from convnets import create_model
from convnets.prediction import predict, write_predictions

SOURCE = "resnet20:fashion-mnist"
FOREIGN = "name,score\nmine,1\n"


def an_image(tmp: Path, name: str = "a.png") -> Path:
    path = tmp / name
    Image.new("RGB", (40, 30), (200, 120, 40)).save(path)
    return path


def foreign(name: str):
    """A file of the user's at ``tmp/name``, which predict must not replace."""
    return lambda tmp: (an_image(tmp), (tmp / name).write_text(FOREIGN))


def untouched(name: str):
    def check(tmp: Path) -> None:
        assert (tmp / name).read_text() == FOREIGN

    return check


def no_file(name: str):
    def check(tmp: Path) -> None:
        assert not (tmp / name).exists()

    return check


def reasons_kept(tmp: Path) -> None:
    """The predictions file is written even when nothing was classified: it says why, file by file."""
    [entry] = json.loads((tmp / "p.json").read_text(encoding="utf-8"))["predictions"]
    assert entry["path"].endswith("x.jpg") and entry["error"].startswith("OSError") and entry["classes"] == []


def predict_in(tmp: Path, **kwargs: object) -> object:
    return predict(SOURCE, an_image(tmp), device="cpu", **kwargs)


C = Case
IMG = "{tmp}/a.png"
CASES = [
    # ---- options out of range, refused by the parser
    C("top-k-zero", 3, ["predict", SOURCE, IMG, "--top-k", "0"], r"--top-k.*whole number >= 1.*'0'",
      setup=an_image),
    C("top-k-negative", 3, ["predict", SOURCE, IMG, "--top-k", "-3"], r"--top-k.*whole number >= 1.*'-3'",
      setup=an_image),
    C("top-k-not-a-number", 3, ["predict", SOURCE, IMG, "--top-k", "five"], r"--top-k.*whole number",
      setup=an_image),
    C("batch-size-zero", 3, ["predict", SOURCE, IMG, "--batch-size", "0"], r"--batch-size.*>= 1", setup=an_image),
    C("tta-unknown", 3, ["predict", SOURCE, IMG, "--tta", "rotate"], r"--tta.*invalid choice.*mirror",
      setup=an_image),
    C("threads-zero", 3, ["predict", SOURCE, IMG, "--threads", "0"], r"--threads.*>= 1", setup=an_image),
    C("threads-too-many", 3, ["predict", SOURCE, IMG, "--threads", "100000"], r"threads must be.*cores",
      setup=an_image),
    C("device-unknown", 3, ["predict", SOURCE, IMG, "--device", "tpu"], r"device must be cpu, cuda",
      setup=an_image),
    C("no-images", 3, ["predict", SOURCE], r"required: IMAGE_OR_FOLDER"),
    # ---- the predictions file: only our own is replaced, checked before the model is loaded
    C("out-is-a-directory", 2, ["predict", SOURCE, IMG, "--out", "{tmp}/d.csv"], r"d\.csv is a directory",
      setup=lambda tmp: (an_image(tmp), (tmp / "d.csv").mkdir())),
    C("out-foreign-csv", 2, ["predict", SOURCE, IMG, "--out", "{tmp}/mine.csv"],
      r"mine\.csv exists and is not a predictions file.*--force", setup=foreign("mine.csv"),
      after=untouched("mine.csv")),
    C("out-foreign-json", 2, ["predict", SOURCE, IMG, "--out", "{tmp}/mine.json"],
      r"mine\.json exists and is not a predictions file", setup=foreign("mine.json"), after=untouched("mine.json")),
    C("out-foreign-before-loading", 2, ["predict", "{tmp}/no-run", IMG, "--out", "{tmp}/mine.csv"],
      r"mine\.csv exists and is not", setup=foreign("mine.csv"), after=untouched("mine.csv")),
    C("out-other-suffix", 3, ["predict", SOURCE, IMG, "--out", "{tmp}/p.txt"], r"p\.txt.*must end in \.csv or \.json",
      setup=an_image, after=no_file("p.txt")),
    C("out-folder-is-a-file", 2, ["predict", SOURCE, IMG, "--out", "{tmp}/mine.csv/p.csv"], r"mine\.csv is a file",
      setup=foreign("mine.csv"), after=untouched("mine.csv")),
    C("out-empty", 3, ["predict", SOURCE, IMG, "--out", ""], r"--out: must be a path; got ''", setup=an_image),
    # ---- models that cannot be loaded
    C("weights-missing", 3, ["predict", "{tmp}/no-run", IMG], r"no-run.*no such file or directory",
      setup=an_image),
    C("weights-name-unknown-tag", 3, ["predict", "resnet20:imagenet", IMG],
      r"no 'imagenet' weights for resnet20; known for it: fashion-mnist", setup=an_image),
    C("weights-name-unknown-model", 3, ["predict", "resnet21:fashion-mnist", IMG],
      r"no 'fashion-mnist' weights for resnet21: it has none; models with weights: .*resnet20", setup=an_image),
    C("run-without-weights", 9, ["predict", "{tmp}/run", IMG], r"run.*without best\.safetensors.*not a convnets run",
      setup=lambda tmp: (an_image(tmp), (tmp / "run").mkdir())),
    C("weights-not-safetensors", 9, ["predict", "{tmp}/w.safetensors", IMG], r"w\.safetensors",
      setup=lambda tmp: (an_image(tmp), (tmp / "w.safetensors").write_text("not weights"))),
    # ---- nothing to classify: the reasons are printed, then one error line
    C("image-missing", 4, ["predict", SOURCE, "{tmp}/gone.jpg"],
      r"none of the 1 inputs could be classified \(first: .*gone\.jpg: no such file or directory\)"),
    C("folder-of-non-images", 4, ["predict", SOURCE, "{tmp}/docs"],
      r"none of the 2 inputs could be classified.*not an image file \(extension \.md\)",
      setup=lambda tmp: ((tmp / "docs").mkdir(), (tmp / "docs" / "a.md").write_text("#"),
                         (tmp / "docs" / "b.txt").write_text("b"))),
    C("folder-empty", 4, ["predict", SOURCE, "{tmp}/empty"],
      r"none of the 1 inputs.*empty: no files in it \(images: .*\.jpg", setup=lambda tmp: (tmp / "empty").mkdir()),
    C("only-a-damaged-image", 4, ["predict", SOURCE, "{tmp}/x.jpg", "--out", "{tmp}/p.json"],
      r"none of the 1 inputs.*x\.jpg: OSError",
      setup=lambda tmp: (tmp / "x.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg"), after=reasons_kept),
    # ---- the Python API
    C("api-no-images", 3, call=lambda tmp: predict(SOURCE, [], device="cpu"), expect=r"at least one image"),
    C("api-image-of-a-wrong-type", 3, call=lambda tmp: predict(SOURCE, [an_image(tmp), 3], device="cpu"),
      expect=r"item 1 is int"),
    C("api-image-bytes", 3, call=lambda tmp: predict(SOURCE, [b"a.png"], device="cpu"), expect=r"item 0 is bytes"),
    C("api-image-raw-bytes", 3, call=lambda tmp: predict(SOURCE, an_image(tmp).read_bytes(), device="cpu"),
      expect=r"item 0 is bytes: give an image file's contents as io\.BytesIO\(data\)"),
    C("api-empty-path", 3, call=lambda tmp: predict(SOURCE, [""], device="cpu"), expect=r"item 0 is ''"),
    C("api-image-names-what-it-takes", 3, call=lambda tmp: predict(SOURCE, [{"a": 1}], device="cpu"),
      expect=r"images must be paths, folders, binary file objects, PIL images, tensors \(C, H, W\) or uint8 arrays "
             r"\(H, W, C\); item 0 is dict"),
    C("api-array-float", 3, call=lambda tmp: predict(SOURCE, np.zeros((8, 8, 3), np.float32), device="cpu"),
      expect=r"array image 0 is float32; give uint8 pixels"),
    C("api-array-batch", 3, call=lambda tmp: predict(SOURCE, np.zeros((2, 8, 8, 3), np.uint8), device="cpu"),
      expect=r"array image 0 has shape \(2, 8, 8, 3\)"),
    C("api-array-channels-first", 3, call=lambda tmp: predict(SOURCE, np.zeros((3, 8, 8), np.uint8), device="cpu"),
      expect=r"array image 0 has shape \(3, 8, 8\); give one image as \(H, W, C\)"),
    C("api-text-file-object", 3, call=lambda tmp: predict(SOURCE, io.StringIO("x"), device="cpu"),
      expect=r"file object 0 is open in text mode"),
    C("api-tensor-batch", 3, call=lambda tmp: predict(SOURCE, torch.zeros(2, 3, 8, 8), device="cpu"),
      expect=r"tensor image 0 has shape \(2, 3, 8, 8\)"),
    C("api-tensor-bool", 3, call=lambda tmp: predict(SOURCE, torch.zeros(3, 8, 8, dtype=torch.bool), device="cpu"),
      expect=r"tensor image 0 is torch\.bool"),
    C("api-top-k-zero", 3, call=lambda tmp: predict_in(tmp, top_k=0), expect=r"top_k must be a whole number >= 1"),
    C("api-top-k-float", 3, call=lambda tmp: predict_in(tmp, top_k=2.5), expect=r"top_k must be a whole number"),
    C("api-batch-size-bool", 3, call=lambda tmp: predict_in(tmp, batch_size=True), expect=r"batch_size"),
    C("api-views-unknown", 3, call=lambda tmp: predict_in(tmp, views="flip"), expect=r"views must be one of.*mirror"),
    C("api-bare-model-without-normalisation", 3,
      call=lambda tmp: predict(create_model("lenet5", num_classes=3), an_image(tmp), device="cpu"),
      expect=r"bare lenet5 model needs mean= and std="),
    C("api-bare-model-classes-miscounted", 3,
      call=lambda tmp: predict(create_model("lenet5", num_classes=3), an_image(tmp), classes=["a", "b"], mean=[0.5],
                               std=[0.5], device="cpu"),
      expect=r"2 class names for lenet5, which predicts 3 classes"),
    # A normalisation that cannot be applied was each image's "error" and the call returned as if it had worked.
    C("api-bare-model-std-zero", 3,
      call=lambda tmp: predict(create_model("lenet5"), an_image(tmp), mean=[0.5], std=[0], device="cpu"),
      expect=r"preprocessing std must be positive"),
    C("api-bare-model-mean-per-rgb-channel", 3,
      call=lambda tmp: predict(create_model("lenet5"), an_image(tmp), mean=[0.5] * 3, std=[0.5] * 3, device="cpu"),
      expect=r"preprocessing mean has 3 values for 1 channel"),
    # Features only: every image got an empty top-k, without a word.
    C("api-bare-model-without-classifier", 3,
      call=lambda tmp: predict(create_model("lenet5", num_classes=0), an_image(tmp), mean=[0.5], std=[0.5],
                               device="cpu"),
      expect=r"lenet5 has no classifier \(num_classes=0\): its outputs are features"),
    # A traceback from PyTorch ("Cannot copy out of meta tensor").
    C("api-bare-model-on-meta", 3,
      call=lambda tmp: predict(create_model("lenet5").to("meta"), an_image(tmp), mean=[0.5], std=[0.5], device="cpu"),
      expect=r"lenet5 is on the meta device"),
    C("api-model-of-a-wrong-type", 3, call=lambda tmp: predict(42, an_image(tmp), device="cpu"),
      expect=r"run directory or a weights file.*got 42"),
    C("api-write-over-a-foreign-file", 2, call=lambda tmp: write_predictions([], tmp / "mine.csv"),
      expect=r"mine\.csv exists and is not a predictions file", setup=foreign("mine.csv"), after=untouched("mine.csv")),
]


@pytest.mark.parametrize("case", params(CASES))
def test_bad_input(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    check_case(case, tmp_path, capsys)


def test_a_file_object_is_read_from_its_start_whatever_was_read_of_it_before(tmp_path: Path) -> None:
    """A BytesIO read to its end (or left part-way) is classified as a fresh one: Pillow seeks to 0."""
    data = an_image(tmp_path).read_bytes()
    used, part_way = io.BytesIO(data), io.BytesIO(data)
    used.read()
    part_way.seek(len(data) // 2)
    fresh, *others = predict(SOURCE, [io.BytesIO(data), used, part_way], device="cpu", top_k=10)
    assert fresh.ok and all(p.probabilities == fresh.probabilities for p in others)


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` RGB pixels and holds almost none (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_a_closed_file_is_reported_and_the_good_images_kept(tmp_path: Path) -> None:
    """A closed file object said 'ValueError: seek of closed file'; it now says what is wrong, and the rest are
    classified (a non-image stream, a decompression bomb's header and an empty file are reported too)."""
    good = an_image(tmp_path)
    with open(good, "rb") as closed:
        pass
    (tmp_path / "empty.png").write_bytes(b"")
    results = predict(SOURCE, [good, closed, io.BytesIO(b"not an image"), io.BytesIO(png_header(20000, 20000)),
                               tmp_path / "empty.png", good], device="cpu")
    assert [p.ok for p in results] == [True, False, False, False, False, True]
    assert results[1].error == "the file object is closed"
    assert results[2].error.startswith("UnidentifiedImageError")
    assert "DecompressionBomb" in results[3].error and results[4].error == "empty file (0 bytes)"
    assert results[5].probabilities == results[0].probabilities


def test_a_read_only_folder_for_out_is_refused_before_classifying(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import errno

    import convnets.cli.predict
    import convnets.weights.io
    from badinput import expect_cli_error

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    def no_prediction(*args: object, **kwargs: object) -> None:
        raise AssertionError("classified before --out was checked")

    an_image(tmp_path)
    monkeypatch.setattr(convnets.weights.io.tempfile, "TemporaryFile", read_only)
    monkeypatch.setattr(convnets.cli.predict, "predict", no_prediction)
    expect_cli_error(["predict", SOURCE, str(tmp_path / "a.png"), "--out", str(tmp_path / "p.csv")],
                     r"p\.csv: Read-only file system", capsys)


def test_a_file_name_with_a_newline_stays_on_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``name\\n.png`` printed its result over two lines, so one image read as two to a script parsing stdout; the
    terminal line escapes it, the predictions file keeps the name as it is."""
    from badinput import run_cli

    odd = tmp_path / "we ird \u200b$(x)\n.png"
    Image.new("RGB", (40, 30), (200, 120, 40)).save(odd)
    status, out, err = run_cli(["predict", SOURCE, str(odd), "--out", str(tmp_path / "p.json")], capsys)
    assert status == 0 and out.count("\n") == 1
    assert out.startswith(str(tmp_path / "we ird \\u200b$(x)\\n.png") + ": ")
    [entry] = json.loads((tmp_path / "p.json").read_text(encoding="utf-8"))["predictions"]
    assert entry["path"] == str(odd) and entry["error"] is None


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_a_name_that_is_not_utf8_is_written_not_a_traceback(tmp_path: Path, suffix: str, capsys) -> None:
    """An image (or class folder) named in Latin-1 by an old archive: writing the predictions file raised
    UnicodeEncodeError. JSON escapes the name (valid UTF-8, json.load gives it back); CSV keeps its bytes."""
    from badinput import run_cli

    odd = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9.png"))
    Image.new("RGB", (40, 30), (200, 120, 40)).save(odd)
    out = tmp_path / f"p{suffix}"
    for _ in range(2):  # and the file written is recognised as ours, to be replaced by the next run
        status, _, err = run_cli(["predict", SOURCE, str(odd), "--out", str(out)], capsys)
        assert status == 0, err
    if suffix == ".json":
        [entry] = json.loads(out.read_text(encoding="utf-8"))["predictions"]
        assert entry["path"] == str(odd) and entry["error"] is None
    else:
        assert b"/caf\xe9.png," in out.read_bytes()
