"""The network runtime (pipelines.screening.backend): PyTorch, or OpenVINO on the CPU when the extra is installed.

The OpenVINO tests skip when it is not installed (CI installs the default extras only); the choice of backend and
the fallback note when it is missing run everywhere.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch
from helpers import network_def
from monai.inferers import SlidingWindowInferer

from pipelines.screening import backend as ib
from pipelines.screening.inference import sliding_window_probability
from pipelines.screening.settings import ScreeningSettings, SettingsError

CPU = torch.device("cpu")
ROI = (32, 32, 32)


@pytest.mark.parametrize(
    ("requested", "device", "amp", "available", "expected", "note"),
    [
        ("auto", "cpu", "auto", True, "openvino", None),
        ("auto", "cpu", "auto", False, "torch", "openvino is not installed"),
        ("auto", "cuda", "auto", True, "torch", None),
        ("auto", "cpu", "bfloat16", True, "torch", None),
        ("openvino", "cpu", "float32", True, "openvino", None),
        ("openvino", "cpu", "bfloat16", True, "openvino", "runs in float32"),
        ("openvino", "cuda", "auto", True, "torch", "CPU only"),
        ("openvino", "cpu", "auto", False, "torch", "lungscreen[cpu-fast]"),
        ("torch", "cpu", "auto", True, "torch", None),
    ],
)
def test_backend_choice(
    requested: str, device: str, amp: str, available: bool, expected: str, note: str | None
) -> None:
    name, said = ib.resolve_backend(requested, device=torch.device(device), amp=amp, available=available)
    assert name == expected
    if note is None:
        assert said is None
    else:
        assert said is not None and note in said and "\n" not in said


def test_backend_setting_is_validated() -> None:
    assert ScreeningSettings().backend == "torch"  # until OpenVINO is checked equal on the validation sets
    with pytest.raises(SettingsError, match="backend.*auto, torch, openvino.*'onnx'"):
        ScreeningSettings(backend="onnx")


@pytest.mark.parametrize(("requested", "level"), [("openvino", logging.WARNING), ("auto", logging.INFO)])
def test_missing_openvino_falls_back_to_torch_with_one_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, requested: str, level: int
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    net = torch.nn.Conv3d(1, 1, 1)
    with caplog.at_level(logging.INFO, logger="lungscreen"):
        runner, name = ib.network_backend(net, settings=ScreeningSettings(backend=requested), device=CPU)
    assert runner is net and name == "torch" and ib.active_backend(runner) == "torch"
    notes = [r for r in caplog.records if "openvino is not installed" in r.getMessage()]
    assert len(notes) == 1 and notes[0].levelno == level
    assert "pip install 'lungscreen[cpu-fast]'" in notes[0].getMessage()


# ------------------------------------------------------------------------------------------ with OpenVINO
def _needs_openvino() -> None:
    if ib.import_openvino() is None:
        pytest.skip("openvino is not installed (the optional cpu-fast extra)")


def _small_unet() -> torch.nn.Module:
    """The bundle's network family (residual units, instance norm, PReLU), small enough to export in a second."""
    from monai.networks.nets import UNet

    net = UNet(3, 1, 1, channels=(4, 8, 16), strides=(2, 2), num_res_units=2, norm="instance")
    return net.eval()


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    torch.manual_seed(3)
    return _small_unet()


def _probability(net: torch.nn.Module, settings: ScreeningSettings) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    image = torch.rand((1, 40, 52, 44), generator=g)
    lungs = torch.zeros(40, 52, 44)
    lungs[4:36, 6:46, 4:20] = 1  # one lung: some windows are skipped, the rest run in batches of 1 to 4
    inferer = SlidingWindowInferer(roi_size=settings.roi_size, sw_batch_size=4, overlap=0.25, mode="gaussian")
    prob, _ = sliding_window_probability(
        image, lungs, network=net, inferer=inferer, settings=settings, device=CPU
    )
    return prob


def test_openvino_matches_torch_on_a_tiny_volume(tmp_path: Path) -> None:
    _needs_openvino()
    torch.manual_seed(5)
    network = network_def().eval()  # the shipped architecture
    settings = ScreeningSettings(roi_size=ROI, mirror_axes="", backend="openvino")
    runner, name = ib.network_backend(network, settings=settings, device=CPU)
    assert name == "openvino" and isinstance(runner, ib.OpenVinoNetwork)
    runner.cache_root = tmp_path
    reference = _probability(network, settings)
    prob = _probability(runner, settings)
    assert runner.failed is None and ib.active_backend(runner) == "openvino"
    assert float((prob - reference).abs().max()) < 1e-3
    assert prob.shape == reference.shape and float(prob.std()) > 0.01  # a real map, not a constant
    assert runner.compile_seconds and all(s[1:] == (1, *ROI) for s in runner.compile_seconds)


