"""Settings validation, device/precision policy, lung-gated windows and checkpoint loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.inferers import SlidingWindowInferer

from pipelines.screening.inference import (
    CheckpointError,
    LungGatedNetwork,
    autocast_dtype,
    load_weights,
    mirror_trigger_mask,
    sliding_window_probability,
)
from pipelines.screening.settings import ScreeningSettings, SettingsError


def test_settings_errors_name_field_and_choices():
    with pytest.raises(SettingsError, match="device must be one of"):
        ScreeningSettings(device="tpu")
    with pytest.raises(SettingsError, match="roi_size"):
        ScreeningSettings(roi_size=(96, 96, 20))
    with pytest.raises(SettingsError, match="valid settings are"):
        ScreeningSettings.from_dict({"treshold": 0.5})
    a, b = ScreeningSettings(), ScreeningSettings(prob_threshold=0.6)
    assert a.sha256() != b.sha256() and a.sha256() == ScreeningSettings().sha256()


def test_fp32_on_cpu_and_bf16_on_cuda_by_default():
    s = ScreeningSettings()
    assert autocast_dtype(s, torch.device("cpu")) is None
    assert autocast_dtype(s, torch.device("cuda")) is torch.bfloat16
    assert autocast_dtype(ScreeningSettings(amp="float16"), torch.device("cpu")) is torch.float16


class _Count(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += x.shape[0]
        return torch.full_like(x, 5.0)


def test_lung_gated_network_skips_windows_without_lung():
    net = _Count()
    gated = LungGatedNetwork(net)
    x = torch.zeros(3, 2, 8, 8, 8)
    x[1, 1, 2, 2, 2] = 1  # only window 1 holds lung
    out = gated(x)
    assert net.calls == 1 and gated.windows_skipped == 2
    assert out[1].min() == 5.0 and out[0].max() == -20.0


def test_sliding_window_probability_only_runs_on_lung_region():
    net = _Count()
    image = torch.rand(1, 64, 64, 64)
    lungs = torch.zeros(64, 64, 64)
    lungs[:16, :16, :16] = 1
    inferer = SlidingWindowInferer(roi_size=(32, 32, 32), sw_batch_size=2, overlap=0.0, mode="gaussian")
    prob, info = sliding_window_probability(
        image,
        lungs,
        network=net,
        inferer=inferer,
        settings=ScreeningSettings(logit_temperature=1.0),
        device=torch.device("cpu"),
    )
    assert prob.shape == (64, 64, 64)
    assert info["windows_run"] == 1 and info["windows_skipped"] == 7
    assert prob[:16, :16, :16].min() > 0.99 and prob[40:, 40:, 40:].max() < 1e-6


def test_load_weights_errors_name_the_file(tmp_path):
    net = torch.nn.Conv3d(1, 1, 3)
    with pytest.raises(CheckpointError, match="missing.pt.*not found"):
        load_weights(net, tmp_path / "missing.pt")
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match="corrupt.pt"):
        load_weights(net, bad)
    other = tmp_path / "other.pt"
    torch.save(torch.nn.Conv3d(1, 2, 3).state_dict(), other)
    with pytest.raises(CheckpointError, match="other.pt.*architecture"):
        load_weights(net, other)
    good = tmp_path / "good.pt"
    torch.save({"model": net.state_dict()}, good)
    load_weights(torch.nn.Conv3d(1, 1, 3), good)


class Evil:
    """A class that weights_only unpickling must refuse."""


def test_foreign_pickle_is_refused(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, p)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_weights(torch.nn.Conv3d(1, 1, 3), p)


def test_boolean_settings_accept_command_line_strings():
    assert ScreeningSettings(report="false").report is False
    assert ScreeningSettings(compress="True").compress is True
    with pytest.raises(SettingsError, match="report must be true or false"):
        ScreeningSettings(report="maybe")


class _Logit(torch.nn.Module):
    """A constant logit of 30: float32 sigmoid saturates to exactly 1.0 above ~17."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x[:, :1], 30.0)


def test_logit_temperature_softens_saturated_probabilities():
    image, lungs = torch.rand(1, 32, 32, 32), torch.ones(32, 32, 32)
    inferer = SlidingWindowInferer(roi_size=(32, 32, 32), sw_batch_size=1, overlap=0.0)
    probs = {}
    for t in (1.0, 4.0):
        probs[t], _ = sliding_window_probability(
            image,
            lungs,
            network=_Logit(),
            inferer=inferer,
            settings=ScreeningSettings(logit_temperature=t),
            device=torch.device("cpu"),
        )
    assert float(probs[1.0].min()) == 1.0  # saturated: every confident candidate would tie
    assert abs(float(probs[4.0].mean()) - float(torch.sigmoid(torch.tensor(7.5)))) < 1e-6
    with pytest.raises(SettingsError, match="logit_temperature"):
        ScreeningSettings(logit_temperature=0.0)


def test_dataclass_defaults_equal_the_bundle_settings():
    """Direct users of ScreeningSettings get the shipped bundle's behaviour (inference.json is the source)."""
    import json

    from helpers import BUNDLE

    bundle = json.loads((BUNDLE / "configs" / "inference.json").read_text())["settings"]
    defaults = ScreeningSettings()
    for key, value in bundle.items():
        if key.startswith("_"):
            continue
        got = getattr(defaults, key)
        assert (list(got) if isinstance(got, tuple) else got) == value, key


