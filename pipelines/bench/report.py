"""Detection matching and the Markdown table of a :func:`pipelines.bench.run.run_bench` result."""

from __future__ import annotations

from typing import Any

import numpy as np

STAGES = (
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
)
GIB = 1024.0**3


def centres(rows: list[dict[str, Any]]) -> np.ndarray:
    """``[n, 3]`` world LPS centres (mm) of detection rows."""
    keys = ("center_lps_x_mm", "center_lps_y_mm", "center_lps_z_mm")
    return np.asarray([[float(r[k]) for k in keys] for r in rows], float).reshape(-1, 3)


def match_centres(a: np.ndarray, b: np.ndarray, *, radius_mm: float) -> list[tuple[int, int]]:
    """Greedy one-to-one matching of centre sets (closest pairs first) within ``radius_mm``."""
    if len(a) == 0 or len(b) == 0:
        return []
    dist = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
    pairs: list[tuple[int, int]] = []
    used_a: set[int] = set()
    used_b: set[int] = set()
    for flat in np.argsort(dist, axis=None):
        i, j = np.unravel_index(flat, dist.shape)
        if dist[i, j] > radius_mm:
            break
        if i not in used_a and j not in used_b:
            pairs.append((int(i), int(j)))
            used_a.add(int(i))
            used_b.add(int(j))
    return pairs


def compare_detections(entry: dict[str, Any], *, radius_mm: float) -> dict[str, Any]:
    """Compare our detections (``screen()`` candidates) with the baseline's and with the reference nodules.

    ``same`` compares the network's candidates only: both paths run the same network and weights, so they
    should find the same ones; our second-look marks (``source`` ``second_look``, which the baseline has no
    counterpart for) are counted apart and take part only in ``ours_hits_truth``.
    """
    runs = [r for r in entry.get("screen", {}).get("runs", []) if "error" not in r]
    rows = runs[0]["detections"] if runs else None
    base = entry.get("baseline", {})
    theirs = centres(base["detections"]) if "detections" in base else None
    truth = centres(entry.get("truth", []))
    out: dict[str, Any] = {"radius_mm": radius_mm, "truth": len(truth)}
    ours = None
    if rows is not None:
        network_rows = [r for r in rows if r.get("source", "network") != "second_look"]
        ours = centres(network_rows)
        out["ours"] = len(ours)
        out["ours_second_look"] = len(rows) - len(network_rows)
        out["ours_hits_truth"] = len(match_centres(truth, centres(rows), radius_mm=radius_mm))
    if theirs is not None:
        out["baseline"] = len(theirs)
        out["baseline_hits_truth"] = len(match_centres(truth, theirs, radius_mm=radius_mm))
    if ours is not None and theirs is not None:
        n = len(match_centres(ours, theirs, radius_mm=radius_mm))
        out.update(matched=n, ours_only=len(ours) - n, baseline_only=len(theirs) - n)
        out["same"] = n == len(ours) == len(theirs)
    return out


