"""lungscreen: screening of 3D chest CT for lung nodules, and 3D CT/MRI segmentation (MONAI-based).

``from pipelines import screen`` gives the whole screening job as one function, ``screen_followup`` the same job
for current scans read against their priors; heavy modules are imported on first use so that
``lungscreen --help`` stays instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.15.0"
__all__ = ["screen", "screen_followup", "__version__"]

if TYPE_CHECKING:
    from pipelines.followup.run import screen_followup
    from pipelines.screening.api import screen


def __getattr__(name: str) -> Any:
    if name == "screen":
        from pipelines.screening.api import screen

        # importing the submodule bound ``pipelines.screening.api`` to the module; the package attribute is the
        # function (``from pipelines import screen`` looks the name up twice: hasattr, then getattr)
        globals()["screen"] = screen
        return screen
    if name == "screen_followup":
        from pipelines.followup.run import screen_followup

        globals()["screen_followup"] = screen_followup
        return screen_followup
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
