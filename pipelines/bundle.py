"""Locate and load the MONAI bundle; the CLI and the Python API override its keys, never re-declare it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

BUNDLE_ENV = "LUNGSCREEN_BUNDLE"


def bundle_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The bundle folder: ``root`` if given, else ``$LUNGSCREEN_BUNDLE``, else ``monai_bundle/`` of this checkout."""
    if root is not None:
        path = Path(root)
    elif os.environ.get(BUNDLE_ENV):
        path = Path(os.environ[BUNDLE_ENV])
    else:
        path = Path(__file__).resolve().parents[1] / "monai_bundle"
    if not (path / "configs" / "metadata.json").is_file():
        raise FileNotFoundError(
            f"{path} is not a lungscreen bundle (no configs/metadata.json); set --bundle-root"
        )
    return path.resolve()


def load_workflow(
    config: str | list[str] = "inference.json",
    *,
    root: str | os.PathLike[str] | None = None,
    workflow_type: str = "infer",
    overrides: dict[str, Any] | None = None,
) -> Any:
    """Build a MONAI ``ConfigWorkflow`` from the bundle's config file(s) with ID-path ``overrides``.

    Args:
        config: file name(s) in ``configs/``; several are stacked (later ones patch earlier ones).
        root: bundle folder (see :func:`bundle_root`).
        workflow_type: MONAI workflow type (``infer`` or ``train``) for the property checks.
        overrides: e.g. ``{"settings#prob_threshold": 0.6, "output_dir": "out"}``.
    """
    from monai.bundle import ConfigWorkflow

    broot = bundle_root(root)
    names = [config] if isinstance(config, str) else list(config)
    files = [str(broot / "configs" / n) for n in names]
    pairs = {"bundle_root": str(broot), **(overrides or {})}
    return ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        meta_file=str(broot / "configs" / "metadata.json"),
        logging_file=False,
        workflow_type=workflow_type,
        **pairs,
    )


def settings_overrides(settings: dict[str, Any], *, prefix: str = "settings") -> dict[str, Any]:
    """Turn ``{"prob_threshold": 0.6}`` into ``{"settings#prob_threshold": 0.6}``, refusing unknown names."""
    from dataclasses import fields

    from pipelines.settings import ScreeningSettings, SettingsError

    known = {f.name for f in fields(ScreeningSettings)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise SettingsError(f"unknown setting(s) {unknown}; valid settings are {sorted(known)}")
    return {f"{prefix}#{k}": (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()}
