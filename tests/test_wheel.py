"""The installed package screens without the checkout: the wheel carries the bundle (``pipelines/_bundle``).

Built here with the venv's own setuptools (``--no-build-isolation``: no download), unpacked into a folder that
is the only place ``pipelines`` can come from, and used from a working directory outside the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, pipelines, pipelines.bundle as b
from pipelines.screening.stages import Screener
s = Screener.from_bundle(device="cpu")
print(json.dumps({"package": pipelines.__file__, "root": str(b.bundle_root()),
                  "weights": [str(w) for w in s.weight_files if w], "threshold": s.settings.prob_threshold}))
"""


def test_wheel_carries_the_bundle_and_screens_from_it(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: the build writes build/ and *.egg-info beside its sources
    for name in (
        "pipelines",
        "monai_bundle",
        "pyproject.toml",
        "setup.py",
        "MANIFEST.in",
        "README.md",
        "LICENSE",
    ):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            ".",
        ],
        check=True,
        cwd=source,
    )
    (wheel,) = wheels.glob("lungscreen-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        zf.extractall(site)
    for part in (
        "configs/inference.json",
        "configs/metadata.json",
        "models/model.pt",
        "models/classifier.pt",
    ):
        assert f"pipelines/_bundle/{part}" in names, part
        assert (site / "pipelines/_bundle" / part).read_bytes() == (ROOT / "monai_bundle" / part).read_bytes()
    env = {k: v for k, v in os.environ.items() if k not in ("LUNGSCREEN_BUNDLE", "PYTHONPATH")}
    env["PYTHONPATH"] = str(site)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], check=True, cwd=tmp_path, env=env, capture_output=True, text=True
    )
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(found["package"]).is_relative_to(site)
    assert Path(found["root"]) == (site / "pipelines" / "_bundle").resolve()
    assert [Path(w).name for w in found["weights"]] == ["model.pt", "classifier.pt"]
    assert all(Path(w).is_relative_to(site.resolve()) for w in found["weights"])
    shipped = json.loads((ROOT / "monai_bundle/configs/inference.json").read_text())["settings"]
    assert found["threshold"] == shipped["prob_threshold"]
