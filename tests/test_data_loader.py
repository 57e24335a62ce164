"""Loader determinism, exact mid-epoch resume, distributed sharding, test-time views, the augment CLI."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from convnets.cli.options import parse_key_values
from convnets.data import (
    Augmenter,
    BatchLoader,
    TensorSplit,
    load_image_folder,
    make_loader,
    mirror_views,
    ten_crop_views,
    tta_views,
)


def _split(n: int = 50, c: int = 3, h: int = 12, w: int = 10) -> TensorSplit:
    g = torch.Generator().manual_seed(0)
    return TensorSplit(torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g), torch.arange(n) % 7)


def _loader(split: TensorSplit, **kwargs) -> BatchLoader:
    c = split.images.shape[1]
    defaults = {
        "batch_size": 8,
        "mean": (0.5,) * c,
        "std": (0.25,) * c,
        "augment": Augmenter("heavy", torch.eye(c) * 0.01),
    }
    return BatchLoader(split, **{**defaults, **kwargs})


def _epoch(loader: BatchLoader, epoch: int, start: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch, start_batch=start)
    return list(loader)


def _same(a, b) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b, strict=False)
    )


def test_batches_are_normalised_and_every_sample_appears_once():
    split = _split()
    loader = _loader(split, augment=None)
    batches = _epoch(loader, 0)
    assert len(batches) == len(loader) == 7 and [len(y) for _, y in batches][-1] == 2
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    # Without augmentation every image comes back exactly, normalised, with its own label.
    restored = (x * 0.25 + 0.5) * 255
    order = [
        int(torch.nonzero((split.images.float() - restored[i]).abs().flatten(1).max(1).values < 1e-3)[0])
        for i in range(50)
    ]
    assert sorted(order) == list(range(50)) and torch.equal(y, split.labels[order])


def test_cpu_thread_setting_is_restored_after_every_batch():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for _ in _loader(_split(), cpu_threads=1):
            assert torch.get_num_threads() == 2  # the training step between batches keeps its threads
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


def test_same_seed_same_batches_other_epoch_or_seed_differs():
    split = _split()
    a, b = _epoch(_loader(split, seed=3), 2), _epoch(_loader(split, seed=3), 2)
    assert _same(a, b)
    assert not _same(a, _epoch(_loader(split, seed=3), 3))
    assert not _same(a, _epoch(_loader(split, seed=4), 2))


@pytest.mark.parametrize("start", [0, 1, 4, 6, 7])
def test_resume_at_batch_k_yields_exactly_the_rest_of_the_epoch(start):
    split = _split()
    full = _epoch(_loader(split, seed=11), 5)
    fresh = _loader(split, seed=11)  # a new process after an interruption: nothing carried over but (seed, epoch, k)
    resumed = _epoch(fresh, 5, start)
    assert _same(resumed, full[start:])
    assert fresh.position == len(full)


def test_interrupted_iteration_reports_its_position_for_the_checkpoint():
    split = _split()
    loader = _loader(split, seed=1)
    loader.set_epoch(0)
    consumed = []
    for batch in loader:
        consumed.append(batch)
        if len(consumed) == 3:
            break
    assert loader.position == 3
    rest = _epoch(_loader(split, seed=1), 0, loader.position)
    assert _same(consumed + rest, _epoch(_loader(split, seed=1), 0))


def test_resume_on_an_image_folder_with_workers(tmp_path):
    for k, name in enumerate(["a", "b", "c"]):
        (tmp_path / "f" / name).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (10, 14), (40 * k + 5 * i, 80, 120)).save(tmp_path / "f" / name / f"{i}.png")
    data = load_image_folder(tmp_path / "f", image_size=(8, 6), val_fraction=0, num_workers=0)
    full = _epoch(make_loader(data, batch_size=4, augment="heavy", seed=2, num_workers=2), 1)
    resumed = _epoch(make_loader(data, batch_size=4, augment="heavy", seed=2, num_workers=0), 1, 3)
    assert len(full) == 5 and _same(resumed, full[3:])  # and the number of workers changes nothing


def test_no_more_decoding_processes_than_batches(tmp_path, monkeypatch):
    for k, name in enumerate(["a", "b", "c"]):
        (tmp_path / "f" / name).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (10, 14), (40 * k + 5 * i, 80, 120)).save(tmp_path / "f" / name / f"{i}.png")
    data = load_image_folder(tmp_path / "f", image_size=(8, 6), val_fraction=0, num_workers=0)
    started = []
    real = torch.utils.data.DataLoader

    def spy(*args, **kwargs):
        started.append(kwargs["num_workers"])
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.utils.data, "DataLoader", spy)
    many = _epoch(make_loader(data, batch_size=9, seed=2, num_workers=16), 0)  # 18 images: 2 batches
    tail = _epoch(make_loader(data, batch_size=9, seed=2, num_workers=16), 0, 1)  # resumed before the last one
    assert started == [2, 1]
    assert _same(many, _epoch(make_loader(data, batch_size=9, seed=2, num_workers=0), 0)) and _same(tail, many[1:])


@pytest.mark.parametrize(("n", "world", "drop_last"), [(50, 4, False), (50, 4, True), (48, 3, False)])
def test_distributed_shards_are_disjoint_and_cover_the_epoch(n, world, drop_last):
    split = _split(n)
    loaders = [
        _loader(split, rank=r, world_size=world, drop_last=drop_last, batch_size=5, seed=9) for r in range(world)
    ]
    for loader in loaders:
        loader.set_epoch(4)
    shards = [torch.cat(loader.batch_indices()) for loader in loaders]
    assert len({len(s) for s in shards}) == 1 and len({len(ld) for ld in loaders}) == 1
    everything = torch.cat(shards)
    if drop_last:
        assert len(set(everything.tolist())) == len(everything)  # disjoint, uneven tail dropped
        assert len(everything) >= n - world * 5 - world
    else:
        assert set(everything.tolist()) == set(range(n))  # every sample, a few repeated to even the shards
        assert len(everything) == -(-n // world) * world
    assert len(loaders[0]) == len(loaders[0].batch_indices())
    loaders[0].set_epoch(5)
    assert not torch.equal(torch.cat(loaders[0].batch_indices()), shards[0])  # set_epoch reshuffles


def test_evaluation_loader_keeps_order_and_is_unaugmented():
    split = _split(20)
    x, y = next(iter(_loader(split, augment=None, shuffle=False, batch_size=20)))
    assert torch.equal(y, split.labels) and torch.allclose((x * 0.25 + 0.5) * 255, split.images.float(), atol=1e-3)


def test_views_shapes_order_and_content():
    x = torch.arange(2 * 1 * 6 * 8, dtype=torch.float32).view(2, 1, 6, 8)
    assert tta_views(x, "identity").shape == (1, 2, 1, 6, 8)
    m = mirror_views(x)
    assert m.shape == (2, 2, 1, 6, 8) and torch.equal(m[1], x.flip(-1))
    v = ten_crop_views(x, (4, 6))
    assert v.shape == (10, 2, 1, 4, 6)
    assert torch.equal(v[0], x[..., 1:5, 1:7]) and torch.equal(v[1], x[..., :4, :6])
    assert torch.equal(v[4], x[..., 2:, 2:]) and torch.equal(v[5:], v[:5].flip(-1))
    padded = ten_crop_views(x, pad=2)
    assert padded.shape == (10, 2, 1, 6, 8) and torch.equal(padded[0], x) and padded[1, :, :, :2].abs().max() == 0
    filled = ten_crop_views(x.expand(-1, 2, -1, -1), pad=1, fill=[-1.0, 5.0])
    assert filled[1, :, 0, 0].eq(-1).all() and filled[1, :, 1, 0].eq(5).all()
    resized = ten_crop_views(x.to(torch.uint8), 4, resize_to=(6, 8))
    assert resized.shape == (10, 2, 1, 6, 8) and resized.dtype == torch.uint8
    logits = torch.randn(10 * 2, 5)
    assert logits.view(10, 2, -1).mean(0).shape == (2, 5)  # the documented way to average
    with pytest.raises(ValueError, match="larger than the images"):
        ten_crop_views(x, 7)
    with pytest.raises(ValueError, match="unknown test-time views"):
        tta_views(x, "twelve-crop")


def test_augment_cli_writes_a_grid(tmp_path, capsys):
    pytest.importorskip("sklearn")
    from convnets.cli import main

    out = tmp_path / "grid.png"
    args = ["augment", "--data", "digits", "--preset", "heavy", "--rows", "3", "--variants", "4", "--out", str(out)]
    assert main([*args, "--set", "hflip=0", "--set", "crop_scale=(0.6, 1)"]) == 0
    grid = Image.open(out)
    tile = 8 * 12  # 8x8 digits are enlarged to at least 96 px
    assert grid.size == (5 * (tile + 2) + 2, 3 * (tile + 2) + 2)
    assert "wrote" in capsys.readouterr().out
    assert main([*args, "--set", "spin=3"]) == 2
    assert "unknown augmentation settings" in capsys.readouterr().err
    assert parse_key_values(["rotate=20", "crop_scale=(0.3, 1)"], "--set") == {"rotate": 20, "crop_scale": (0.3, 1)}
