"""Export to ONNX (checked against PyTorch), int8 quantization, latency, and fitting a network to a device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import convnets
from convnets import export, fit
from convnets.cli import main as cli_main
from convnets.export import ExportMismatchError, export_onnx, quantize_int8, run_onnx, session
from convnets.training import TrainConfig, train


def test_export_matches_pytorch_and_leaves_the_model_untouched(tmp_path: Path) -> None:
    model = convnets.create_model("resnet20", num_classes=7).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(5, 3, 32, 32)
    result = export_onnx(model, tmp_path / "r.onnx", x)
    assert result.max_abs_diff < 1e-4
    assert model.training  # still in the mode it was given in
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN statistics untouched
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(run_onnx(session(result.path), x[:3]), model(x[:3]), atol=1e-4, rtol=1e-4)


def test_an_export_that_differs_from_pytorch_fails_loudly(tmp_path: Path, monkeypatch) -> None:
    real = export.run_onnx
    monkeypatch.setattr(export, "run_onnx", lambda sess, x: real(sess, x) + 0.5)
    with pytest.raises(ExportMismatchError, match=r"differs from PyTorch by 0.5"):
        export_onnx(convnets.create_model("lenet5"), tmp_path / "l.onnx", torch.randn(2, 1, 32, 32))


def test_int8_model_runs_and_stays_close(tmp_path: Path) -> None:
    model = convnets.create_model("resnet20").eval()
    x = torch.randn(64, 3, 32, 32)
    fp32 = export_onnx(model, tmp_path / "r.onnx", x[:4]).path
    int8 = quantize_int8(fp32, tmp_path / "r8.onnx", x)
    out8, out32 = run_onnx(session(int8), x[:16]), run_onnx(session(fp32), x[:16])
    assert out8.shape == (16, 10)
    # int8 error is bounded by the quantization step, small relative to the spread of the logits.
    assert (out8 - out32).abs().mean() < 0.2 * out32.std()
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size


def test_latency_is_a_median_in_milliseconds() -> None:
    calls = []
    ms = export.median_latency_ms(lambda: calls.append(1), repeats=7, warmup=2)
    assert len(calls) == 9 and 0 <= ms < 50


def test_fit_device_picks_the_largest_candidate_within_budget(monkeypatch) -> None:
    # Latency proportional to MACs (1 ms per 10M), so the pick is known without timing anything.
    def fake_latency(model, x, **kw):
        return convnets.count(model, tuple(x.shape[1:])).macs / 1e7

    monkeypatch.setattr(fit, "torch_latency_ms", fake_latency)
    pick, table = fit.fit_device("mobilenet_v1", latency_ms=20.0)
    assert pick is not None and pick.latency_ms <= 20.0
    assert all(c.latency_ms > 20.0 or c.macs <= pick.macs for c in table)
    assert pick.label == "width=1 res=128"  # 186M MACs (18.6 ms); the next larger, 0.75 at 192, has 239M
    none, table = fit.fit_device("efficientnet", latency_ms=1.0)
    assert none is None and len(table) == 2  # stops after two candidates far over budget


def test_fit_device_cli_says_when_nothing_fits(monkeypatch, capsys) -> None:
    monkeypatch.setattr(fit, "torch_latency_ms", lambda model, x, **kw: 1000.0)
    assert cli_main(["fit-device", "--family", "mobilenet_v2", "--latency-ms", "5"]) == 1
    out = capsys.readouterr().out
    assert "no candidate meets 5 ms; the fastest is" in out


@pytest.mark.slow
def test_cli_export_with_int8_reports_the_accuracy_change(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    train(TrainConfig(model="lenet5", data="digits", image_size=32, batch_size=64, epochs=2, progress=False,
                      out=str(run)))
    assert cli_main(["export", str(run), "--int8", "--calibration-images", "128"]) == 0
    out = capsys.readouterr().out
    assert "max |ONNX - PyTorch|" in out and "int8 changes test accuracy by" in out
    assert (run / "export" / "lenet5.onnx").exists() and (run / "export" / "lenet5.int8.onnx").exists()


def test_a_run_whose_training_data_is_not_here_exports_on_random_inputs(tmp_path: Path, capsys) -> None:
    # The deploy machine seldom has the training images: the export was refused ("unknown dataset").
    from PIL import Image

    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / "imgs" / split / c).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (16, 16), (80 * i, 200 if c == "a" else 0, 0)).save(tmp_path / "imgs" / split / c
                                                                                     / f"{i}.png")
    run = tmp_path / "run"
    train(TrainConfig(model="lenet5", data=str(tmp_path / "imgs"), image_size=32, epochs=1, progress=False,
                      out=str(run)))
    (tmp_path / "imgs").rename(tmp_path / "elsewhere")
    assert cli_main(["export", str(run), "--out", str(tmp_path / "x")]) == 0
    out = capsys.readouterr().out
    assert "which is not found from here" in out and "on 8 random inputs" in out
    assert "accuracy: - (the test data was not found)" in out
    # int8 needs its calibration images: refused before anything is written
    assert cli_main(["export", str(run), "--out", str(tmp_path / "y"), "--int8"]) == 2
    assert "--int8 calibrates on its training images; pass --data" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


def test_export_without_onnx_says_what_to_install(tmp_path: Path, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "onnx", None)  # as if onnx were not installed
    with pytest.raises(ModuleNotFoundError, match=r"onnx is missing.*convnets\[deploy\]"):
        export_onnx(convnets.create_model("lenet5"), tmp_path / "l.onnx", torch.randn(1, 1, 32, 32))


def test_cli_export_of_a_registered_name_prints_its_table(tmp_path: Path, capsys) -> None:
    """`convnets export lenet5`, as documented: random weights, no data, so no accuracy (it crashed printing '-')."""
    assert cli_main(["export", "lenet5", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "on 8 random inputs" in out
    assert any(line.startswith("ONNX Runtime fp32") and line.rstrip().endswith("-") for line in out.splitlines())
    assert "accuracy: - (a registered name has random weights and no test data)" in out
    assert [p.name for p in tmp_path.iterdir()] == ["lenet5.onnx"]
    assert run_onnx(session(tmp_path / "lenet5.onnx"), torch.randn(3, 1, 32, 32)).shape == (3, 10)


def test_the_export_check_of_random_weights_compares_outputs_that_depend_on_the_input(tmp_path: Path) -> None:
    # A freshly built MobileNet's BatchNorm statistics (mean 0, variance 1) let the signal die out: its outputs were
    # the classifier's bias, equal for every input, and the check against PyTorch compared constants.
    assert cli_main(["export", "mobilenet_v1_025", "--out", str(tmp_path)]) == 0
    out = run_onnx(session(tmp_path / "mobilenet_v1_025.onnx"), torch.randn(4, 3, 224, 224))
    assert (out - out[0]).abs().max() > 100 * 1e-3  # the spread over inputs, beside the check's tolerance


def test_an_export_replaces_only_its_own_earlier_file(tmp_path: Path) -> None:
    import onnx

    from convnets.errors import RunDirectoryError

    target = tmp_path / "lenet5.onnx"
    export_onnx(convnets.create_model("lenet5"), target, torch.randn(2, 1, 32, 32))
    props = {p.key: p.value for p in onnx.load(str(target)).metadata_props}
    assert props["convnets"] == convnets.__version__  # marked as ours...
    export_onnx(convnets.create_model("lenet5", num_classes=3), target, torch.randn(2, 1, 32, 32))
    assert run_onnx(session(target), torch.randn(1, 1, 32, 32)).shape == (1, 3)  # ...so a new export replaces it
    theirs = tmp_path / "resnet20.onnx"
    theirs.write_bytes(b"their model")
    with pytest.raises(RunDirectoryError, match="not an ONNX file exported by convnets"):
        export_onnx(convnets.create_model("resnet20"), theirs, torch.randn(2, 3, 32, 32))
    assert theirs.read_bytes() == b"their model"
