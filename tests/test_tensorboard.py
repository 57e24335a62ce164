"""TensorBoard logging, read back with TensorBoard's own event reader, and the most-confident-mistakes grid.

The bad inputs of both classes are in ``test_bad_input_tensorboard.py``.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from convnets.training.tensorboard import Mistakes, TensorBoardLog

CLASSES = [f"class{i}" for i in range(5)]


def read_events(log_dir):
    """TensorBoard's reader over ``log_dir``, every event kept (its default samples scalars and images)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def test_scalars_and_images_read_back_by_tensorboard(tmp_path):
    colour = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    grey = torch.arange(200, dtype=torch.uint8).reshape(20, 10, 1)
    with TensorBoardLog(tmp_path / "tb") as log:
        for step in range(5):
            log.step(step * 10, {"loss": 2.0 - step / 4, "lr": 0.1 * step, "images_per_s": 1000.0 + step})
        log.epoch(1, {"test_acc": 0.5, "train_loss": 1.25})
        log.epoch(2, {"test_acc": 0.75, "train_loss": 0.5})
        log.image("augmentation", colour, 0)
        log.image("mistakes", grey, 2)
    events = read_events(tmp_path / "tb")
    tags = events.Tags()
    assert sorted(tags["scalars"]) == ["epoch/test_acc", "epoch/train_loss", "train_step/images_per_s",
                                       "train_step/loss", "train_step/lr"]
    loss = events.Scalars("train_step/loss")
    assert [e.step for e in loss] == [0, 10, 20, 30, 40]
    assert [e.value for e in loss] == pytest.approx([2.0, 1.75, 1.5, 1.25, 1.0])
    assert [e.value for e in events.Scalars("train_step/lr")] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    acc = events.Scalars("epoch/test_acc")
    assert [(e.step, e.value) for e in acc] == [(1, 0.5), (2, 0.75)]
    assert sorted(tags["images"]) == ["augmentation", "mistakes"]
    (picture,) = events.Images("augmentation")
    assert (picture.step, picture.width, picture.height) == (0, 40, 30)
    # PNG is lossless: the very pixels come back
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(picture.encoded_image_string)).convert("RGB")), colour)
    (picture,) = events.Images("mistakes")
    assert (picture.step, picture.width, picture.height) == (2, 10, 20)
    pixels = np.asarray(Image.open(io.BytesIO(picture.encoded_image_string)).convert("L"))
    assert np.array_equal(pixels, grey[..., 0].numpy())


def test_epoch_is_on_disk_before_close(tmp_path):
    with TensorBoardLog(tmp_path) as log:
        log.epoch(1, {"test_acc": 0.25})
        assert [e.value for e in read_events(tmp_path).Scalars("epoch/test_acc")] == [0.25]


def test_close_twice_and_no_write_after_close(tmp_path):
    log = TensorBoardLog(tmp_path)
    log.close()
    log.close()
    with pytest.raises(RuntimeError, match="closed"):
        log.step(0, {"loss": 1.0})
    assert len(list(tmp_path.iterdir())) == 1  # one event file: writing after close did not start another


def test_tensor_scalar_values(tmp_path):
    with TensorBoardLog(tmp_path) as log:
        log.step(3, {"loss": torch.tensor(0.5), "grad_norm": np.float32(2.5)})
    events = read_events(tmp_path)
    assert [(e.step, e.value) for e in events.Scalars("train_step/loss")] == [(3, 0.5)]
    assert [e.value for e in events.Scalars("train_step/grad_norm")] == [2.5]


# ---- Mistakes


def batch_of(confidences, predicted, true, start):
    """A batch whose softmax gives exactly ``confidences`` for ``predicted``; image i is filled with its id.

    The id (``start`` + position, over 1000) identifies each image after denormalisation (mean 0, std 1).
    """
    n, classes = len(confidences), len(CLASSES)
    probs = torch.zeros(n, classes, dtype=torch.float64)
    for i, (c, p) in enumerate(zip(confidences, predicted, strict=True)):
        probs[i] = (1 - c) / (classes - 1)
        probs[i, p] = c
    logits = probs.log().float()
    ids = torch.arange(start, start + n, dtype=torch.float32) / 1000
    x = ids.reshape(n, 1, 1, 1).expand(n, 1, 4, 6).clone()
    return x, logits, torch.tensor(true)


