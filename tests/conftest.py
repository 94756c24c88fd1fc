"""Shared pytest fixtures."""

from __future__ import annotations

import os
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