class _RampX(torch.nn.Module):
    """A logit that grows along x whatever the input (not mirror-symmetric); counts its calls."""

    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _RampX.calls += 1
        ramp = torch.linspace(-4.0, 4.0, x.shape[-1])
        return ramp.expand(x.shape[0], 1, *x.shape[2:]).clone()


def _cpu_probability(image, lungs, network, inferer, **settings):
    """``sliding_window_probability`` on the CPU at logit temperature 1 with these settings."""
    return sliding_window_probability(
        image,
        lungs,
        network=network,
        inferer=inferer,
        settings=ScreeningSettings(logit_temperature=1.0, **settings),
        device=torch.device("cpu"),
    )


def test_mirror_axes_average_the_logit_over_mirrored_windows():
    image, lungs = torch.rand(1, 32, 32, 32), torch.ones(32, 32, 32)
    inferer = SlidingWindowInferer(roi_size=(32, 32, 32), sw_batch_size=1, overlap=0.0)
    out = {}
    for axes in ("", "x", "zyx"):
        _RampX.calls = 0
        out[axes], _ = _cpu_probability(image, lungs, _RampX(), inferer, mirror_axes=axes, mirror_scope="all")
        assert _RampX.calls == 2 ** len(axes)
    assert float(out[""][..., -1].mean() - out[""][..., 0].mean()) > 0.9  # the ramp, unmirrored
    np.testing.assert_allclose(out["x"].numpy(), 0.5, atol=1e-6)  # its mirror image cancels it
    np.testing.assert_allclose(out["zyx"].numpy(), 0.5, atol=1e-6)
    with pytest.raises(SettingsError, match="mirror_axes"):
        ScreeningSettings(mirror_axes="xx")
    with pytest.raises(SettingsError, match="mirror_axes"):
        ScreeningSettings(mirror_axes="lr")


class _BlobNet(torch.nn.Module):
    """Logit ``12 * image - 6`` plus a ramp along x (not mirror-symmetric); counts its calls."""

    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _BlobNet.calls += 1
        return 12.0 * x - 6.0 + torch.linspace(-1.0, 1.0, x.shape[-1])


@pytest.mark.parametrize("zy", [(32, 32), (20, 26)])  # the second grid is padded to the window by MONAI
def test_candidate_scoped_mirroring_mirrors_only_windows_holding_a_candidate(zy):
    # three 32^3 windows along x; a bright cube (a candidate) only in the middle one
    image, lungs = torch.zeros(1, *zy, 96), torch.ones(*zy, 96)
    image[0, 4:16, 6:18, 40:56] = 1.0
    inferer = SlidingWindowInferer(roi_size=(32, 32, 32), sw_batch_size=1, overlap=0.0)
    out, calls = {}, {}
    for scope in ("all", "candidates", "off"):
        _BlobNet.calls = 0
        axes, kind = ("", "all") if scope == "off" else ("x", scope)
        out[scope], info = _cpu_probability(
            image, lungs, _BlobNet(), inferer, mirror_axes=axes, mirror_scope=kind
        )
        calls[scope] = _BlobNet.calls
        assert info["windows_mirrored"] == {"all": 3, "candidates": 1, "off": 0}[scope]
    assert calls == {"all": 6, "candidates": 4, "off": 3}  # one mirrored call instead of three
    middle, sides = np.s_[..., 32:64], [np.s_[..., :32], np.s_[..., 64:]]
    # the window with the candidate: exactly the all-windows mirror mean (the ramp cancels)
    np.testing.assert_allclose(out["candidates"][middle].numpy(), out["all"][middle].numpy(), atol=1e-6)
    assert not np.allclose(out["off"][middle].numpy(), out["all"][middle].numpy(), atol=1e-3)
    for side in sides:  # windows without a candidate: the first pass, untouched
        np.testing.assert_array_equal(out["candidates"][side].numpy(), out["off"][side].numpy())


def test_mirror_trigger_mask_keeps_big_enough_components_and_grows_them():
    logits = torch.full((20, 20, 20), -10.0)
    logits[2:6, 2:6, 2:6] = 3.0  # 64 voxels above p 0.5
    logits[3, 3, 6:9] = 3.0  # a bar touching it: its box grows along x
    logits[15, 15, 15] = 3.0  # a one-voxel speck
    mask = mirror_trigger_mask(logits, threshold=0.5, temperature=1.0, min_voxels=14, grow=1)
    assert mask[1:7, 1:7, 1:10].all() and int(mask.sum()) == 6 * 6 * 9  # the component's box grown by one
    assert not mask[14:17, 14:17, 14:17].any()
    # the threshold is on the tempered probability: logit 3 at T = 4 is p 0.68, below 0.7
    assert not mirror_trigger_mask(logits, threshold=0.7, temperature=4.0, min_voxels=1).any()
    with pytest.raises(SettingsError, match="mirror_scope"):
        ScreeningSettings(mirror_scope="some")
    with pytest.raises(SettingsError, match="mirror_threshold"):
        ScreeningSettings(mirror_threshold=0.0)