def brute_force(batches, k):
    """Every wrong prediction of all batches, sorted by confidence, the top k: [(id, confidence, pred, true)]."""
    rows = []
    for x, logits, y in batches:
        probs = logits.softmax(1)
        for i in range(len(y)):
            predicted = int(probs[i].argmax())
            if predicted != int(y[i]):
                rows.append((round(float(x[i, 0, 0, 0]) * 1000), float(probs[i, predicted]), predicted, int(y[i])))
    return sorted(rows, key=lambda r: -r[1])[:k]


def kept_rows(mistakes):
    images, confidence, predicted, true = mistakes.kept()
    return [(round(float(img[0, 0, 0]) * 1000), float(c), int(p), int(t))
            for img, c, p, t in zip(images, confidence, predicted, true, strict=True)]


def random_batches(seed, sizes):
    g = torch.Generator().manual_seed(seed)
    batches, start = [], 0
    for n in sizes:
        confidences = (0.3 + 0.69 * torch.rand(n, generator=g, dtype=torch.float64)).tolist()  # distinct, > 1/5
        predicted = torch.randint(0, 5, (n,), generator=g).tolist()
        true = [p if torch.rand(1, generator=g) < 0.4 else (p + 1 + int(torch.randint(0, 4, (1,), generator=g))) % 5
                for p in predicted]
        batches.append(batch_of(confidences, predicted, true, start))
        start += n
    return batches


@pytest.mark.parametrize("k", [1, 3, 7, 40])
def test_keeps_the_k_most_confident_wrong_across_batches(k):
    # batches smaller and larger than k, and an empty one, so that both the per-batch top-k and the merge matter
    batches = random_batches(k, [9, 2, 0, 25, 1, 13])
    mistakes = Mistakes(k, CLASSES, [0.0], [1.0])
    for batch in batches:
        mistakes.update(*batch)
    expected = brute_force(batches, k)
    got = kept_rows(mistakes)
    assert [r[0] for r in got] == [r[0] for r in expected]  # the same images, in the same order
    assert [r[2:] for r in got] == [r[2:] for r in expected]
    assert [r[1] for r in got] == pytest.approx([r[1] for r in expected], abs=1e-6)
    assert len(mistakes) == len(expected)
    assert 0 < len(expected) == min(k, len(brute_force(batches, 1000)))
    if k == 40:
        assert len(expected) < k  # fewer wrong ones than k: all of them, and nothing right


def test_only_wrong_ones_even_when_fewer_than_k():
    # two wrong among right ones that are more confident: the right ones never count, however confident
    x, logits, y = batch_of([0.99, 0.4, 0.98, 0.6], [1, 2, 3, 4], [1, 0, 3, 0], start=0)
    mistakes = Mistakes(3, CLASSES, [0.0], [1.0])
    mistakes.update(x, logits, y)
    assert [(r[0], r[2], r[3]) for r in kept_rows(mistakes)] == [(3, 4, 0), (1, 2, 0)]


def test_all_correct_empty_batch_and_k_zero():
    x, logits, y = batch_of([0.9, 0.8], [1, 2], [1, 2], start=0)
    mistakes = Mistakes(4, CLASSES, [0.5], [0.25])
    mistakes.update(x, logits, y)
    mistakes.update(x[:0], logits[:0], y[:0])
    assert len(mistakes) == 0 and kept_rows(mistakes) == []
    picture = mistakes.grid()
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3 and picture.min() < 255

    nothing = Mistakes(0, CLASSES, [0.5], [0.25])
    nothing.update(*batch_of([0.9], [1], [0], start=0))
    assert len(nothing) == 0
    assert nothing.grid().shape[2] == 3


def test_non_finite_logits_are_not_mistakes():
    x, logits, y = batch_of([0.9, 0.7], [1, 2], [2, 0], start=0)
    logits[0, 3] = float("nan")
    mistakes = Mistakes(1, CLASSES, [0.0], [1.0])  # one place: a NaN ranked first would take it
    mistakes.update(x, logits, y)
    assert [r[0] for r in kept_rows(mistakes)] == [1]


