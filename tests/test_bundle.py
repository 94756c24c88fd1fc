"""The MONAI bundle (issue 3): metadata validates offline against the official schema, the network's input and
output shapes verify, ConfigWorkflow runs the bundle in-process, ``python -m monai.bundle run`` works from the
repository root and from any directory, and the real scans in ``../shared/data/ct`` screen without error with
masks on each scan's own grid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import BUNDLE, FAST, ROOT, chest_image, read_failures, read_summary, run_screen, write_case

SCHEMA_MD5 = "06954cad2cc5d3784e72077ac76f0fc8"
META = BUNDLE / "configs" / "metadata.json"
INFERENCE = BUNDLE / "configs" / "inference.json"
TINY = [
    "--settings#roi_size", "[32,32,32]", "--settings#target_spacing_mm", "3.0", "--settings#report", "False",
    "--settings#fine_spacing_mm", "2.0", "--progress", "False", "--weights", "",
]  # fmt: skip


def _schema(shared_data: Path) -> Path:
    schema = shared_data / "monai_schema" / "meta_schema_20240725.json"
    if not schema.is_file():
        pytest.skip("the MONAI metadata schema is not in ../shared/data")
    return schema


def test_metadata_validates_against_the_official_schema(shared_data: Path) -> None:
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(META), filepath=str(_schema(shared_data)), hash_val=SCHEMA_MD5)


def test_network_input_output_shapes_verify() -> None:
    from monai.bundle import verify_net_in_out

    verify_net_in_out(net_id="network_def", meta_file=str(META), config_file=str(INFERENCE), device="cpu")


@pytest.mark.slow
def test_verify_commands_as_documented(shared_data: Path) -> None:
    py = sys.executable
    meta = ["--meta_file", "monai_bundle/configs/metadata.json"]
    cmds = [
        [py, "-m", "monai.bundle", "verify_metadata", *meta, "--filepath", str(_schema(shared_data)),
         "--hash_val", SCHEMA_MD5],
        [py, "-m", "monai.bundle", "verify_net_in_out", "network_def", *meta,
         "--config_file", "monai_bundle/configs/inference.json"],
    ]  # fmt: skip
    for cmd in cmds:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "verified with no error" in proc.stdout + proc.stderr


def test_config_workflow_smoke(tmp_path: Path) -> None:
    """The bundle run in-process by MONAI's ConfigWorkflow with tiny ROI settings."""
    from monai.bundle import ConfigWorkflow

    inp, out = tmp_path / "in", tmp_path / "out"
    write_case(chest_image(), inp / "chest.nii.gz")
    wf = ConfigWorkflow(
        config_file=str(INFERENCE),
        meta_file=str(META),
        logging_file=False,
        workflow_type="infer",
        bundle_root=str(BUNDLE),
        dataset_dir=str(inp),
        output_dir=str(out),
        weights="",
        progress=False,
        **{f"settings#{k}": v for k, v in FAST.items()},
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    assert read_summary(out)["chest"]["status"] == "ok"
    lungs = sitk.ReadImage(str(out / "cases" / "chest" / "lungs.nii.gz"))
    assert lungs.GetSize() == (56, 48, 24)
    assert set(np.unique(sitk.GetArrayViewFromImage(lungs)).tolist()) == {0, 1, 2}


@pytest.mark.slow
@pytest.mark.parametrize("where", ["repo_root", "elsewhere"])
def test_monai_bundle_run_command(tmp_path: Path, where: str) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    write_case(chest_image(), inp / "chest.nii.gz")
    if where == "repo_root":
        cwd, config, extra = ROOT, "monai_bundle/configs/inference.json", []
    else:
        cwd, config = tmp_path, str(INFERENCE)
        extra = ["--bundle_root", str(BUNDLE)]  # as the issue documents it: no --meta_file
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config,
           "--dataset_dir", str(inp), "--output_dir", str(out), *TINY, *extra]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert read_summary(out)["chest"]["status"] == "ok"
    assert sitk.ReadImage(str(out / "cases" / "chest" / "nodules.nii.gz")).GetSize() == (56, 48, 24)
    version = json.loads(META.read_text())["version"]
    assert (
        f'"bundle_version": "{version}"' in (out / "run.json").read_text()
    )  # metadata found via bundle_root


def test_real_scans_screen_with_masks_on_their_grid(shared_data: Path, tmp_path: Path) -> None:
    ct = shared_data / "ct"
    inputs = [
        ct / "totalseg_chest_ct_crop_1p5mm.nii.gz",
        ct / "totalseg_abdomen_ct_3mm.nii.gz",
        ct / "totalseg_abdomen_ct_dicom",
        ct / "lidc_two_slices_dicom",
    ]
    out = tmp_path / "out"
    res = run_screen(inputs, out)
    assert (res.succeeded, res.failed) == (4, 0), read_failures(out)
    from pipelines.imaging.io import read_image

    for src, case_id in zip(
        inputs,
        [
            "totalseg_chest_ct_crop_1p5mm",
            "totalseg_abdomen_ct_3mm",
            "totalseg_abdomen_ct_dicom",
            "lidc_two_slices_dicom",
        ],
    ):
        scan = read_image(src)
        for name in ("lungs", "nodules"):
            mask = sitk.ReadImage(str(out / "cases" / case_id / f"{name}.nii.gz"))
            assert mask.GetSize() == scan.GetSize(), (case_id, name)
            np.testing.assert_allclose(mask.GetSpacing(), scan.GetSpacing(), atol=1e-5)
            np.testing.assert_allclose(mask.GetOrigin(), scan.GetOrigin(), atol=1e-3)
            np.testing.assert_allclose(mask.GetDirection(), scan.GetDirection(), atol=1e-6)
        lungs = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "cases" / case_id / "lungs.nii.gz")))
        hu = sitk.GetArrayFromImage(scan)
        if lungs.any():  # the mask overlays the scan: labelled voxels are air-like lung, not body or table
            assert np.median(hu[lungs > 0]) < -500, case_id
    summary = read_summary(out)
    assert float(summary["totalseg_chest_ct_crop_1p5mm"]["right_lung_volume_ml"]) > 0
    assert float(summary["totalseg_chest_ct_crop_1p5mm"]["left_lung_volume_ml"]) > 0
    assert float(summary["lidc_two_slices_dicom"]["lung_volume_ml"]) > 0
