"""Writing phantom datasets in a LUNA16-like layout, and the preview montage.

Layout of ``OUT``::

    images/<case_id>.nii.gz   (or .mhd + .raw)   CT int16 HU / MRI float32
    labels/<case_id>.nii.gz   nodule instance masks 1..N, same geometry as the image
    lungs/<case_id>.nii.gz    lung labels 0 background, 1 right, 2 left
    annotations.csv           seriesuid,coordX,coordY,coordZ,diameter_mm   (LPS world mm, as LUNA16)
    seriesuids.csv            one case id per line, no header
    cases.csv                 one row per nodule (type, location, size, solid part, centre, mean HU)
    datalist.json             MONAI datalist with training / validation / test, paths relative to OUT
    preview.png               (optional) montage of slices through nodules
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from pipelines.imaging.filesys import atomic_write_text, csv_rows_text, csv_safe
from pipelines.imaging.io import write_image

CASES_COLUMNS = (
    "seriesuid",
    "nodule_id",
    "type",
    "location",
    "diameter_mm",
    "solid_component_mm",
    "coordX",
    "coordY",
    "coordZ",
    "mean_hu",
)


def case_seed(seed: int, index: int) -> int:
    """The generator seed of case ``index`` of a dataset made with ``seed`` (stable across versions of numpy)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def split_ids(ids: list[str], *, seed: int, splits: tuple[float, float, float]) -> dict[str, list[str]]:
    """Deterministic training/validation/test split; validation and test get a case each once n >= 3."""
    if len(splits) != 3 or min(splits) < 0 or sum(splits) <= 0:
        raise ValueError(f"splits must be three non-negative fractions, not {splits}")
    n = len(ids)
    order = list(np.random.default_rng(seed).permutation(n))
    frac = np.asarray(splits, dtype=float) / float(sum(splits))
    n_val = int(round(frac[1] * n))
    n_test = int(round(frac[2] * n))
    if n >= 3:
        n_val = max(n_val, 1) if frac[1] > 0 else 0
        n_test = max(n_test, 1) if frac[2] > 0 else 0
    n_val = min(n_val, max(n - 1, 0))
    n_test = min(n_test, max(n - 1 - n_val, 0))
    val = sorted(ids[i] for i in order[:n_val])
    test = sorted(ids[i] for i in order[n_val : n_val + n_test])
    train = sorted(ids[i] for i in order[n_val + n_test :])
    return {"training": train, "validation": val, "test": test}


def _fmt(v: float) -> str:
    return f"{v:.4f}"


def write_case(
    out: Path, case_id: str, image: sitk.Image, lungs: sitk.Image, labels: sitk.Image, *, fmt: str
) -> dict[str, str]:
    """Write one case's image, nodule labels and lung labels; return its datalist entry (paths relative to ``out``)."""
    ext = ".nii.gz" if fmt == "nii" else ".mhd"
    entry = {
        "image": f"images/{case_id}{ext}",
        "label": f"labels/{case_id}{ext}",
        "lung": f"lungs/{case_id}{ext}",
        "seriesuid": case_id,
    }
    for key, img in (("image", image), ("label", labels), ("lung", lungs)):
        write_image(img, out / entry[key], compress=(fmt == "nii"))
    return entry


#: Version of the phantom generator's output, written to every dataset it makes (``generator.json``).
#: 2 (v0.7.0): nodules are placed only where most of each shows (:data:`pipelines.phantom.nodules.MIN_VISIBLE`).
GENERATOR_VERSION = 2
GENERATOR_FILE = "generator.json"


