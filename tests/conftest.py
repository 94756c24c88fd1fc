"""Shared pytest fixtures."""

from __future__ import annotations

import locale
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the real public files of the README's "Optional real data"; LUNGSCREEN_SHARED_DATA points at another copy
SHARED_DATA = Path(os.environ.get("LUNGSCREEN_SHARED_DATA") or ROOT.parent / "shared" / "data")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ``../shared/data`` (real public scans); skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is not present (set LUNGSCREEN_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _restore_locale() -> Iterator[None]:
    """GDCM's DICOM writer switches the process to the C locale, which makes Python's default text encoding ASCII
    for every later test: restore the locale after each test, whichever writes DICOM."""
    saved = locale.setlocale(locale.LC_ALL)
    yield
    locale.setlocale(locale.LC_ALL, saved)


@pytest.fixture(scope="session", autouse=True)
def openvino_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Exports of the optional OpenVINO backend go to a temporary folder (subprocesses too), never ~/.cache."""
    from pipelines.screening.backend import CACHE_ENV

    folder = tmp_path_factory.mktemp("openvino-cache")
    before = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(folder)
    yield folder
    if before is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = before


@pytest.fixture(scope="session")
def weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A UNet checkpoint that marks nothing (screening tests that need the pipeline, not detections)."""
    from helpers import silent_weights

    return str(silent_weights(tmp_path_factory.mktemp("w") / "silent.pt"))