def test_reset_forgets():
    mistakes = Mistakes(2, CLASSES, [0.0], [1.0])
    mistakes.update(*batch_of([0.9], [1], [0], start=0))
    mistakes.reset()
    mistakes.update(*batch_of([0.6], [2], [0], start=5))
    assert [r[0] for r in kept_rows(mistakes)] == [5]


def test_grid_shows_the_denormalised_images_with_captions():
    # 10 mistakes of 7x7 grey images, 8 per row: two rows of 98-pixel tiles (7 x 14 >= render_grid's 96)
    k, mean, std = 10, 0.5, 0.25
    confidences = [0.95 - i / 100 for i in range(k)]
    x, logits, y = batch_of(confidences, [1] * k, [0] * k, start=0)
    x = (torch.linspace(0, 1, k).reshape(k, 1, 1, 1).expand(k, 1, 7, 7) - mean) / std  # image i: grey level i/9
    mistakes = Mistakes(k, CLASSES, [mean], [std])
    mistakes.update(x, logits, y)
    picture = mistakes.grid()
    tile, gap = 98, 2
    assert picture.dtype == np.uint8 and picture.shape[2] == 3
    assert picture.shape[1] == 8 * (tile + gap) + gap
    caption = (picture.shape[0] - gap) // 2 - tile - gap
    assert 10 <= caption <= 60  # two lines of text under each row
    for i in range(k):
        row, column = divmod(i, 8)
        top, left = gap + row * (tile + gap + caption), gap + column * (tile + gap)
        block = picture[top:top + tile, left:left + tile]
        assert (block == round(i / 9 * 255)).all(), i  # the whole tile: this image, denormalised
        text = picture[top + tile + 1:top + tile + caption, left:left + tile]
        red = (text[..., 0] > 150) & (text[..., 1] < 100)
        assert red.any() and (text.min(-1) < 100).any()  # the red prediction line and the black true line


def test_grid_of_rgb_images_feeds_tensorboard(tmp_path):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, 12, 12, generator=g)
    logits = torch.randn(6, 5, generator=g) * 4
    y = (logits.argmax(1) + 1) % 5  # all wrong
    mistakes = Mistakes(4, CLASSES, [0.4, 0.5, 0.6], [0.2, 0.2, 0.2])
    mistakes.update(x, logits, y)
    with TensorBoardLog(tmp_path) as log:
        log.image("mistakes", mistakes.grid(), 1)
    (picture,) = read_events(tmp_path).Images("mistakes")
    assert picture.width == 4 * (96 + 2) + 2  # 12 x 8 = 96


def test_shipped_lenet5_on_fashion_mnist():
    # Real images and a real model (Fashion-MNIST: CI installs it): the same k as a sort of every wrong
    # prediction, and the grid's tiles are the dataset's own pixels, the normalisation undone exactly.
    import convnets
    from convnets.data.datasets import load_dataset

    model = convnets.create_model("lenet5", weights="fashion-mnist").eval()
    data = load_dataset("fashion-mnist", image_size=32)
    images, labels = data.test.images[:3000], data.test.labels[:3000]
    mean, std = torch.tensor(data.mean).reshape(1, -1, 1, 1), torch.tensor(data.std).reshape(1, -1, 1, 1)
    mistakes = Mistakes(8, data.classes, data.mean, data.std)
    batches = []
    with torch.inference_mode():
        for start in range(0, len(labels), 500):
            x = (images[start:start + 500].float() / 255 - mean) / std
            batches.append((x, model(x), labels[start:start + 500]))
            mistakes.update(*batches[-1])
    probs = torch.cat([logits for _, logits, _ in batches]).softmax(1)
    confidence, predicted = probs.max(1)
    wrong = (predicted != labels).nonzero().flatten()
    expected = wrong[confidence[wrong].argsort(descending=True)][:8]
    kept_images, kept_confidence, kept_predicted, kept_true = mistakes.kept()
    assert torch.equal(kept_true, labels[expected]) and torch.equal(kept_predicted, predicted[expected])
    assert torch.allclose(kept_confidence, confidence[expected])
    assert torch.equal((kept_images * 255).round().to(torch.uint8), images[expected])
    picture = mistakes.grid()
    tile = 96  # 32 x 3: render_grid's nearest-neighbour enlargement to at least 96
    first = picture[2:2 + tile:3, 2:2 + tile:3, 0]
    assert np.array_equal(first, images[expected[0], 0].numpy())
