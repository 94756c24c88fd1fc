"""Packaging hook: the wheel carries the MONAI bundle (configs, weights, docs) as ``pipelines/_bundle``.

The bundle stays at the top of the repository (``monai_bundle/``, the layout MONAI and our users expect); an
editable install reads it there, an installed wheel from its copy (:func:`pipelines.bundle.bundle_root`).
Everything else is declared in ``pyproject.toml``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

BUNDLE = Path(__file__).resolve().parent / "monai_bundle"
#: what of the bundle is installed (the shipped weights are models/*.pt)
PARTS = ("configs", "models", "docs", "LICENSE")


class BuildPyWithBundle(build_py):
    """``build_py`` that also copies the bundle into the built package."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads monai_bundle/ in place
            return
        target = Path(self.build_lib) / "pipelines" / "_bundle"
        shutil.rmtree(target, ignore_errors=True)
        for part in PARTS:
            source = BUNDLE / part
            if source.is_dir():
                shutil.copytree(source, target / part, ignore=shutil.ignore_patterns("__pycache__", ".*"))
            elif source.is_file():
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target / part)


setup(cmdclass={"build_py": BuildPyWithBundle})