def _s(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or b is None or b <= 0 else f"{a / b:.2f}"


def _gib(v: float | None) -> str:
    return "—" if not v else f"{v / GIB:.2f} GiB"


def scan_table(name: str, entry: dict[str, Any]) -> list[str]:
    """The per-scan table: stage, ours, baseline, ratio; end to end; peak memory; detections."""
    st = entry.get("stages", {})
    base = entry.get("baseline", {})
    ours_st, base_st = st.get("stages", {}), base.get("stages", {})
    lines = [
        f"### {name}: {'x'.join(map(str, entry.get('size_xyz', [])))} voxels (x, y, z)",
        "",
        "| stage | ours (s) | baseline (s) | ratio ours/baseline | ours CPU (s) | baseline CPU (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    ours_cpu, base_cpu = st.get("stages_cpu", {}), base.get("stages_cpu", {})
    for s in STAGES:
        o, b = ours_st.get(s), base_st.get(s)
        if o is None and b is None:
            continue
        lines.append(
            f"| {s} | {_s(o)} | {_s(b)} | {_ratio(o, b)} | {_s(ours_cpu.get(s))} | {_s(base_cpu.get(s))} |"
        )
    o_sum = sum(ours_st.values()) if ours_st else None
    b_sum = sum(base_st.values()) if base_st else None
    oc_sum = sum(ours_cpu.values()) if ours_cpu else None
    bc_sum = sum(base_cpu.values()) if base_cpu else None
    lines.append(
        f"| sum of stages | {_s(o_sum)} | {_s(b_sum)} | {_ratio(o_sum, b_sum)} | {_s(oc_sum)} | {_s(bc_sum)} |"
    )
    scr = entry.get("screen", {})
    med = scr.get("median_seconds")
    ok, med_cpu = _ok_runs_and_median_cpu(scr)
    lines.append(
        f"| **end to end** (ours: `screen()` median of {len(ok)}; baseline: its chain) | **{_s(med)}** | "
        f"**{_s(b_sum)}** | **{_ratio(med, b_sum)}** | {_s(med_cpu)} | {_s(bc_sum)} |"
    )
    variants = (
        ("screen_mirror_all", "mirroring every window (`mirror_scope=all`"),
        (
            "screen_mirror_candidates",
            "mirroring only the windows of first-pass candidates (`mirror_scope=candidates`",
        ),
        ("screen_single_pass", "one network pass per window like the baseline (`mirror_axes` off"),
        ("screen_no_second_look", "without second-look candidates (`second_look` off"),
        ("screen_single_scale", "without the finer second grid (`fine_spacing_mm` null"),
    )
    for key, label in variants:
        runs = entry.get(key)
        if not runs:
            continue
        ok1, s_cpu = _ok_runs_and_median_cpu(runs)
        s_med = runs.get("median_seconds")
        lines.append(
            f"| end to end, {label}; median of {len(ok1)}) | {_s(s_med)} | {_s(b_sum)} | "
            f"{_ratio(s_med, b_sum)} | {_s(s_cpu)} | {_s(bc_sum)} |"
        )
    imports = [r["import_seconds"] for r in ok if "import_seconds" in r]
    if imports or "import_seconds" in base:
        o_imp = float(np.median(imports)) if imports else None
        lines.append(
            f"| Python imports, before either clock (not in the rows above) | {_s(o_imp)} | "
            f"{_s(base.get('import_seconds'))} | | | |"
        )
    lines.append(
        f"| peak RSS (per process) | {_gib(scr.get('max_peak_rss_bytes'))} | {_gib(base.get('peak_rss_bytes'))} | "
        f"{_ratio(scr.get('max_peak_rss_bytes'), base.get('peak_rss_bytes'))} | | |"
    )
    if scr.get("max_peak_gpu_bytes") or base.get("peak_gpu_bytes"):
        lines.append(
            f"| peak GPU memory | {_gib(scr.get('max_peak_gpu_bytes'))} | {_gib(base.get('peak_gpu_bytes'))} | "
            f"{_ratio(scr.get('max_peak_gpu_bytes'), base.get('peak_gpu_bytes'))} | | |"
        )
    lines += ["", *_notes(entry)]
    return lines


def _ok_runs_and_median_cpu(screens: dict[str, Any]) -> tuple[list[dict[str, Any]], float | None]:
    """The successful runs of a ``screen`` entry and their median CPU seconds (None when none succeeded)."""
    ok = [r for r in screens.get("runs", []) if "error" not in r]
    return ok, (sorted(r["cpu_seconds"] for r in ok)[len(ok) // 2] if ok else None)


def _notes(entry: dict[str, Any]) -> list[str]:
    st, base, m = entry.get("stages", {}), entry.get("baseline", {}), entry.get("detection_match", {})
    notes = []
    if "windows_run" in st:
        notes.append(
            f"- ours: network grid {st.get('network_shape_zyx')} (z, y, x) at 1 mm (lung crop), "
            f"{st['windows_run']} windows run, {st['windows_skipped']} skipped (no lung); stage-run peak RSS "
            f"{_gib(st.get('peak_rss_bytes'))}"
        )
        mirror = st.get("mirror", {})
        if mirror.get("axes"):
            notes.append(
                f"- ours: test-time mirroring along {mirror['axes']!r}, scope {mirror.get('scope')!r}: "
                f"{st.get('windows_mirrored', 0)} of {st['windows_run']} windows mirrored"
            )
        fine = st.get("fine") or {}
        if fine:
            notes.append(
                f"- ours: second grid at {fine['spacing_mm']} mm, scope {fine['scope']!r}: {fine['windows_run']} "
                f"windows run, {fine['windows_skipped']} skipped, {fine['windows_mirrored']} mirrored"
            )
    if "network_shape_zyx" in base:
        notes.append(f"- baseline: network grid {base['network_shape_zyx']} (z, y, x) at 1 mm (whole volume)")
    for key in ("stages", "screen", "baseline"):
        err = entry.get(key, {}).get("error")
        if err:
            notes.append(f"- **{key} failed**: {err}")
    if "same" in m:
        notes.append(
            f"- network candidates (centres within {m['radius_mm']} mm): ours {m['ours']}, baseline "
            f"{m['baseline']}, matched {m['matched']} -> **{'same' if m['same'] else 'different'}**; ours also "
            f"{m.get('ours_second_look', 0)} second-look mark(s); reference nodules {m['truth']}: ours hit "
            f"{m['ours_hits_truth']} (all marks), baseline hit {m['baseline_hits_truth']}"
        )
    return notes


def sweep_table(entry: dict[str, Any]) -> list[str]:
    sw = entry.get("sw_sweep", {})
    if "runs" not in sw:
        return [f"sliding-window sweep failed: {sw.get('error')}"] if sw else []
    lines = [
        "| sw_batch_size | lung gating | windows run | skipped | seconds |",
        "|---:|---|---:|---:|---:|",
    ]
    for r in sw["runs"]:
        gate = "on" if r["skip_empty_windows"] else "off"
        lines.append(
            f"| {r['sw_batch_size']} | {gate} | {r['windows_run']} | {r['windows_skipped']} | {r['seconds']:.2f} |"
        )
    return lines


def ops_table(entry: dict[str, Any]) -> list[str]:
    ops = entry.get("io_ops", {})
    if "runs" not in ops:
        return [f"operation comparison failed: {ops.get('error')}"] if ops else []
    lines = ["| operation | implementation | seconds | MiB written |", "|---|---|---:|---:|"]
    for r in ops["runs"]:
        size = f"{r['bytes'] / 2**20:.1f}" if "bytes" in r else ""
        lines.append(f"| {r['op']} | {r['impl']} | {r['seconds']:.2f} | {size} |")
    return lines


def render_markdown(result: dict[str, Any]) -> str:
    """The whole Markdown report of a benchmark result."""
    m = result["machine"]
    lines = [
        f"# lungscreen benchmark {m['date']} on {m['host']}",
        "",
        f"- device `{m['device']}`{' (' + m['gpu'] + ')' if m.get('gpu') else ''}, {m['cpu_count']} CPUs, "
        f"torch {m['torch']} ({m['torch_threads']} threads), MONAI {m['monai']}, SimpleITK {m['simpleitk']}",
        f"- load average at start {m['loadavg_at_start']} (other jobs on the machine slow every number alike)",
        f"- weights: {result['weights']['note']}",
        "- every measurement is its own process; peak RSS is that process's `ru_maxrss`; CPU (s) is the process's",
        "  CPU time (all threads) over the stage: on a busy machine it is the steadier number",
        "",
    ]
    for name, entry in result["scans"].items():
        lines += scan_table(name, entry) + [""]
        for title, rows in (
            ("sliding window", sweep_table(entry)),
            ("readers, resamplers, writers", ops_table(entry)),
        ):
            if rows:
                lines += [f"#### {name}: {title}", "", *rows, ""]
    if result.get("memory"):
        lines += ["## Peak memory against scan length (`screen()`, one run each)", ""]
        lines += ["| slices | size (x, y, z) | seconds | peak RSS |", "|---:|---|---:|---:|"]
        for r in result["memory"]:
            size = "x".join(map(str, r["size_xyz"]))
            lines.append(f"| {r['slices']} | {size} | {_s(r['seconds'])} | {_gib(r['peak_rss_bytes'])} |")
        lines.append("")
    return "\n".join(lines) + "\n"
