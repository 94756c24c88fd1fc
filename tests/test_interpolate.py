"""Weight-space interpolation of a fine-tuning with its start."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipelines.training.interpolate import interpolate, main, read_state


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.BatchNorm3d(2))


def test_interpolation_ends_at_its_inputs_and_is_linear_between() -> None:
    a, b = _net(0).state_dict(), _net(1).state_dict()
    b["1.num_batches_tracked"] = torch.tensor(7)
    assert all(torch.equal(v, a[k]) for k, v in interpolate(a, b, alpha=0.0).items() if v.is_floating_point())
    half = interpolate(a, b, alpha=0.5)
    w = "0.weight"
    torch.testing.assert_close(half[w], (a[w] + b[w]) / 2)
    assert int(half["1.num_batches_tracked"]) == 7  # counters come from the tuned weights
    with pytest.raises(ValueError, match="alpha"):
        interpolate(a, b, alpha=1.5)


def test_checkpoints_of_other_networks_are_refused() -> None:
    a = _net(0).state_dict()
    other = torch.nn.Sequential(torch.nn.Conv3d(1, 3, 3), torch.nn.BatchNorm3d(3)).state_dict()
    with pytest.raises(ValueError, match="shape"):
        interpolate(a, other, alpha=0.5)
    fewer = {k: v for k, v in a.items() if not k.startswith("1.")}
    with pytest.raises(ValueError, match="different tensors"):
        interpolate(a, fewer, alpha=0.5)


def test_command_reads_model_files_and_trainer_checkpoints(tmp_path: Path, capsys) -> None:
    a, b = _net(0).state_dict(), _net(1).state_dict()
    torch.save(a, tmp_path / "start.pt")
    torch.save({"model": b, "trainer": {"iteration": 3}}, tmp_path / "ckpt.pt")
    out = tmp_path / "x" / "model.pt"
    assert main([str(tmp_path / "start.pt"), str(tmp_path / "ckpt.pt"), str(out), "--alpha", "0.25"]) == 0
    got = read_state(out)
    torch.testing.assert_close(got["0.bias"], 0.75 * a["0.bias"] + 0.25 * b["0.bias"])
    net = _net(2)
    net.load_state_dict(got)  # loads into the architecture
    torch.save({"not": "weights"}, tmp_path / "bad.pt")
    assert main([str(tmp_path / "start.pt"), str(tmp_path / "bad.pt"), str(out), "--alpha", "0.5"]) == 2
    assert "bad.pt: not a state dict" in capsys.readouterr().err
