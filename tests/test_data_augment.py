"""Augmentations: PCA colour, geometric transforms on non-square images, per-image randomness, seeding."""

from __future__ import annotations

import math

import pytest
import torch

from convnets.data import AugmentConfig, Augmenter, get_preset, pca_basis, pca_color_shift
from convnets.data.augment import PRESETS, flip_shift, smooth_noise, warp

COV = torch.tensor([[0.06, 0.05, 0.04], [0.05, 0.06, 0.05], [0.04, 0.05, 0.07]])


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_pca_alpha_zero_is_identity_and_shift_lies_along_eigenvectors():
    eigvals, eigvecs = pca_basis(COV)
    assert torch.allclose(eigvecs @ torch.diag(eigvals) @ eigvecs.T, COV, atol=1e-6)
    x = torch.rand(4, 3, 5, 7) * 0.5 + 0.25
    assert torch.equal(pca_color_shift(x, eigvals, eigvecs, torch.zeros(4, 3)), x)
    for k in range(3):
        alpha = torch.zeros(4, 3)
        alpha[:, k] = torch.tensor([0.1, -0.2, 0.3, 1.0])
        delta = pca_color_shift(x, eigvals, eigvecs, alpha) - x
        assert torch.allclose(delta, delta[:, :, :1, :1].expand_as(delta), atol=1e-6)  # same shift for every pixel
        shift = delta[:, :, 0, 0]
        # Parallel to eigenvector k, with length |alpha| * sqrt(eigenvalue k).
        expected = alpha[:, k : k + 1] * eigvals[k].sqrt() * eigvecs[:, k]
        assert torch.allclose(shift, expected, atol=1e-6)
        others = [j for j in range(3) if j != k]
        assert (shift @ eigvecs[:, others]).abs().max() < 1e-6


def test_pca_in_the_augmenter_changes_colour_per_image():
    images = torch.full((64, 3, 4, 4), 128, dtype=torch.uint8)
    out = Augmenter(AugmentConfig(pca_std=0.5), COV)(images, _gen())
    shifts = out[:, :, 0, 0] - 128 / 255
    eigvals, eigvecs = pca_basis(COV)
    coeffs = shifts @ eigvecs / eigvals.sqrt()  # recovers the alphas: they should look like N(0, 0.5)
    assert 0.3 < coeffs.std().item() < 0.7 and len(torch.unique(shifts[:, 0])) == 64


GEOMETRIC = {
    "hflip": AugmentConfig(hflip=1.0),
    "vflip": AugmentConfig(vflip=1.0),
    "pad_crop": AugmentConfig(pad_crop=0.25),
    "resized_crop": AugmentConfig(crop_scale=(0.3, 0.6)),
    "rotate": AugmentConfig(rotate=30),
    "shear": AugmentConfig(shear=20),
    "elastic": AugmentConfig(elastic_alpha=1.0, elastic_sigma=0.15),
    "heavy": PRESETS["heavy"],
}


@pytest.mark.parametrize("name", list(GEOMETRIC))
def test_geometric_transforms_keep_shape_on_non_square_images(name):
    torch.manual_seed(1)
    images = torch.randint(0, 256, (6, 3, 20, 33), dtype=torch.uint8)
    cov = torch.eye(3) * 0.01
    out = Augmenter(GEOMETRIC[name], cov)(images, _gen())
    assert out.shape == images.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, images.float() / 255)  # it did something to every batch


def test_flip_shift_matches_pad_then_crop():
    images = torch.arange(2 * 1 * 5 * 7, dtype=torch.uint8).view(2, 1, 5, 7)
    dx, dy = torch.tensor([2, -1]), torch.tensor([-2, 1])
    hflip, vflip = torch.tensor([False, True]), torch.tensor([True, False])
    out = flip_shift(images, dx, dy, hflip, vflip)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(2):
        src = padded[i]
        if hflip[i]:
            src = torch.nn.functional.pad(images[i].flip(-1), (2, 2, 2, 2))
        if vflip[i]:
            src = torch.nn.functional.pad(images[i].flip(-2), (2, 2, 2, 2))
        top, left = 2 + int(dy[i]), 2 + int(dx[i])
        assert torch.equal(out[i], src[:, top : top + 5, left : left + 7])


def _rotation(deg: float, n: int = 1) -> torch.Tensor:
    a = math.radians(deg)
    return torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]]).repeat(n, 1, 1)