def generator_version(dataset: str | Path) -> int | None:
    """The phantom generator version a dataset was made with; None for a dataset the generator did not make.

    Datasets of the generator hold ``cases.csv``; those made before the version stamp existed count as 1.
    """
    d = Path(dataset)
    stamp = d / GENERATOR_FILE
    if stamp.is_file():
        try:
            return int(json.loads(stamp.read_text())["phantom_generator"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{stamp}: not a generator stamp ({e})") from e
    return 1 if (d / "cases.csv").is_file() else None


def stale_dataset_warning(dataset: str | Path) -> str | None:
    """A one-line warning when ``dataset`` was made by an older phantom generator, else None."""
    v = generator_version(dataset)
    if v is None or v >= GENERATOR_VERSION:
        return None
    return (
        f"warning: {dataset} was made by phantom generator {v}, this lungscreen's is {GENERATOR_VERSION} "
        "(v0.7.0 no longer hides nodules inside vessels or the chest wall); delete the folder and make it again"
    )


def _write_generator_stamp(out: Path, version: int) -> None:
    atomic_write_text(out / GENERATOR_FILE, json.dumps({"phantom_generator": int(version)}) + "\n")


def _sources_version(sources: list[Path]) -> int | None:
    versions = [v for v in (generator_version(s) for s in sources) if v is not None]
    return min(versions) if versions else None


def write_tables(
    out: Path,
    ids: list[str],
    tables: dict[str, list[dict[str, Any]]],
    entries: dict[str, dict[str, str]],
    *,
    seed: int,
    splits: tuple[float, float, float],
) -> None:
    """Write annotations.csv, seriesuids.csv, cases.csv and datalist.json for the cases in ``ids``."""
    ann, cases = [], []
    for cid in ids:
        for r in tables[cid]:
            x, y, z = r["center_lps_mm"]
            ann.append([cid, _fmt(x), _fmt(y), _fmt(z), f"{r['diameter_mm']:.2f}"])
            cases.append(
                [
                    cid,
                    r["nodule_id"],
                    r["type"],
                    r["location"],
                    f"{r['diameter_mm']:.2f}",
                    f"{r['solid_component_mm']:.2f}",
                    _fmt(x),
                    _fmt(y),
                    _fmt(z),
                    f"{r['mean_hu']:.1f}",
                ]
            )
    atomic_write_text(
        out / "annotations.csv",
        csv_rows_text(ann, ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]),
    )
    atomic_write_text(out / "seriesuids.csv", "".join(f"{csv_safe(c)}\n" for c in ids))
    atomic_write_text(out / "cases.csv", csv_rows_text(cases, CASES_COLUMNS))
    parts = split_ids(ids, seed=seed, splits=splits)
    datalist = {k: [entries[c] for c in v] for k, v in parts.items()}
    atomic_write_text(out / "datalist.json", json.dumps(datalist, indent=2) + "\n")
    _write_generator_stamp(out, GENERATOR_VERSION)


def _make_case(
    args: tuple[Path, int, int, str, str, str],
) -> tuple[str, dict[str, str], list[dict[str, Any]]]:
    from pipelines.phantom.generate import generate_case

    out, seed, i, size, modality, fmt = args
    cid = f"phantom_s{seed}_{i:04d}"
    case = generate_case(seed=case_seed(seed, i), size=size, modality=modality, with_tissue=False)
    return cid, write_case(out, cid, case.image, case.lungs, case.nodules, fmt=fmt), case.nodules_table


def make_dataset(
    out_dir: str | Path,
    *,
    n: int,
    seed: int,
    size: str = "small",
    modality: str = "ct",
    fmt: str = "nii",
    preview: bool = False,
    splits: tuple[float, float, float] = (0.6, 0.2, 0.2),
    workers: int = 1,
    first: int = 0,
) -> Path:
    """Generate and write ``n`` cases (see the module docstring for the layout); deterministic for ``seed``.

    ``workers`` > 1 generates cases in that many processes; the bytes written do not depend on it.
    ``first`` > 0 writes cases ``first .. first + n - 1`` of the dataset of ``seed`` (the same bytes as
    those cases of a larger dataset), e.g. to reproduce one case without generating the ones before it.
    """
    if fmt not in ("nii", "mhd"):
        raise ValueError(f"fmt must be 'nii' or 'mhd', not {fmt!r}")
    if n < 1 or first < 0:
        raise ValueError(f"n must be at least 1 and first at least 0, not n={n}, first={first}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(out, seed, i, size, modality, fmt) for i in range(first, first + n)]
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(workers, n)) as pool:
            results = list(pool.map(_make_case, jobs))
    else:
        results = [_make_case(j) for j in jobs]
    ids = [cid for cid, _, _ in results]
    entries = {cid: entry for cid, entry, _ in results}
    tables = {cid: table for cid, _, table in results}
    write_tables(out, ids, tables, entries, seed=seed, splits=splits)
    if preview:
        save_preview(out, out / "preview.png")
    return out


def _read_canonical(path: Path) -> sitk.Image:
    return sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS")


def _panels(root: Path, max_panels: int) -> list[tuple[str, int | None, dict[str, str]]]:
    """(case id, nodule id or None, row) for up to ``max_panels`` slices, spreading over cases."""
    datalist = json.loads((root / "datalist.json").read_text())
    ids = [e["seriesuid"] for part in ("training", "validation", "test") for e in datalist.get(part, [])]
    by_case: dict[str, list[dict[str, str]]] = {c: [] for c in ids}
    if (root / "cases.csv").exists():
        with open(root / "cases.csv", newline="") as f:
            for row in csv.DictReader(f):
                by_case.setdefault(row["seriesuid"], []).append(row)
    panels: list[tuple[str, int | None, dict[str, str]]] = []
    depth = 0
    while len(panels) < max_panels and depth < 20:
        for cid in sorted(by_case):
            rows = by_case[cid]
            if depth < len(rows):
                panels.append((cid, int(rows[depth]["nodule_id"]), rows[depth]))
            elif depth == 0:
                panels.append((cid, None, {}))
            if len(panels) >= max_panels:
                break
        depth += 1
    return panels


def save_preview(
    dataset_dir: str | Path, png_path: str | Path, *, max_panels: int = 12, dpi: int = 64
) -> Path:
    """Montage PNG of axial slices through nodules (lung window for CT), each nodule outlined and captioned.

    Args:
        dataset_dir: a folder written by :func:`make_dataset`.
        png_path: output PNG path.
        max_panels: number of slices shown.
        dpi: resolution of the PNG (64 keeps a 12-panel montage under ~500 KB).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = Path(dataset_dir)
    datalist = json.loads((root / "datalist.json").read_text())
    entries = {e["seriesuid"]: e for part in datalist.values() for e in part}
    panels = _panels(root, max_panels)
    cols = min(4, max(1, len(panels)))
    rows = int(np.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.2 * rows), squeeze=False)
    cache: dict[str, tuple[np.ndarray, np.ndarray, sitk.Image]] = {}
    for ax, (cid, nid, row) in zip(axes.ravel(), panels):
        if cid not in cache:
            img = _read_canonical(root / entries[cid]["image"])
            lab = sitk.GetArrayFromImage(_read_canonical(root / entries[cid]["label"]))
            cache = {cid: (sitk.GetArrayFromImage(img), lab, img)}
        arr, lab, img = cache[cid]
        ct = arr.dtype == np.int16
        if nid is None:
            k, title = arr.shape[0] // 2, f"{cid}: no nodule"
        else:
            k = int(
                round(
                    img.TransformPhysicalPointToContinuousIndex(
                        [float(row[c]) for c in ("coordX", "coordY", "coordZ")]
                    )[2]
                )
            )
            title = f"{row['type']} {row['location']} {float(row['diameter_mm']):.1f} mm"
        k = int(np.clip(k, 0, arr.shape[0] - 1))
        vmin, vmax = (-1350, 150) if ct else tuple(np.percentile(arr, [1, 99.5]))
        sp = img.GetSpacing()
        ax.imshow(arr[k], cmap="gray", vmin=vmin, vmax=vmax, aspect=sp[1] / sp[0], interpolation="bilinear")
        if nid is not None and (lab[k] == nid).any():
            ax.contour(lab[k] == nid, levels=[0.5], colors="yellow", linewidths=0.8)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    for ax in axes.ravel()[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    out = Path(png_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def merge_datasets(sources: list[str | Path], out_dir: str | Path) -> Path:
    """Merge datasets in the :func:`make_dataset` layout into ``out_dir`` (tables and datalist only).

    Images stay where they are: the merged ``datalist.json`` holds absolute paths, each source keeps its own
    training/validation/test split, and ``annotations.csv``, ``cases.csv`` and ``seriesuids.csv`` are
    concatenated. Series ids must be unique across sources.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    datalist: dict[str, list[dict[str, str]]] = {}
    tables: dict[str, list[str]] = {"annotations.csv": [], "cases.csv": [], "seriesuids.csv": []}
    headers: dict[str, str] = {}
    seen: set[str] = set()
    for src in map(Path, sources):
        for split, items in json.loads((src / "datalist.json").read_text()).items():
            for item in items:
                uid = item["seriesuid"]
                if uid in seen:
                    raise ValueError(f"series {uid} appears in more than one source ({src})")
                seen.add(uid)
                abs_item = {k: (str((src / v).resolve()) if k != "seriesuid" else v) for k, v in item.items()}
                datalist.setdefault(split, []).append(abs_item)
        for name in tables:
            lines = (src / name).read_text().splitlines() if (src / name).exists() else []
            if name != "seriesuids.csv" and lines:
                headers[name], lines = lines[0], lines[1:]
            tables[name] += [ln for ln in lines if ln.strip()]
    for name, lines in tables.items():
        head = [headers[name]] if name in headers else []
        atomic_write_text(out / name, "".join(f"{ln}\n" for ln in head + lines))
    atomic_write_text(out / "datalist.json", json.dumps(datalist, indent=2) + "\n")
    version = _sources_version([Path(s) for s in sources])
    if version is not None:  # a merge is as old as its oldest phantom source
        _write_generator_stamp(out, version)
    return out


SPLITS = ("training", "validation", "test")


def held_out_set(sources: list[tuple[str | Path, tuple[str, ...]]], out_dir: str | Path) -> Path:
    """Gather the given splits of datasets into one evaluation folder (the settings-choosing validation set).

    ``sources`` pairs a dataset folder (:func:`make_dataset` layout) with the splits to take from it. The
    images, labels and lung masks are linked (symbolic links, nothing copied) into ``out_dir/images``,
    ``labels`` and ``lungs`` (links left there by an earlier, different selection are removed; other files are
    never touched); ``annotations.csv``, ``cases.csv`` and ``seriesuids.csv`` keep only those
    series; ``datalist.json`` lists them all under ``test``. The result is what ``make evaluate`` and
    ``lungscreen evaluate --ref-dir`` read.

    Raises:
        ValueError: an unknown split name, a series taken twice, or a source without ``datalist.json``.
    """
    out = Path(out_dir)
    picked: list[tuple[Path, dict[str, str]]] = []
    for src, splits in sources:
        src = Path(src)
        bad = sorted(set(splits) - set(SPLITS))
        if bad:
            raise ValueError(f"unknown split(s) {bad} for {src}; splits are {list(SPLITS)}")
        listing = src / "datalist.json"
        if not listing.is_file():
            raise ValueError(f"{src} has no datalist.json (generate it with `lungscreen sample-data`)")
        items = json.loads(listing.read_text())
        picked += [(src, item) for split in splits for item in items.get(split, [])]
    uids = [item["seriesuid"] for _, item in picked]
    dupes = sorted({u for u in uids if uids.count(u) > 1})
    if dupes:
        raise ValueError(f"series taken more than once: {dupes}")
    entries = []
    created: set[Path] = set()
    for src, item in picked:
        entry = {"seriesuid": item["seriesuid"]}
        for key, value in item.items():
            if key == "seriesuid":
                continue
            target = (src / value).resolve()
            link = out / Path(value).parent.name / target.name
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target)
            created.add(link)
            entry[key] = str(link.relative_to(out))
        entries.append(entry)
    for folder in {link.parent for link in created}:  # links of an earlier, different selection go
        for stale in folder.iterdir():
            if stale.is_symlink() and stale not in created:
                stale.unlink()
    keep = set(uids)
    for name in ("annotations.csv", "cases.csv", "seriesuids.csv"):
        lines: list[str] = []
        for src in dict.fromkeys(Path(s) for s, _ in sources):
            rows = (src / name).read_text().splitlines() if (src / name).exists() else []
            if name != "seriesuids.csv" and rows:
                lines = lines or [rows[0]]
                rows = rows[1:]
            lines += [r for r in rows if r.split(",", 1)[0] in keep]
        atomic_write_text(out / name, "".join(f"{ln}\n" for ln in lines))
    atomic_write_text(out / "datalist.json", json.dumps({"test": entries}, indent=2) + "\n")
    version = _sources_version([Path(s) for s, _ in sources])
    if version is not None:
        _write_generator_stamp(out, version)
    return out
