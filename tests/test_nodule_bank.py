"""The real-nodule bank: reading crops (refusals included), the split, the cache, and pasting a real nodule."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pipelines.realnodules.bank import (
    build_bank,
    check_crop,
    load_bank,
    save_bank,
    split_of,
)
from pipelines.realnodules.paste import RealNodule, _measured, insert_real_into_array, orient, paste_real
from pipelines.training.paste import RandPasteNodulesd

NODULE_HU = 40


def _write(path: Path, array: np.ndarray, spacing=(0.7, 0.7, 2.5)) -> None:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    img.SetOrigin((-10.0, 20.0, -100.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def _crop(rng: np.random.Generator, *, nz: int = 4, r_mm: float = 3.5) -> tuple[np.ndarray, np.ndarray]:
    """A ball of NODULE_HU in lung at -850 HU, 0.7 mm in-plane, 2.5 mm slices, mask touching the end slices."""
    z, y, x = np.meshgrid(
        (np.arange(nz) - (nz - 1) / 2) * 2.5,
        (np.arange(30) - 14.5) * 0.7,
        (np.arange(30) - 14.5) * 0.7,
        indexing="ij",
    )
    mask = (z**2 + y**2 + x**2 <= (r_mm + 1.25) ** 2) & (y**2 + x**2 <= r_mm**2)
    hu = np.where(mask, NODULE_HU, -850) + rng.normal(0, 5, mask.shape)
    return np.round(hu).astype(np.int16), mask.astype(np.uint8)


@pytest.fixture()
def crops(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    good_hu, good_mask = _crop(rng)
    cases = {
        "P-0001_R_1.nii.gz": ("P-0001", good_hu, good_mask, "Solid", "Absent"),
        "P-0002_R_1.nii.gz": ("P-0002", good_hu, good_mask, "Non-Solid/GGO", "Absent"),
        "P-0003_R_1.nii.gz": ("P-0003", good_hu, np.zeros_like(good_mask), "Solid", "Absent"),
        "P-0004_R_1.nii.gz": ("P-0004", good_hu, np.roll(good_mask, 12, axis=2), "Solid", "Absent"),
        "P-0005_R_1.nii.gz": ("P-0005", (good_hu + 1024).astype(np.int16), good_mask, "Solid", "Absent"),
    }
    for name, (pid, hu, mask, tex, calc) in cases.items():
        _write(tmp_path / "image" / name, hu)
        _write(tmp_path / "nodule_mask" / name, mask)
        rows.append(
            {"file": name, "patient_id": pid, "diameter_mm": "7.0", "Texture": tex, "Calcification": calc}
        )
    _write(tmp_path / "image" / "P-0006_R_1.nii.gz", good_hu)  # no mask file
    _write(tmp_path / "image" / "P-0007_R_1.nii.gz", good_hu)  # no row in the table
    _write(tmp_path / "nodule_mask" / "P-0007_R_1.nii.gz", good_mask)
    rows.append({"file": "P-0006_R_1.nii.gz", "patient_id": "P-0006", "diameter_mm": "7", "Texture": "Solid"})
    with (tmp_path / "nodules.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "patient_id", "diameter_mm", "Texture", "Calcification"])
        w.writeheader()
        w.writerows(rows)
    return tmp_path


def test_bank_reads_good_crops_and_refuses_bad_ones_with_a_reason(crops: Path, tmp_path: Path) -> None:
    bank = build_bank(crops)
    assert sorted(bank.table["file"].tolist()) == ["P-0001_R_1.nii.gz", "P-0002_R_1.nii.gz"]
    reasons = dict(bank.refused)
    assert reasons["P-0003_R_1.nii.gz"] == "empty nodule mask"
    assert "in-plane border" in reasons["P-0004_R_1.nii.gz"]
    assert "not HU" in reasons["P-0005_R_1.nii.gz"]
    assert reasons["P-0006_R_1.nii.gz"].startswith("unreadable")
    assert reasons["P-0007_R_1.nii.gz"] == "no row in nodules.csv"
    assert all("\n" not in r for r in reasons.values())
    # 1 mm grid, HU kept inside, the 4 readers' slices (10 mm) become ~10 mm of mask plus the background pad
    hu, mask = bank.hu[0], bank.mask[0]
    assert hu.dtype == np.int16 and mask.dtype == bool
    core = np.argwhere(mask).mean(axis=0).round().astype(int)
    assert abs(int(hu[tuple(core)]) - NODULE_HU) < 25
    z_extent = np.flatnonzero(mask.any(axis=(1, 2)))
    assert 9 <= len(z_extent) <= 11
    assert mask.shape[0] >= len(z_extent) + 6  # margin in z although the crop had none
    assert hu[0].mean() < -800 and hu[-1].mean() < -800  # padded with the lung background, no hard step
    # cache round trip without pickles
    path = save_bank(bank, tmp_path / "out" / "bank.npz")
    again = load_bank(path)
    assert len(again) == 2 and again.refused == bank.refused
    assert all(np.array_equal(a, b) for a, b in zip(again.hu, bank.hu))
    assert again.row(1)["texture"] == "Non-Solid/GGO"
    np.load(path, allow_pickle=False).close()


def test_bank_refuses_bad_path(tmp_path: Path) -> None:
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.npz: not a nodule bank"):
        load_bank(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError, match="not a nodule folder"):
        build_bank(tmp_path)


def test_check_crop_accepts_a_mask_touching_the_end_slices() -> None:
    hu, mask = _crop(np.random.default_rng(1), nz=2)
    assert mask[0].any() and mask[-1].any()
    assert check_crop(hu.astype(np.float32), mask, (2.5, 0.7, 0.7)) is None


def test_split_is_by_patient_and_fixed() -> None:
    ids = [f"LIDC-IDRI-{i:04d}" for i in range(400)]
    first = [split_of(p) for p in ids]
    assert first == [split_of(p) for p in ids]
    share = first.count("validation") / len(ids)
    assert 0.12 < share < 0.28
    sub = [split_of(p, subsolid=True) for p in ids]
    assert sub.count("validation") > first.count("validation")
    # the subsolid draw only adds patients to validation, never moves one to train
    assert all(s == "validation" for f, s in zip(first, sub) if f == "validation")


def test_recorded_split_file_matches_the_hash() -> None:
    path = Path(__file__).resolve().parents[1] / "monai_bundle" / "docs" / "real_nodule_split.csv"
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) > 300
    assert len({r["patient_id"] for r in rows}) == len(rows)  # no patient on both sides
    for r in rows:
        assert split_of(r["patient_id"], subsolid=r["subsolid"] == "1") == r["split"]


def _nodule(rng: np.random.Generator) -> RealNodule:
    """An asymmetric nodule (a ball with a bump) so that every orientation differs."""
    z, y, x = np.meshgrid(np.arange(13), np.arange(15), np.arange(17), indexing="ij")
    mask = ((z - 6) ** 2 + (y - 7) ** 2 + (x - 8) ** 2 <= 12) | ((z == 6) & (y == 7) & (x >= 8) & (x <= 12))
    mask |= (z == 4) & (y >= 7) & (y <= 11) & (x == 8)
    hu = np.where(mask, 30.0 + rng.normal(0, 20, mask.shape), -870.0).astype(np.float32)
    return RealNodule(index=0, hu=hu, mask=mask)


def test_real_nodule_lands_where_asked_in_every_orientation() -> None:
    rng = np.random.default_rng(3)
    base = _nodule(rng)
    for flips in itertools.product([False, True], repeat=3):
        for turns in range(4):
            hu_n, mask_n = orient(base.hu, base.mask, flips=flips, turns=turns)
            nod = _measured(RealNodule(index=0, hu=hu_n, mask=mask_n))
            host = np.full((40, 40, 40), -850.0, np.float32)
            label = np.zeros(host.shape, np.uint8)
            c_n = np.argwhere(mask_n).mean(axis=0)
            corner = np.array([10, 12, 9])
            n = paste_real(host, label, nod, corner + c_n, spacing_zyx=(1.0, 1.0, 1.0), label_value=3)
            box = tuple(slice(a, a + s) for a, s in zip(corner, mask_n.shape))
            assert n == mask_n.sum()
            assert np.array_equal(label[box] == 3, mask_n)
            assert label.sum() == 3 * mask_n.sum()
            np.testing.assert_allclose(host[box][mask_n], hu_n[mask_n], atol=1e-3)
            far = np.ones(host.shape, bool)
            far[tuple(slice(a - 3, a + s + 3) for a, s in zip(corner, mask_n.shape))] = False
            assert np.all(host[far] == -850.0)  # the feathered edge stays near the nodule


def test_real_nodule_on_a_coarser_grid_keeps_its_size() -> None:
    nod = _measured(_nodule(np.random.default_rng(4)))
    host = np.full((20, 40, 40), -850.0, np.float32)
    label = np.zeros(host.shape, np.uint8)
    paste_real(host, label, nod, (10.0, 20.0, 20.0), spacing_zyx=(2.5, 0.7, 0.7))
    volume = label.sum() * 2.5 * 0.7 * 0.7
    assert 0.7 < volume / nod.mask.sum() < 1.3
    assert host[label > 0].mean() > -500  # solid after partial volume


def _lung_patch() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    hu = np.full((48, 48, 48), -850.0, np.float32) + rng.normal(0, 20, (48, 48, 48)).astype(np.float32)
    lungs = np.zeros(hu.shape, np.float32)
    lungs[3:45, 3:45, 3:45] = 1
    hu[lungs == 0] = 40.0
    scaled = (hu + 1000.0) / 1500.0
    return {"image": scaled[None], "label": np.zeros((1, *hu.shape), np.float32), "lungs": lungs[None]}


def test_rand_paste_draws_real_nodules_from_the_bank(crops: Path) -> None:
    bank = build_bank(crops)
    t = RandPasteNodulesd(
        prob=1.0, max_count=2, bank=bank, bank_split="all", real_share=1.0, scale_jitter=0.0
    )
    t.set_random_state(seed=1)
    found = 0
    for _ in range(4):
        out = t(_lung_patch())
        lab = out["label"][0] > 0
        if not lab.any():
            continue
        found += 1
        hu = out["image"][0] * 1500.0 - 1000.0
        from scipy import ndimage

        core = ndimage.binary_erosion(lab, iterations=1)
        assert abs(float(np.median(hu[core])) - NODULE_HU) < 60  # the nodule's own HU
        sizes = ndimage.sum_labels(lab, ndimage.label(lab)[0], index=[1])
        assert 0.6 * bank.mask[0].sum() < sizes[0] < 1.5 * bank.mask[0].sum()
    assert found >= 2


def test_rand_paste_weights_subsolid_real_nodules(crops: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bank = build_bank(crops)
    textures = [str(bank.table["texture"][i]) for i in bank.indices("all")]
    assert sorted(textures) == ["Non-Solid/GGO", "Solid"]
    uniform = RandPasteNodulesd(bank=bank, bank_split="all", real_share=1.0)
    assert uniform.bank_p is None  # weight 1: the draw of earlier recipes, unchanged
    weighted = RandPasteNodulesd(bank=bank, bank_split="all", real_share=1.0, subsolid_weight=4.0)
    assert weighted.bank_p is not None
    p = dict(zip(textures, weighted.bank_p.tolist(), strict=True))
    assert p["Non-Solid/GGO"] == pytest.approx(0.8) and p["Solid"] == pytest.approx(0.2)
    import pipelines.training.paste as tp

    drawn: list[int] = []
    monkeypatch.setattr(tp, "_paste_one_real", lambda hu, label, rng, bank, i, **kw: drawn.append(i))
    patch = _lung_patch()
    weighted.set_random_state(seed=3)
    weighted.prob = 1.0
    for _ in range(60):
        weighted(patch)
    ggo = int(bank.indices("all")[textures.index("Non-Solid/GGO")])
    assert len(drawn) >= 60 and 0.65 < drawn.count(ggo) / len(drawn) < 0.97  # 0.8 expected, 0.5 uniform
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="subsolid_weight"):
            RandPasteNodulesd(bank=bank, bank_split="all", real_share=1.0, subsolid_weight=bad)


def test_rand_paste_refuses_bad_share() -> None:
    with pytest.raises(ValueError, match="real_share"):
        RandPasteNodulesd(real_share=1.5)


def test_insert_real_into_array_keeps_existing_nodules(crops: Path) -> None:
    bank = build_bank(crops)
    hu = np.full((40, 80, 80), -850.0, np.float32)
    lungs = np.zeros(hu.shape, np.uint8)
    lungs[4:36, 8:72, 8:38], lungs[4:36, 8:72, 42:72] = 1, 2
    hu[lungs == 0] = 40
    old = np.zeros(hu.shape, np.int32)
    old[18:21, 38:41, 20:23] = 1
    new_hu, labels, placed = insert_real_into_array(
        hu, lungs, old, (1.5, 1.0, 1.0), bank, [0, 1], np.random.default_rng(0), n=2, pleural_share=0.0
    )
    assert len(placed) == 2
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    assert np.array_equal(labels == 1, old == 1)
    for k in (2, 3):
        assert np.median(new_hu[labels == k]) > -300
    from scipy import ndimage

    outside = ~ndimage.binary_dilation(lungs > 0, iterations=2)
    assert np.all(new_hu[outside] == 40)  # free in the lung: nothing pasted into the wall


def test_cli_builds_a_bank_and_names_refusals(
    crops: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from pipelines.cli.main import main

    out = tmp_path / "b" / "bank.npz"
    assert main(["nodule-bank", str(crops), str(out), "--split-file", str(tmp_path / "split.csv")]) == 0
    text = capsys.readouterr().out
    assert "refused P-0003_R_1.nii.gz: empty nodule mask" in text
    assert len(load_bank(out)) == 2
    assert (tmp_path / "split.csv").read_text().startswith("patient_id,split,subsolid,nodules\n")


def _host_scan(folder: Path, name: str) -> Path:
    """A 40x80x80 chest-like host (two lungs at -850 HU in 40 HU tissue) and its lung mask ``lungs.nii.gz``."""
    hu = np.full((40, 80, 80), 40, np.int16)
    lungs = np.zeros(hu.shape, np.uint8)
    lungs[4:36, 8:72, 8:38], lungs[4:36, 8:72, 42:72] = 1, 2
    hu[lungs > 0] = -850
    for file, arr in ((name, hu), ("lungs.nii.gz", lungs)):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((0.8, 0.8, 1.5))
        sitk.WriteImage(img, str(folder / file))
    return folder / name


def _inserted(crops: Path, folder: Path, name: str) -> Path:
    """Two bank nodules (seed 3) inserted into :func:`_host_scan` ``name``; the dataset folder."""
    from pipelines.realnodules.insert import insert_real_nodules

    host = _host_scan(folder, name)
    lungs = folder / "lungs.nii.gz"
    return insert_real_nodules(host, folder / "set", crops, n=2, seed=3, split="all", lung_mask_path=lungs)


def test_insert_real_nodules_writes_a_labelled_case(crops: Path, tmp_path: Path) -> None:
    out = _inserted(crops, tmp_path, "ct.nii.gz")
    with (out / "cases.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["type"] for r in rows] and {r["type"] for r in rows} <= {"Solid", "Non-Solid/GGO"}
    assert all(r["location"].startswith("real-") for r in rows)
    with (out / "real_nodules.csv").open() as f:
        real = list(csv.DictReader(f))
    assert len(real) == len(rows) and {r["patient_id"] for r in real} <= {"P-0001", "P-0002"}
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels" / "ct_real_s3.nii.gz")))
    assert labels.max() == len(rows)
    assert [r["diameter_mm"] for r in real] == [f"{float(r['diameter_mm']):.2f}" for r in real]
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "images" / "ct_real_s3.nii.gz")))
    assert np.median(image[labels == 1]) > -300


def test_bundle_train_config_hands_the_bank_to_the_paste(crops: Path, tmp_path: Path) -> None:
    from pipelines.bundle import load_workflow

    path = save_bank(build_bank(crops), tmp_path / "bank.npz")
    overrides = {
        "dataset_dir": str(tmp_path),
        "train#paste_bank": str(path.resolve()),
        "train#paste_real_share": 0.7,
        "train#paste_bank_split": "all",
        "train#paste_subsolid_weight": 3.0,
    }
    wf = load_workflow(["inference.json", "train.json"], workflow_type="train", overrides=overrides)
    paste = [t for t in wf.parser.get_parsed_content("train#random") if isinstance(t, RandPasteNodulesd)]
    assert len(paste) == 1 and paste[0].real_share == 0.7
    assert paste[0].bank_p is not None and sorted(paste[0].bank_p.tolist()) == pytest.approx([0.25, 0.75])
    assert paste[0].bank is not None and len(paste[0].bank) == 2
    default = load_workflow(
        ["inference.json", "train.json"], workflow_type="train", overrides={"dataset_dir": "x"}
    )
    plain = [t for t in default.parser.get_parsed_content("train#random") if isinstance(t, RandPasteNodulesd)]
    assert plain[0].bank is None and plain[0].real_share == 0.0 and plain[0].bank_p is None


def test_real_nodule_tables_of_a_hostile_host_name(crops: Path, tmp_path: Path) -> None:
    """A host scan named like a formula, with a comma: every table cell stays text and parses back."""
    out = _inserted(crops, tmp_path, "=x,y.nii.gz")
    with (out / "real_nodules.csv").open() as f:
        real = list(csv.DictReader(f))
    assert real and {r["seriesuid"] for r in real} == {"'=x,y_real_s3"}
    assert all(float(r["diameter_mm"]) > 0 for r in real)
    with (out / "annotations.csv").open() as f:
        assert {r["seriesuid"] for r in csv.DictReader(f)} == {"'=x,y_real_s3"}


def test_insert_real_nodules_draws_no_excluded_patient(crops: Path, tmp_path: Path) -> None:
    from pipelines.realnodules.insert import insert_real_nodules

    host = _host_scan(tmp_path, "ct.nii.gz")
    lungs = tmp_path / "lungs.nii.gz"
    out = insert_real_nodules(
        host,
        tmp_path / "set",
        crops,
        n=3,
        seed=3,
        split="all",
        lung_mask_path=lungs,
        exclude_patients={"P-0001"},
    )
    with (out / "real_nodules.csv").open() as f:
        assert {r["patient_id"] for r in csv.DictReader(f)} == {"P-0002"}
    with pytest.raises(ValueError, match="outside the 2 excluded patients"):
        insert_real_nodules(
            host, tmp_path / "none", crops, n=1, seed=3, split="all", exclude_patients=["P-0001", "P-0002"]
        )


def test_inserted_real_nodules_stay_inside_the_field_of_view(crops: Path) -> None:
    """A cropped scan whose lungs run into the image's edges: no nodule is cut by the edge."""
    bank = build_bank(crops)
    hu = np.full((24, 40, 40), -850.0, np.float32)
    lungs = np.ones(hu.shape, np.uint8)  # lung everywhere, up to every edge of the image
    for seed in range(6):
        _, labels, placed = insert_real_into_array(
            hu, lungs, np.zeros(hu.shape, np.int32), (1.5, 1.0, 1.0), bank, [0, 1],
            np.random.default_rng(seed), n=2, pleural_share=0.0,
        )  # fmt: skip
        assert placed
        for k in range(1, int(labels.max()) + 1):
            idx = np.argwhere(labels == k)
            assert idx.min() > 0 and (idx.max(axis=0) < np.asarray(labels.shape) - 1).all()
