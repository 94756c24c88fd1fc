"""Screening processes leave their start-up objects out of the cyclic garbage collector's scans."""

from __future__ import annotations

import gc
import sys

from pipelines.screening.process import settle_imports


def test_settle_imports_loads_the_engine_and_freezes_what_is_alive() -> None:
    gc.unfreeze()
    try:
        settle_imports()
        assert {"pipelines.screening.stages", "pipelines.nodules.second_look", "torch"} <= set(sys.modules)
        frozen = gc.get_freeze_count()
        assert frozen > 50_000  # torch and MONAI alone bring hundreds of thousands of objects
        assert not any(o is sys.modules for o in gc.get_objects())  # no longer in the scanned generations
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0
