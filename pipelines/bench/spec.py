"""A benchmark spec (the JSON a worker process reads) and the bundle's screener it names.

Spec keys: ``case`` (scan path), ``device``, ``weights``, ``classifier_weights`` (paths or null), ``settings``
(:class:`pipelines.screening.settings.ScreeningSettings` overrides), ``work`` (scratch folder for outputs) and
task-specific keys (``sw_batch_sizes``).
"""

from __future__ import annotations

from typing import Any

Spec = dict[str, Any]


# --------------------------------------------------------------------------------------------- our path
def screener(spec: Spec) -> Any:
    """The bundle's :class:`pipelines.screening.stages.Screener` for ``spec`` (its settings, device, weights)."""
    from pipelines.screening.stages import Screener

    return Screener.from_bundle(
        weights=spec.get("weights") or None,
        classifier_weights=spec.get("classifier_weights") or "",
        **{**spec.get("settings", {}), "device": spec["device"]},
    )