def test_warp_identity_half_turn_and_quarter_turn():
    x = torch.rand(2, 3, 6, 9)
    assert torch.allclose(warp(x, _rotation(0, 2)), x, atol=1e-5)
    assert torch.allclose(warp(x, _rotation(180, 2)), x.flip(-1).flip(-2), atol=1e-5)
    sq = torch.rand(1, 1, 8, 8)
    quarter = warp(sq, _rotation(90))
    assert torch.allclose(quarter, torch.rot90(sq, 1, (-2, -1)), atol=1e-5) or torch.allclose(
        quarter, torch.rot90(sq, -1, (-2, -1)), atol=1e-5
    )


def test_rotation_is_a_true_rotation_on_non_square_images():
    """A square blob rotated 90 degrees in a 20x40 image stays a 4x4 square, moved around the centre."""
    x = torch.zeros(1, 1, 20, 40)
    x[0, 0, 8:12, 24:28] = 1  # centre offset (+6, 0) pixels from the image centre (20, 10)
    out = warp(x, _rotation(90))
    rows, cols = torch.nonzero(out[0, 0] > 0.5, as_tuple=True)
    assert rows.max() - rows.min() == 3 and cols.max() - cols.min() == 3
    assert cols.float().mean().item() == pytest.approx(19.5) and abs(rows.float().mean().item() - 9.5) == 6


def test_geometric_transforms_keep_labels_through_the_loader():
    """Each image is a constant equal to 40*(label+1); after mirroring, cropping, rotating and warping the
    brightest pixel of every output still equals its own label's value."""
    from convnets.data import BatchLoader, TensorSplit

    labels = torch.arange(60) % 5
    images = (40 * (labels + 1)).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 16, 24).contiguous()
    aug = Augmenter(get_preset("heavy", color_shift=0, pca_std=0))
    loader = BatchLoader(TensorSplit(images, labels), batch_size=16, mean=(0, 0, 0), std=(1, 1, 1), augment=aug)
    for x, y in loader:
        assert x.shape[1:] == (3, 16, 24)
        brightest = x.flatten(1).max(1).values * 255
        assert torch.allclose(brightest, 40 * (y + 1).float(), atol=1.0)


def test_randomness_is_per_image_and_seeded():
    images = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8).expand(32, -1, -1, -1).contiguous()
    aug = Augmenter("heavy", COV)
    a, b, c = aug(images, _gen(7)), aug(images, _gen(7)), aug(images, _gen(8))
    assert torch.equal(a, b)  # same seed, same batch
    assert not torch.equal(a, c)
    distinct = {tuple(row.tolist()) for row in a.flatten(1)[:, ::17]}
    assert len(distinct) == 32  # 32 copies of one image, 32 different results


def test_color_shift_offsets_are_per_channel_and_bounded():
    images = torch.full((200, 3, 2, 2), 128, dtype=torch.uint8)
    out = Augmenter(AugmentConfig(color_shift=20))(images, _gen())
    offsets = out[:, :, 0, 0] * 255 - 128
    assert offsets.abs().max() <= 20 + 1e-3 and offsets.abs().max() > 18
    assert (offsets[:, 0] - offsets[:, 1]).abs().max() > 5  # channels shift independently


def test_smooth_noise_is_smooth_and_presets_validate():
    field = smooth_noise(4, 32, 40, 4.0, _gen(), torch.device("cpu"))
    assert field.shape == (4, 2, 32, 40)
    neighbour = (field[..., 1:] - field[..., :-1]).abs().mean()
    assert neighbour < 0.25 * field.abs().mean()  # smoothed: neighbours are close
    with pytest.raises(ValueError, match="unknown augmentation preset"):
        get_preset("extreme")
    with pytest.raises(ValueError, match="unknown augmentation settings"):
        get_preset("light", spin=3)
    with pytest.raises(ValueError, match="pixel covariance"):
        Augmenter("standard")
    assert get_preset("standard", hflip=0).hflip == 0 and get_preset("standard").hflip == 0.5


@pytest.mark.parametrize("preset", ["none", "standard", "heavy"])
def test_fused_normalisation_equals_normalising_afterwards(preset):
    images = torch.randint(0, 256, (8, 3, 10, 14), dtype=torch.uint8)
    aug = Augmenter(preset, COV)
    mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.25, 0.3])
    plain = aug(images, _gen(3))
    fused = aug(images, _gen(3), mean, std)
    assert torch.allclose(fused, (plain - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1), atol=1e-5)
