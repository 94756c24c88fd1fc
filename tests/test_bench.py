"""The benchmark harness on a tiny synthetic chest CT: both paths run, results are valid JSON and Markdown.

No timing is asserted (timings depend on the machine); what is asserted is that every stage of both paths was
measured, that peak memory was recorded, that detections were compared and that the files were written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pipelines.bench.baseline import mask_detections
from pipelines.bench.report import compare_detections, match_centres
from pipelines.bench.run import run_bench
from pipelines.screening.settings import ScreeningSettings

# The coarsest network grid the settings allow (3 mm) and 32^3 windows: a few windows per path.
TINY = {"roi_size": [32, 32, 32], "target_spacing_mm": 3.0, "lung_margin_mm": 6.0, "fine_spacing_mm": 2.9}


def tiny_chest_ct(path: Path) -> Path:
    """48x64x64 ``[z, y, x]`` int16 HU at 2.5x2x2 mm: body, two lungs, one 10 mm nodule in the left lung."""
    shape, spacing = (48, 64, 64), (2.5, 2.0, 2.0)
    z, y, x = np.meshgrid(*[(np.arange(n) - n / 2 + 0.5) * s for n, s in zip(shape, spacing)], indexing="ij")
    hu = np.full(shape, -1000.0, np.float32)
    hu[(x / 58) ** 2 + (y / 45) ** 2 <= 1] = 40.0
    for cx in (-26.0, 26.0):
        hu[((x - cx) / 20) ** 2 + (y / 30) ** 2 + (z / 45) ** 2 <= 1] = -850.0
    hu[(x - 26) ** 2 + (y - 5) ** 2 + (z - 3) ** 2 <= 25] = 30.0
    img = sitk.GetImageFromArray(hu.astype(np.int16))
    img.SetSpacing(spacing[::-1])
    img.SetOrigin((-60.0, -60.0, -50.0))
    sitk.WriteImage(img, str(path), useCompression=True)
    return path


@pytest.fixture(scope="module")
def bench_result(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("bench")
    scan = tiny_chest_ct(root / "tiny.nii.gz")
    out = root / "results"
    result = run_bench(
        out_dir=out,
        inputs={"tiny": scan},
        device="cpu",
        repeats=1,
        settings=TINY,
        sw_batch_sizes=(2,),
        in_process=True,
        work_dir=root / "work",
    )
    return result, out


def test_bench_measures_every_stage_of_both_paths(bench_result: tuple[dict, Path]) -> None:
    result, _ = bench_result
    entry = result["scans"]["tiny"]
    ours = entry["stages"]["stages"]
    assert set(ours) == {
        "read",
        "reorient",
        "lung_mask",
        "resample",
        "sliding_window",
        "sliding_window_fine",
        "postprocess",
        "classifier",
        "write",
        "report",
    }
    assert all(v >= 0 for v in ours.values())
    assert set(entry["baseline"]["stages"]) == {
        "read",
        "reorient",
        "resample",
        "sliding_window",
        "postprocess",
        "write",
    }
    assert entry["screen"]["median_seconds"] > 0
    # the shipped settings mirror each window; ours is also timed at the baseline's one pass per window
    assert ScreeningSettings().mirror_axes and entry["screen_single_pass"]["median_seconds"] > 0
    assert ScreeningSettings().mirror_scope == "candidates"  # the other scope is timed as well
    assert entry["screen_mirror_all"]["median_seconds"] > 0
    assert ScreeningSettings().second_look and entry["screen_no_second_look"]["median_seconds"] > 0
    assert entry["screen_single_scale"]["median_seconds"] > 0  # the finer second grid, off
    # both clocks start after the Python imports, which are timed on their own
    assert entry["screen"]["runs"][0]["import_seconds"] >= 0 and entry["baseline"]["import_seconds"] >= 0
    assert entry["screen"]["max_peak_rss_bytes"] > 50 * 2**20  # torch alone is more than 50 MiB
    assert entry["stages"]["windows_run"] >= 1
    fine = entry["stages"]["fine"]  # the second grid's windows are counted too
    assert fine["spacing_mm"] == TINY["fine_spacing_mm"] and fine["windows_run"] >= 1
    # our network grid is the lung crop, the baseline's the whole 128x128x120 mm volume
    assert np.prod(entry["stages"]["network_shape_zyx"]) < np.prod(entry["baseline"]["network_shape_zyx"])
    assert not result["weights"]["trained"] or Path(result["weights"]["network"]).is_file()


def test_bench_writes_json_and_markdown(bench_result: tuple[dict, Path]) -> None:
    result, out = bench_result
    js, md = sorted(out.glob("*.json")), sorted(out.glob("*.md"))
    assert len(js) == 1 and len(md) == 1
    loaded = json.loads(js[0].read_text())
    assert loaded["scans"]["tiny"]["detection_match"]["radius_mm"] == 5.0
    text = md[0].read_text()
    assert text == result["markdown"]
    assert "| stage | ours (s) | baseline (s) | ratio ours/baseline |" in text
    assert "| sliding_window |" in text and "**end to end**" in text and "peak RSS" in text
    assert "one network pass per window like the baseline" in text
    assert "| Python imports, before either clock" in text
    assert "(`mirror_scope=all`; median of 1)" in text
    assert "(`second_look` off; median of 1)" in text
    assert "| sw_batch_size | lung gating |" in text and "SimpleITK gzip level 1" in text
    assert "MONAI Spacing (bilinear)" in text
    assert "second grid at 2.9 mm" in text


def test_match_centres_is_one_to_one_within_radius() -> None:
    a = np.array([[0.0, 0, 0], [10, 0, 0], [50, 0, 0]])
    b = np.array([[1.0, 0, 0], [0.5, 0, 0], [58, 0, 0]])
    pairs = match_centres(a, b, radius_mm=5.0)
    assert sorted(pairs) == [(0, 1)]  # closest pair first; (10,0,0) is 9 mm from (1,0,0); 8 mm apart at 50/58


def _row(x: float, source: str | None = None) -> dict:
    row = {"center_lps_x_mm": x, "center_lps_y_mm": 0.0, "center_lps_z_mm": 0.0}
    return row if source is None else {**row, "source": source}


def test_compare_detections_leaves_second_look_marks_out_of_the_same_network_check() -> None:
    entry = {
        "screen": {
            "runs": [{"detections": [_row(0, "network"), _row(50, "network"), _row(100, "second_look")]}]
        },
        "baseline": {"detections": [_row(1), _row(49)]},
        "truth": [_row(0), _row(100), _row(200)],
    }
    m = compare_detections(entry, radius_mm=5.0)
    assert (m["ours"], m["ours_second_look"], m["baseline"], m["matched"]) == (2, 1, 2, 2)
    assert m["same"] and m["ours_hits_truth"] == 2 and m["baseline_hits_truth"] == 1
    entry["baseline"]["detections"] = [_row(1)]
    m = compare_detections(entry, radius_mm=5.0)
    assert not m["same"] and m["ours_only"] == 1


def test_mask_detections_world_lps_centre_and_size_filter() -> None:
    mask = np.zeros((20, 20, 20), bool)
    mask[4:7, 4:7, 4:7] = True  # 27 voxels of 2 mm^3: diameter 4.7 mm
    mask[15, 15, 15] = True  # 1 voxel (2 mm^3): below 3 mm, dropped
    affine = np.diag([-1.0, -1.0, 2.0, 1.0])  # RAS affine of an LPS-stored file, 2 mm slices
    affine[:3, 3] = [10.0, 20.0, -30.0]
    rows = mask_detections(mask, affine, min_diameter_mm=3.0)
    assert len(rows) == 1
    r = rows[0]
    # centre index (5, 5, 5) -> RAS (10-5, 20-5, -30+10) = (5, 15, -20) -> LPS (-5, -15, -20)
    assert (r["center_lps_x_mm"], r["center_lps_y_mm"], r["center_lps_z_mm"]) == (-5.0, -15.0, -20.0)
    assert r["volume_mm3"] == 54.0


def test_channels_last_windows_give_the_same_probabilities() -> None:
    import torch
    from monai.inferers import SlidingWindowInferer
    from monai.networks.nets import UNet

    from pipelines.screening.inference import sliding_window_probability
    from pipelines.screening.settings import ScreeningSettings

    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=1, channels=(4, 8), strides=(2,), norm="instance")
    image = torch.rand(1, 40, 40, 40)
    lungs = torch.zeros(40, 40, 40)
    lungs[5:15, 5:15, 5:15] = 1
    probs = []
    for channels_last in (False, True):
        inferer = SlidingWindowInferer(roi_size=(16, 16, 16), sw_batch_size=4, overlap=0.25, mode="gaussian")
        prob, info = sliding_window_probability(
            image,
            lungs,
            network=net,
            inferer=inferer,
            settings=ScreeningSettings(),
            device=torch.device("cpu"),
            channels_last=channels_last,
        )
        probs.append(prob)
    assert info["windows_skipped"] > 0
    assert torch.allclose(probs[0], probs[1], atol=1e-5)
    assert 0.0 < float(probs[0][10, 10, 10]) < 1.0


def test_stack_slices_mirrors_along_z_to_the_requested_count(tmp_path: Path) -> None:
    from pipelines.bench.run import stack_slices

    scan = tiny_chest_ct(tmp_path / "tiny.nii.gz")
    tall = stack_slices(scan, 100, tmp_path / "tall.nii")
    src = sitk.GetArrayFromImage(sitk.ReadImage(str(scan)))
    out = sitk.ReadImage(str(tall))
    arr = sitk.GetArrayFromImage(out)
    assert arr.shape == (100, 64, 64) and out.GetSpacing() == (2.0, 2.0, 2.5)
    assert np.array_equal(arr[:48], src) and np.array_equal(arr[48:96], src[::-1])
    assert np.array_equal(arr[96:], src[:4])


def test_bench_scan_option_names_bad_pairs_and_missing_files(tmp_path: Path) -> None:
    from pipelines.cli.bench import bench_scans
    from pipelines.cli.common import UsageError
    from pipelines.cli.main import build_parser

    scan = tmp_path / "images" / "case.nii.gz"
    scan.parent.mkdir()
    scan.write_bytes(b"")
    a = build_parser().parse_args(["bench", "--scan", f"full={scan}", "--scan", f"other={scan}"])
    assert bench_scans(a.scan) == {"full": str(scan), "other": str(scan)}
    assert bench_scans(None) is None
    with pytest.raises(UsageError, match="NAME=PATH"):
        bench_scans([str(scan)])
    with pytest.raises(UsageError, match="missing.nii.gz does not exist"):
        bench_scans([f"full={tmp_path / 'missing.nii.gz'}"])


def test_quick_bench_skips_variants_and_a_cut_run_leaves_the_comparison(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from pipelines.bench import run as bench

    scan = tiny_chest_ct(tmp_path / "tiny.nii.gz")
    common = dict(inputs={"tiny": scan}, device="cpu", repeats=1, settings=TINY, in_process=True)
    quick = run_bench(
        out_dir=tmp_path / "quick", sweeps=False, variants=False, work_dir=tmp_path / "w1", **common
    )
    entry = quick["scans"]["tiny"]
    assert {"stages", "screen", "baseline"} <= set(entry)
    assert not {"screen_single_pass", "screen_no_second_look", "sw_sweep"} & set(entry)
    assert "end to end" in quick["markdown"]
    assert not (tmp_path / "quick" / "partial.json").exists()  # a finished run leaves only its results

    real_screens = bench._screens

    def variant_dies(runner, name, path, repeats, **extra):  # the machine is taken back mid-variants
        if extra.get("settings"):
            raise TimeoutError("cut short")
        return real_screens(runner, name, path, repeats, **extra)

    monkeypatch.setattr(bench, "_screens", variant_dies)
    with pytest.raises(TimeoutError):
        run_bench(out_dir=tmp_path / "cut", work_dir=tmp_path / "w2", **common)
    saved = json.loads((tmp_path / "cut" / "partial.json").read_text())["scans"]["tiny"]
    assert saved["screen"]["runs"] and sum(saved["baseline"]["stages"].values()) > 0
