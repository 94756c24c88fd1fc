"""Locate and load the MONAI bundle; the CLI and the Python API override its keys, never re-declare it.

Security: MONAI's config parser treats strings as code. A string starting with ``$`` is evaluated by Python,
a whole string ``@id`` is replaced by another config item, ``%file#id`` loads part of another file, and
relative ids (``@#``, ``%#``) and ``::`` are rewritten inside any string, at any depth of lists and dicts. So
no user-supplied string reaches the parser as text: paths go in as :class:`pathlib.Path` objects (the parser
leaves non-strings alone), settings are validated in Python first (:func:`pipelines.screening.settings.settings_overrides`: a string
setting can only be one of its allowed words), free config overrides are limited to numbers, booleans,
``null``, plain strings and lists of those (:func:`check_user_overrides`), and :func:`check_override_values`
refuses any override string starting with ``$``, ``@`` or ``%`` whoever passes it. The bundle's own ``run``
entry (``python -m monai.bundle run``) keeps MONAI's semantics: its config files and ``--key value`` pairs
are code by design.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

BUNDLE_ENV = "LUNGSCREEN_BUNDLE"
#: First characters that make MONAI's parser evaluate (``$``), reference (``@``) or load (``%``) a string.
PARSER_PREFIXES = ("$", "@", "%")
#: Messages of the exceptions MONAI wraps our components' errors in (the real error is the ``__cause__``).
_WRAPPERS = ("Failed to instantiate component", "Failed to evaluate", "applying transform")


class OverrideError(ValueError):
    """A config override that could reach MONAI's expression, reference or macro syntax."""


def bundle_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The bundle folder: ``root`` if given, else ``$LUNGSCREEN_BUNDLE``, else ``monai_bundle/`` of this checkout
    (an editable install), else the copy an installed wheel carries (``pipelines/_bundle``, see ``setup.py``)."""
    if root is not None:
        path = Path(root)
    elif os.environ.get(BUNDLE_ENV):
        path = Path(os.environ[BUNDLE_ENV])
    else:
        here = Path(__file__).resolve().parent
        checkout = here.parent / "monai_bundle"
        path = checkout if (checkout / "configs" / "metadata.json").is_file() else here / "_bundle"
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
        overrides: e.g. ``{"settings#prob_threshold": 0.6, "output_dir": Path("out")}``. Paths as ``Path``
            objects; any string value starting with ``$``, ``@`` or ``%`` is refused (:class:`OverrideError`).
    """
    from monai.bundle import ConfigWorkflow

    broot = bundle_root(root)
    names = [config] if isinstance(config, str) else list(config)
    files = [str(broot / "configs" / n) for n in names]
    pairs = {"bundle_root": broot, **(overrides or {})}
    check_override_values(pairs)
    quiet_monai_logging()
    workflow = ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        meta_file=str(broot / "configs" / "metadata.json"),
        logging_file=False,
        workflow_type=workflow_type,
    )
    # after construction, not as ConfigWorkflow keywords: a key such as ``tracking`` or ``run_id`` would be
    # taken as that argument of ConfigWorkflow instead of a config override
    workflow.parser.update(pairs)
    return workflow


def apply_overrides(parser: Any, overrides: Mapping[str, Any]) -> Any:
    """``parser.update(overrides)`` after :func:`check_override_values` (for code that builds a ``ConfigParser``)."""
    check_override_values(overrides)
    parser.update(dict(overrides))
    return parser


def check_override_values(overrides: Mapping[str, Any]) -> None:
    """Refuse any string value, at any depth of lists, tuples and dicts, that MONAI's parser would not take
    literally (starting with ``$``, ``@`` or ``%``). Our own code never needs one: paths are ``Path`` objects.

    Raises:
        OverrideError: naming the key and the value.
    """
    for key, value in overrides.items():
        bad = _parser_string(value)
        if bad is not None:
            raise OverrideError(
                f"config override {key}: the value {bad!r} starts with {bad[0]!r}, which MONAI's config "
                "parser would evaluate, resolve or load; pass paths and values as Python objects"
            )


def _parser_string(value: Any) -> str | None:
    if isinstance(value, str):
        return value if value.startswith(PARSER_PREFIXES) else None
    items: Any = ()
    if isinstance(value, Mapping):
        items = [*value.keys(), *value.values()]
    elif isinstance(value, list | tuple):
        items = value
    for item in items:
        bad = _parser_string(item)
        if bad is not None:
            return bad
    return None


def check_user_overrides(overrides: Mapping[str, Any], *, option: str = "--set") -> dict[str, Any]:
    """Validate free ``KEY=VALUE`` config overrides given by a user (``lungscreen train --set train#lr=0.01``).

    Keys are config ID paths (``a#b#c``) of letters, digits and ``_`` that do not name MONAI's reserved keys
    (``_target_``, ``_mode_``, ``_requires_``, ``_disabled_``, ``_desc_``, ``_meta_``): a user override can
    change a value, never which code runs. Values are finite numbers, booleans, ``null``, strings not starting with
    ``$``/``@``/``%``, or lists of those.

    Raises:
        OverrideError: one line naming the key (and the value).
    """
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        parts = str(key).split("#")
        if not key or not all(p and (p.replace("_", "").isalnum()) for p in parts):
            raise OverrideError(f"{option} {key!r}: a key is a config ID path such as train#lr (a#b#c)")
        reserved = [p for p in parts if p.startswith("_") and p.endswith("_")]
        if reserved:
            raise OverrideError(f"{option} {key}: {reserved[0]} is MONAI's reserved key and cannot be set")
        if not _plain_value(value):
            raise OverrideError(
                f"{option} {key}: the value {value!r} is not allowed; give a finite number, true/false, null, a string "
                "not starting with $, @ or % (which the config parser would evaluate), or a list of those"
            )
        out[str(key)] = value
    return out


def _plain_value(value: Any) -> bool:
    if value is None or isinstance(value, bool | int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return not value.startswith(PARSER_PREFIXES)
    if isinstance(value, list | tuple):
        return all(_plain_value(v) for v in value)
    return False


def unwrap_config_error(err: BaseException) -> BaseException:
    """The error our component raised, out of MONAI's wrappers ("Failed to instantiate component ...",
    "Failed to evaluate ...", "applying transform ..."), which chain it as ``__cause__``."""
    seen = {id(err)}
    while (
        isinstance(err, RuntimeError)
        and str(err).startswith(_WRAPPERS)
        and err.__cause__ is not None
        and id(err.__cause__) not in seen
    ):
        err = err.__cause__
        seen.add(id(err))
    return err


@contextlib.contextmanager
def unwrapped_errors() -> Iterator[None]:
    """Re-raise an error that MONAI's config machinery wrapped as the original error (traceback kept)."""
    try:
        yield
    except Exception as err:
        cause = unwrap_config_error(err)
        if cause is err:
            raise
        raise cause from None


class _SkipLoggingFileNotice(logging.Filter):
    """Drops MONAI's "Logging file is set to False, skipping logging." notice (we pass ``logging_file=False``
    on purpose: the CLI configures logging itself); every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Logging file is set to False")


def quiet_monai_logging() -> None:
    """Install :class:`_SkipLoggingFileNotice` on MONAI's workflow logger (once)."""
    logger = logging.getLogger("monai.bundle.workflows")
    if not any(isinstance(f, _SkipLoggingFileNotice) for f in logger.filters):
        logger.addFilter(_SkipLoggingFileNotice())
