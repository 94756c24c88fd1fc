"""Modality registry and intensity normalisation (CT dataset z-score, MRI foreground z-score, N4)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import SimpleITK as sitk

from pipelines.imaging.modality import (
    MODALITIES,
    UnknownModalityError,
    foreground_mask,
    get_modality,
    intensity_statistics,
    modality_names,
    n4_bias_correct,
    normalize,
    normalize_ct,
    normalize_mri,
)


def test_registry_lookup_and_unknown_modality_lists_choices():
    assert get_modality("CT").normalization == "dataset_zscore"
    assert get_modality(" mri ").supports_n4 and not get_modality("ct").supports_n4
    with pytest.raises(UnknownModalityError, match=r"'pet'.*valid choices are \['ct', 'mri'\]"):
        get_modality("pet")


def test_registry_is_what_the_cli_offers():
    from pipelines.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    train_seg = sub.choices["train-seg"]
    option = next(a for a in train_seg._actions if a.dest == "modality")
    assert tuple(option.choices) == modality_names() == tuple(MODALITIES)


def test_registry_module_is_light_to_import():
    import subprocess

    code = "import sys, pipelines.imaging.modality; print('torch' in sys.modules, 'SimpleITK' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_intensity_statistics_hand_computed():
    stats = intensity_statistics(np.arange(1001, dtype=float))
    assert stats["mean"] == 500 and stats["median"] == 500 and stats["min"] == 0 and stats["max"] == 1000
    assert stats["percentile_00_5"] == pytest.approx(5.0) and stats["percentile_99_5"] == pytest.approx(995.0)
    with pytest.raises(ValueError, match="empty"):
        intensity_statistics(np.array([]))


def test_normalize_ct_clips_to_dataset_percentiles_then_zscores():
    stats = {"percentile_00_5": -100.0, "percentile_99_5": 300.0, "mean": 50.0, "std": 25.0}
    out = normalize_ct(np.array([[[-1000.0, 50.0, 100.0, 3000.0]]]), stats=stats)
    assert out.dtype == np.float32
    assert out.ravel().tolist() == [-6.0, 0.0, 2.0, 10.0]
    with pytest.raises(ValueError, match="dataset intensity statistics"):
        normalize(np.zeros((2, 2, 2)), modality="ct")


def _body(shape=(16, 32, 32)) -> np.ndarray:
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    return zz**2 + yy**2 + xx**2 < 0.7


def test_normalize_mri_foreground_zscore_is_invariant_to_scanner_scaling():
    rng = np.random.default_rng(0)
    body = _body()
    img = np.where(body, rng.normal(400, 40, body.shape), np.abs(rng.normal(0, 10, body.shape)))
    fg = foreground_mask(img)
    assert (fg == body).mean() > 0.99
    out = normalize_mri(img)
    assert abs(out[body].mean()) < 0.02 and out[body].std() == pytest.approx(1.0, abs=0.03)
    np.testing.assert_allclose(normalize_mri(3.0 * img + 50.0), out, atol=1e-4)
    assert out.max() <= np.percentile(out[body], 99.6) + 1e-5  # clipped at the 99.5th percentile


def test_n4_removes_a_smooth_multiplicative_bias_field():
    body = _body((20, 40, 40))
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in body.shape], indexing="ij")
    bias = np.exp(0.5 * xx + 0.3 * zz)
    rng = np.random.default_rng(1)
    clean = np.where(body, 300.0, 5.0) + rng.normal(0, 3, body.shape)
    img = sitk.GetImageFromArray((clean * bias).astype(np.float32))
    img.SetSpacing((2.0, 2.0, 3.0))
    img.SetOrigin((5.0, -3.0, 12.0))
    corrected = n4_bias_correct(img)
    assert corrected.GetSize() == img.GetSize() and corrected.GetOrigin() == img.GetOrigin()
    before = sitk.GetArrayFromImage(img)[body]
    after = sitk.GetArrayFromImage(corrected)[body]
    cv_before, cv_after = before.std() / before.mean(), after.std() / after.mean()
    print(f"N4: coefficient of variation {cv_before:.3f} -> {cv_after:.3f}")
    assert cv_before > 0.2 and cv_after < 0.35 * cv_before
