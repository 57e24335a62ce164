"""Transfer learning: new head, freezing (with BatchNorm kept in inference mode), cached features."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import convnets
from convnets.training import ConfigMismatchError, TrainConfig, train
from convnets.transfer import freeze, freeze_paths, parameter_groups, recommend
from convnets.weights import WeightsMismatchError, save_weights

# A tiny source run: resnet20 on the 8x8 digits (its minimum input is 4x4), then transferred.
BASE = dict(data="digits", batch_size=64, progress=False, device="cpu")


@pytest.fixture(scope="module")
def source_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("source") / "run"
    train(TrainConfig(model="resnet20", epochs=1, out=str(out), **BASE))
    return out / "last.safetensors"


def test_freeze_specs_name_a_prefix_of_the_network() -> None:
    model = convnets.create_model("resnet20")
    assert freeze_paths(model, "none") == []
    assert freeze_paths(model, "all-but-head") == ["stem", "stages"]
    assert freeze_paths(model, "2") == ["stem", "stages.0", "stages.1"]
    assert freeze_paths(model, "stages.0-1") == ["stem", "stages.0", "stages.1"]
    assert freeze_paths(model, "stem,stages.0") == ["stem", "stages.0"]
    with pytest.raises(ValueError, match="has no stages.7.*stages are stem, stages.0, stages.1, stages.2"):
        freeze_paths(model, "stages.7")
    with pytest.raises(ValueError, match="cannot freeze 4 stages: resnet20 has 3"):
        freeze_paths(model, "4")
    with pytest.raises(ValueError, match="starts at stages.0"):
        freeze_paths(model, "stages.1-2")


@pytest.mark.parametrize(("per_class", "expected"), [(10, "all-but-head"), (300, "2"), (5000, "none")])
def test_auto_freeze_follows_the_case_studies(per_class: int, expected: str) -> None:
    spec, reason = recommend(per_class, num_stages=4)
    assert spec == expected and str(per_class) in reason


def test_frozen_batchnorm_stays_in_inference_mode_and_keeps_its_statistics() -> None:
    model = convnets.create_model("resnet20", num_classes=3)
    freeze(model, "1")
    model.train()
    frozen_bn = model.stages[0][0].conv1.bn
    trained_bn = model.stages[1][0].conv1.bn
    assert not frozen_bn.training and trained_bn.training and model.head.training
    before = frozen_bn.running_mean.clone(), frozen_bn.running_var.clone(), frozen_bn.num_batches_tracked.clone()
    optimizer = torch.optim.SGD(parameter_groups(model, 0.1, 1e-4), lr=0.1)
    for _ in range(3):
        loss = model(torch.randn(8, 3, 32, 32)).logsumexp(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, (frozen_bn.running_mean, frozen_bn.running_var,
                                                           frozen_bn.num_batches_tracked), strict=True))
    assert trained_bn.num_batches_tracked.item() == 3
    assert all(p.grad is None for p in model.stem.parameters())


def test_optimizer_sees_only_trainable_parameters_and_scales_pretrained_ones() -> None:
    model = convnets.create_model("resnet20", num_classes=3)
    freeze(model, "2")
    groups = parameter_groups(model, lr=0.1, weight_decay=1e-4, pretrained_lr_scale=0.1)
    in_groups = {id(p) for g in groups for p in g["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert in_groups == trainable and trainable
    head = {id(p) for p in model.head.fc.parameters()}
    for g in groups:
        assert g["lr"] == (0.1 if {id(p) for p in g["params"]} <= head else pytest.approx(0.01))
        assert g["weight_decay"] == (1e-4 if g["params"][0].ndim > 1 else 0.0)


def test_transfer_with_cached_features_hits_the_cache_the_second_time(tmp_path, source_weights, capsys) -> None:
    cfg = dict(model="resnet20", weights=str(source_weights), freeze="all-but-head", cache_features=True,
               cache_dir=str(tmp_path / "cache"), epochs=3, lr=0.05, **BASE)
    first = train(TrainConfig(**cfg, out=str(tmp_path / "a")))
    out = capsys.readouterr().out
    assert "computed once and cached" in out and "frozen: stem, stages" in out
    second = train(TrainConfig(**cfg, out=str(tmp_path / "b")))
    assert "features read from" in capsys.readouterr().out
    assert second.test_accuracy == first.test_accuracy  # same features, same seed, same head
    assert len(list((tmp_path / "cache").iterdir())) == 1
    # A different transform (another input size) is another cache entry.
    train(TrainConfig(**{**cfg, "image_size": 12}, out=str(tmp_path / "c")))
    assert len(list((tmp_path / "cache").iterdir())) == 2
    # Only the head moved: the trunk equals the source weights.
    source = convnets.weights.read_state_dict(source_weights)
    tuned = first.model.state_dict()
    assert torch.equal(source["stem.conv.weight"], tuned["stem.conv.weight"].cpu())
    assert first.test_accuracy > 0.3


def test_fine_tuning_keeps_frozen_stages_and_replaces_the_head(tmp_path, source_weights, capsys) -> None:
    result = train(TrainConfig(model="resnet20", weights=str(source_weights), freeze="1", epochs=1,
                               out=str(tmp_path / "ft"), **BASE))
    assert "frozen: stem, stages.0" in capsys.readouterr().out
    source = convnets.weights.read_state_dict(source_weights)
    tuned = result.model.state_dict()
    assert torch.equal(source["stages.0.0.conv1.bn.running_mean"], tuned["stages.0.0.conv1.bn.running_mean"])
    assert not torch.equal(source["stages.2.0.conv1.conv.weight"], tuned["stages.2.0.conv1.conv.weight"])


def test_cache_features_needs_a_frozen_trunk(tmp_path, source_weights) -> None:
    with pytest.raises(ConfigMismatchError, match="--freeze all-but-head"):
        train(TrainConfig(model="resnet20", weights=str(source_weights), freeze="1", cache_features=True,
                          out=str(tmp_path / "x"), **BASE))


def test_weights_of_another_architecture_list_what_does_not_match(tmp_path: Path) -> None:
    path = tmp_path / "lenet.safetensors"
    save_weights(convnets.create_model("lenet5"), path)
    with pytest.raises(WeightsMismatchError, match=r"(?s)does not fit resnet20.*missing.*stem.conv.weight"):
        train(TrainConfig(model="resnet20", weights=str(path), out=str(tmp_path / "r"), **BASE))


def test_weights_for_other_classes_get_a_new_classifier_even_with_the_same_count(tmp_path, capsys) -> None:
    path = tmp_path / "other.safetensors"
    source = convnets.create_model("lenet5")
    save_weights(source, path, dict(model="lenet5", num_classes=10, in_chans=1, input_size=[1, 32, 32],
                                    mean=[0.3], std=[0.3], classes=[f"c{i}" for i in range(10)]))
    # A learning rate so small that one step leaves any head where it was: a changed head was replaced.
    result = train(TrainConfig(model="lenet5", weights=str(path), freeze="all-but-head", epochs=1, max_steps=1,
                               lr=1e-12, out=str(tmp_path / "run"), **BASE))
    assert "new classifier for the classes of digits" in capsys.readouterr().out
    assert torch.equal(source.stages[0].conv.weight,
                       result.model.stages[0].conv.weight.cpu())  # the trunk came from the file
    assert not torch.allclose(source.head.fc.weight, result.model.head.fc.weight.cpu(), atol=1e-3)
