"""Ensembles of segmentation networks: the mean logit of several checkpoints, on every screening path."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import chest_image, network_def, read_result, run_screen, silent_weights, write_case

from pipelines.screening.ensemble import MeanLogits, load_network_weights, weight_files
from pipelines.screening.inference import CheckpointError


def test_mean_logits_is_the_mean_of_the_members() -> None:
    torch.manual_seed(0)
    a, b = torch.nn.Conv3d(1, 1, 3, padding=1), torch.nn.Conv3d(1, 1, 3, padding=1)
    x = torch.rand(2, 1, 8, 8, 8)
    with torch.no_grad():
        assert torch.allclose(MeanLogits([a, b])(x), (a(x) + b(x)) / 2, atol=1e-6)
    with pytest.raises(ValueError, match="at least one"):
        MeanLogits([])


def test_load_network_weights_one_several_or_none(tmp_path: Path) -> None:
    low = silent_weights(tmp_path / "low.pt", bias=-10.0)
    high = silent_weights(tmp_path / "high.pt", bias=6.0)
    x = torch.rand(1, 1, 16, 16, 16)
    net = network_def()
    assert load_network_weights(net, None) is net and load_network_weights(net, "") is net
    with torch.no_grad():
        single = load_network_weights(network_def(), low)
        assert torch.allclose(single(x), torch.full_like(single(x), -10.0))
        both = load_network_weights(network_def(), [low, high])
        assert isinstance(both, MeanLogits) and len(both.members) == 2
        assert torch.allclose(both(x), torch.full_like(x, -2.0), atol=1e-5)  # (-10 + 6) / 2
    assert (
        weight_files(low) == [low]
        and weight_files([str(low), high]) == [low, high]
        and weight_files(None) == []
    )
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="broken.pt"):
        load_network_weights(network_def(), [low, bad])


def test_screening_with_two_checkpoints_uses_their_mean_logit_and_its_own_fingerprint(tmp_path: Path) -> None:
    low = str(silent_weights(tmp_path / "w" / "low.pt", bias=-10.0))
    high = str(silent_weights(tmp_path / "w" / "high.pt", bias=6.0))
    inp = tmp_path / "in"
    write_case(chest_image(shape_zyx=(24, 48, 56), noise_hu=10.0, seed=0), inp / "case0.nii.gz")
    out = tmp_path / "out"
    assert run_screen(inp, out, weights=low, write_probability=True, logit_temperature=4.0).succeeded == 1
    single = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "cases" / "case0" / "probability.nii.gz")))
    fingerprint = read_result(out, "case0")["fingerprint"]
    res = run_screen(inp, out, weights=[low, high], write_probability=True, logit_temperature=4.0)
    assert res.succeeded == 1 and res.skipped == 0  # other weights: screened again, not skipped
    both = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "cases" / "case0" / "probability.nii.gz")))
    assert read_result(out, "case0")["fingerprint"] != fingerprint
    inside = both > 0  # the lungs (windows outside them are never run)
    assert inside.any()
    sig = lambda v: 1.0 / (1.0 + math.exp(-v / 4.0))  # noqa: E731
    assert np.allclose(single[inside], sig(-10.0), atol=2e-3)
    assert np.allclose(both[inside], sig(-2.0), atol=2e-3)


def test_cli_takes_repeated_weights() -> None:
    from pipelines.cli.main import build_parser

    a = build_parser().parse_args(["screen", "in", "out", "--weights", "a.pt", "--weights", "b.pt"])
    assert a.weights == [Path("a.pt"), Path("b.pt")] and a.inputs == [Path("in"), Path("out")]
    assert build_parser().parse_args(["screen", "in", "out"]).weights is None
