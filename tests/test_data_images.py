"""Images decode faithfully (16-bit, float, EXIF orientation, real photos); files that cannot are skipped and named."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convnets.data import decode_image, load_dataset, load_image_folder, make_loader
from convnets.data.idx import write_idx

PHOTOS = Path(pytest.importorskip("sklearn.datasets").__file__).parent / "images"


def _decode_constant(path: Path, channels: int = 3) -> list[int]:
    """Decode a constant image at its own size; the distinct values it came out as."""
    with Image.open(path) as image:
        w, h = image.size
    return sorted(set(decode_image(path, (h, w), channels).flatten().tolist()))


# ------------------------------------------------------------------ bit depths


@pytest.mark.parametrize(("value", "expected"), [(0, 0), (25700, 100), (30000, 117), (65535, 255)])
def test_16bit_png_is_scaled_not_saturated(tmp_path, value, expected):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((6, 5), value, np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"  # what Pillow makes of a 16-bit grey PNG
    assert _decode_constant(path) == [expected]  # 30000 used to come out as 255 (white)
    assert _decode_constant(path, channels=1) == [expected]


def test_16bit_pgm_opened_as_mode_i_is_scaled(tmp_path):
    path = tmp_path / "deep.pgm"
    path.write_bytes(b"P5\n5 6\n65535\n" + np.full((6, 5), 30000, ">u2").tobytes())
    assert Image.open(path).mode == "I"
    assert _decode_constant(path) == [117]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ((0.25, 0.25), [64]),  # 0..1: x 255 (came out black before)
        ((0.0, 1.0), [0, 255]),
        ((100.0, 200.0), [100, 200]),  # 0..255: as it is
        ((-1.0, 3.0), [0, 255]),  # neither: stretched from its minimum to its maximum
    ],
)
def test_float_tiff_scaling(tmp_path, values, expected):
    array = np.full((6, 8), values[0], np.float32)
    array[:, 4:] = values[1]
    path = tmp_path / "float.tif"
    Image.fromarray(array).save(path)
    assert Image.open(path).mode == "F"
    assert _decode_constant(path) == expected


# ------------------------------------------------------------------ orientation and real photos


def _with_orientation(image: Image.Image, path: Path, orientation: int) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, quality=95, exif=exif)
    return path


def test_exif_orientation_stands_a_phone_photo_up(tmp_path):
    stored = np.zeros((20, 40), np.uint8)
    stored[:, 20:] = 255  # stored landscape: left half black, right half white
    path = _with_orientation(Image.fromarray(stored).convert("RGB"), tmp_path / "phone.jpg", 6)
    # Orientation 6: the viewer turns it 90 degrees clockwise, so it stands 20 wide and 40 tall, black on top.
    image = decode_image(path, (40, 20), 1)[0].float()
    assert image[:18].mean() < 10 and image[22:].mean() > 245


def test_a_damaged_exif_block_still_decodes_and_turns(tmp_path):
    """An EXIF entry whose tag was damaged into ImageWidth holding text made Pillow's exif_transpose fail
    (struct.error) as it rewrote the block: a decodable photo was lost."""
    stored = np.zeros((20, 40), np.uint8)
    stored[:, 20:] = 255
    exif = Image.Exif()
    exif[0x0112], exif[0x010F], exif[0x0110] = 6, "Camera", "Model X"  # orientation, camera make and model
    path = tmp_path / "damaged.jpg"
    Image.fromarray(stored).convert("RGB").save(path, quality=95, exif=exif)
    data = path.read_bytes()
    entry = data.index(b"\x01\x0f\x00\x02")  # big-endian tag 0x010f (make), type 2 (ASCII)
    path.write_bytes(data[: entry + 1] + b"\x00" + data[entry + 2 :])  # now tag 0x0100, ImageWidth, as text
    image = decode_image(path, (40, 20), 1)[0].float()
    assert image[:18].mean() < 10 and image[22:].mean() > 245


def test_real_photos_decode_exactly_and_turn_with_exif(tmp_path):
    from sklearn.datasets import load_sample_image

    china = load_sample_image("china.jpg")  # (427, 640, 3), decoded by Pillow
    decoded = decode_image(PHOTOS / "china.jpg", china.shape[:2])
    assert torch.equal(decoded, torch.from_numpy(china.copy()).permute(2, 0, 1))
    turned = _with_orientation(Image.open(PHOTOS / "china.jpg"), tmp_path / "turned.jpg", 6)
    upright = decode_image(turned, (640, 427)).permute(1, 2, 0).float()
    error = (upright - torch.from_numpy(np.rot90(china, k=-1).copy()).float()).abs().mean()
    assert error < 3  # the same photo turned clockwise, within JPEG re-encoding


@pytest.mark.parametrize(("size", "channels"), [((32, 32), 3), ((28, 28), 1), ((224, 224), 3), ((96, 160), 1)])
def test_a_photo_decodes_alike_from_its_file_and_from_its_pixels(size, channels):
    """One rule for every source: the JPEG file, the Pillow image of it, and load_sample_image's array.

    Reduced-scale JPEG decoding (Pillow's draft), which only a file allows, made the file differ from its
    pixels by up to 65/255 (flower.jpg at 32x32).
    """
    from sklearn.datasets import load_sample_image

    for name in ("china.jpg", "flower.jpg"):
        from_file = decode_image(PHOTOS / name, size, channels)
        with Image.open(PHOTOS / name) as opened:
            assert torch.equal(decode_image(opened, size, channels), from_file), name
        assert torch.equal(decode_image(Image.fromarray(load_sample_image(name)), size, channels), from_file), name
        with open(PHOTOS / name, "rb") as f:
            assert torch.equal(decode_image(f, size, channels), from_file), name


def test_a_pil_image_keeps_its_exif_orientation_like_its_file(tmp_path):
    turned = _with_orientation(Image.open(PHOTOS / "china.jpg"), tmp_path / "turned.jpg", 6)
    with Image.open(turned) as opened:
        assert torch.equal(decode_image(opened, (64, 48)), decode_image(turned, (64, 48)))


def test_folder_of_real_photos_loads_and_trains_through(tmp_path):
    for name in ("china", "flower"):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(3):
            shutil.copy(PHOTOS / f"{name}.jpg", tmp_path / "photos" / name / f"{i}.jpg")
    data = load_dataset(tmp_path / "photos", image_size=32, num_workers=0)
    assert data.classes == ["china", "flower"] and (len(data.train), len(data.test)) == (4, 2)
    seen = sum(len(y) for _, y in make_loader(data, batch_size=4, augment="standard", num_workers=0))
    assert seen == 4 and len(data.bad_files) == 0
    from convnets.cli import main  # the photos in the augment grid, decoded at --image-size (x2 to 128 px tiles)

    out = tmp_path / "grid.jpg"
    assert main(["augment", "--data", str(tmp_path / "photos"), "--rows", "2", "--variants", "1",
                 "--image-size", "64", "--out", str(out)]) == 0
    with Image.open(out) as grid:
        assert grid.format == "JPEG" and grid.size == (2 * 130 + 2, 2 * 130 + 2)


# ------------------------------------------------------------------ files that cannot be decoded


def _folder(root: Path, classes=("cat", "dog"), per_class: int = 3, size=(10, 10)) -> Path:
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", size, (60 * (k + 1),) * 3).save(root / name / f"{i}.png")
    return root


def test_decompression_bombs_are_skipped_and_named(tmp_path, monkeypatch):
    root = _folder(tmp_path / "d", per_class=4)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a 10x10 image is fine, these are "bombs"
    Image.new("RGB", (40, 30)).save(root / "cat" / "warns.png")  # 1,200 pixels: Pillow only warns
    Image.new("RGB", (50, 50)).save(root / "dog" / "fails.png")  # 2,500: over twice the limit, Pillow refuses
    data = load_image_folder(root, image_size=8, val_fraction=0, num_workers=0)
    assert sum(len(y) for _, y in make_loader(data, batch_size=3, num_workers=0)) == 8
    reasons = {Path(p).name: r for p, r in data.bad_files}
    assert reasons["warns.png"].startswith("DecompressionBombWarning")
    assert reasons["fails.png"].startswith("DecompressionBombError")


def test_bad_files_of_the_held_out_split_are_in_the_one_log(tmp_path):
    _folder(tmp_path / "d" / "train")
    val = _folder(tmp_path / "d" / "val", per_class=2)
    (val / "dog" / "garbage.png").write_bytes(b"\x89PNG not really")
    (val / "cat" / "cut.png").write_bytes((val / "cat" / "0.png").read_bytes()[:40])
    data = load_dataset(tmp_path / "d", image_size=8, num_workers=0)
    test = make_loader(data, "test", batch_size=2, num_workers=0)
    assert sum(len(y) for _, y in test) == 4  # the epoch went through; the two broken files were left out
    assert {Path(p).name for p, _ in data.bad_files} == {"garbage.png", "cut.png"}
    written = data.bad_files.write(tmp_path / "run").read_text()
    assert "garbage.png\tUnidentifiedImageError" in written and "cut.png\t" in written
    assert data.bad_files.summary() == "2 bad files skipped (see bad_files.tsv)"


def test_a_tiff_whose_strip_offset_is_a_fraction_is_skipped_not_a_crash(tmp_path):
    """Pillow raises TypeError on this damage: it used to escape the loader and end the epoch."""
    root = _folder(tmp_path / "d", per_class=3)
    path = root / "dog" / "odd.tif"
    Image.new("RGB", (8, 6)).save(path)
    data = path.read_bytes()
    entry = data.index(b"\x11\x01\x04\x00")  # little-endian tag 273 (StripOffsets), type 4 (LONG)
    path.write_bytes(data[: entry + 2] + b"\x05" + data[entry + 3 :])  # now type 5, RATIONAL
    data = load_image_folder(root, image_size=8, val_fraction=0, num_workers=0)
    assert sum(len(y) for _, y in make_loader(data, batch_size=4, num_workers=0)) == 6
    assert dict(data.bad_files.items)[str(path)].startswith("TypeError")


def test_broken_links_are_recorded(tmp_path):
    root = _folder(tmp_path / "d")
    (root / "cat" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    data = load_image_folder(root, image_size=8, num_workers=0)
    assert dict(data.bad_files.items) == {str(root / "cat" / "gone.png"): "broken link"}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_pipes_are_recorded_not_read(tmp_path):
    root = _folder(tmp_path / "d")
    os.mkfifo(root / "cat" / "pipe.png")  # nobody writes it: opening it would wait for ever
    (root / "cat" / "up").symlink_to(root, target_is_directory=True)  # a link to a folder: neither read nor listed
    data = load_image_folder(root, image_size=8, num_workers=0)
    assert dict(data.bad_files.items) == {str(root / "cat" / "pipe.png"): "not a regular file (a pipe, socket or "
                                          "device)"}


def test_a_class_of_unreadable_files_is_named_with_each_file(tmp_path):
    root = _folder(tmp_path / "d")
    for i, content in enumerate([b"", b"GIF89a broken", b"\xff\xd8\xff\xe0 not a jpeg"]):
        (root / "owl").mkdir(exist_ok=True)
        (root / "owl" / f"{i}.jpg").write_bytes(content)
    message = r"class folder .*owl: none of its 2 image files can be decoded \(e\.g\. 1\.jpg: UnidentifiedImageError"
    with pytest.raises(ValueError, match=message):
        load_image_folder(root, image_size=8, num_workers=0)


# ------------------------------------------------------------------ labels


def _idx_dir(root: Path, train_labels: list[int], test_labels: list[int]) -> Path:
    root.mkdir(parents=True)
    for split, labels in (("train", train_labels), ("t10k", test_labels)):
        write_idx(root / f"{split}-images-idx3-ubyte", np.zeros((len(labels), 4, 4), np.uint8))
        write_idx(root / f"{split}-labels-idx1-ubyte", np.array(labels, np.uint8))
    return root


def test_a_small_hole_in_idx_labels_is_a_warning_naming_it(tmp_path, caplog):
    """EMNIST letters number their classes 1..26: label 0 has no image. That loads, with a warning."""
    root = _idx_dir(tmp_path / "letters", [1, 2, 3, 1, 2, 3], [1, 2, 3])
    with caplog.at_level(logging.WARNING, logger="convnets.data"):
        data = load_dataset(root)
    assert data.classes == ["0", "1", "2", "3"]
    assert "1 of 4 classes have no training images (0)" in caplog.text


def test_a_stray_idx_label_is_refused_naming_it_and_its_count(tmp_path):
    root = _idx_dir(tmp_path / "m", list(range(10)) * 3 + [255], list(range(10)))
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte: label 255 \(1 image\) lies far beyond the others "
                                         r"\(0\.\.9\) and would make a 256-way classifier"):
        load_dataset(root)


def test_a_file_name_that_is_not_utf8_is_reported_as_its_bytes(tmp_path):
    root = _folder(tmp_path / "d")
    name = os.fsdecode(b"caf\xe9.jpg")  # a Latin-1 name, as old archives hold
    (root / "cat" / name).write_bytes(b"")
    data = load_image_folder(root, image_size=8, num_workers=0)
    written = data.bad_files.write(tmp_path / "run").read_bytes()
    assert b"caf\xe9.jpg\tempty file" in written


def test_an_image_already_in_the_wanted_mode_is_not_copied():
    # convert() to the same mode copies: a second full-size image while a large photo's is held
    # (peak RSS of decode_image on a 6000x4000 JPEG: 187 MiB over the imports before, 96 MiB after).
    from convnets.data.images import to_mode

    rgb, grey = Image.new("RGB", (6, 4), (10, 20, 30)), Image.new("L", (6, 4), 7)
    assert to_mode(rgb, 3) is rgb and to_mode(grey, 1) is grey
    assert to_mode(rgb, 1).mode == "L" and to_mode(grey, 3).mode == "RGB"


def test_the_default_size_is_the_folders_not_its_first_files(tmp_path):
    """A 1x1 tracking pixel sorted first set the size of the whole folder: photos trained at 1x1."""
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for i in range(6):
            Image.new("RGB", (40, 30), (30 * i, 0, 0)).save(tmp_path / name / f"{i}.png")
    Image.new("RGB", (1, 1)).save(tmp_path / "cat" / "!pixel.png")
    Image.new("RGB", (4000, 8)).save(tmp_path / "cat" / "!banner.png")
    assert load_image_folder(tmp_path, num_workers=0).image_size == (30, 30)