def test_export_is_cached_by_weights_in_float32(
    network: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _needs_openvino()
    first = ib.OpenVinoNetwork(network, example_shape=(2, 1, *ROI), cache_root=tmp_path)
    x = torch.rand(2, 1, *ROI)
    out = first(x)
    entry = first.cache_path
    assert entry is not None and entry.parent.name == ib.weights_sha256(network)
    assert {p.name for p in entry.iterdir()} == {"model.xml", "model.bin", "export.json"}
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".tmp-")]
    n_params = sum(v.numel() for v in network.state_dict().values())
    assert (entry / "model.bin").stat().st_size >= 4 * n_params * 0.99  # f32 weights, not compressed to fp16
    model = ib._core().read_model(str(entry / "model.xml"))
    types = {str(op.get_element_type()) for op in model.get_ops() if op.get_type_name() == "Constant"}
    assert "<Type: 'float16'>" not in types and "<Type: 'float32'>" in types
    compiled = ib.compile_for_shape(model, (2, 1, *ROI))
    assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) in ("f32", "<Type: 'float32'>")

    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("exported again although the cache holds the model")

    monkeypatch.setattr(ib, "export_openvino", no_export)
    second = ib.OpenVinoNetwork(network, example_shape=(2, 1, *ROI), cache_root=tmp_path)
    assert torch.equal(second(x), out) and second.cache_path == entry

    other = _small_unet()  # other weights: another entry, so another export
    with pytest.raises(AssertionError, match="exported again"):
        ib.load_or_export(other, example_shape=(2, 1, *ROI), cache_root=tmp_path)


def test_a_damaged_cache_entry_is_exported_again(network: torch.nn.Module, tmp_path: Path) -> None:
    _needs_openvino()
    ov = ib.import_openvino()
    entry = ib.cache_entry(tmp_path, network, ov.__version__)
    entry.mkdir(parents=True)
    (entry / "model.xml").write_text("<not a model")
    runner = ib.OpenVinoNetwork(network, example_shape=(2, 1, *ROI), cache_root=tmp_path)
    x = torch.rand(2, 1, *ROI)
    with torch.inference_mode():
        reference = network(x)
    assert float((runner(x) - reference).abs().max()) < 1e-3 and runner.failed is None
    assert (entry / "model.bin").is_file()


def test_an_openvino_failure_falls_back_to_torch(
    network: torch.nn.Module, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _needs_openvino()

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no CPU plugin\nsecond line")

    monkeypatch.setattr(ib, "load_or_export", broken)
    runner = ib.OpenVinoNetwork(network, example_shape=(2, 1, *ROI), cache_root=None)
    x = torch.rand(2, 1, *ROI)
    with caplog.at_level(logging.WARNING, logger="lungscreen"):
        out = runner(x)
        runner(x)
    with torch.inference_mode():
        assert torch.equal(out, network(x))
    assert ib.active_backend(runner) == "torch" and runner.failed == "RuntimeError: no CPU plugin"
    assert [r.getMessage() for r in caplog.records] == [
        "openvino failed (RuntimeError: no CPU plugin): the network runs with PyTorch"
    ]


def test_cache_folder_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ib.CACHE_ENV, str(tmp_path / "ov"))
    assert ib.default_cache_root() == tmp_path / "ov"
    monkeypatch.setenv(ib.CACHE_ENV, "")
    assert ib.default_cache_root() is None
    monkeypatch.delenv(ib.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert ib.default_cache_root() == tmp_path / "lungscreen" / "openvino"


def test_an_ensemble_runs_as_one_exported_model(tmp_path: Path) -> None:
    _needs_openvino()
    from pipelines.screening.ensemble import MeanLogits

    torch.manual_seed(7)
    members = [_small_unet(), _small_unet()]
    ensemble = MeanLogits(members).eval()
    runner = ib.OpenVinoNetwork(ensemble, example_shape=(2, 1, *ROI), cache_root=tmp_path)
    x = torch.rand(3, 1, *ROI)
    with torch.inference_mode():
        reference = ensemble(x)
        assert float((runner(x) - reference).abs().max()) < 1e-3
    assert runner.failed is None and runner.cache_path is not None
    assert runner.cache_path.parent.name not in {ib.weights_sha256(m) for m in members}


@pytest.mark.parametrize("backend", ["torch", pytest.param("openvino", marks=pytest.mark.slow)])
def test_screening_records_the_backend_and_finds_the_same(tmp_path: Path, backend: str) -> None:
    if backend == "openvino":
        _needs_openvino()
    from helpers import chest_image, read_result, run_screen, write_case

    write_case(chest_image(shape_zyx=(24, 48, 56), noise_hu=10.0, seed=1), tmp_path / "in" / "case0.nii.gz")
    torch.manual_seed(11)  # the same random weights for both backends
    res = run_screen(tmp_path / "in", tmp_path / backend, backend=backend)
    assert res.exit_code == 0
    result = read_result(tmp_path / backend, "case0")
    assert result["info"]["backend"] == backend
    if backend == "openvino":
        torch.manual_seed(11)
        run_screen(tmp_path / "in", tmp_path / "torch", backend="torch")
        reference = read_result(tmp_path / "torch", "case0")
        got, want = result["candidates"], reference["candidates"]
        assert got and len(got) == len(want) and reference["info"]["backend"] == "torch"
        for a, b in zip(got, want):
            assert a["probability"] == pytest.approx(b["probability"], abs=1e-3)
            for axis in "xyz":
                key = f"center_lps_{axis}_mm"
                assert a[key] == pytest.approx(b[key], abs=0.01)
