"""File-level safety shared by every reader and writer: the read error, suffixes, special files, atomic writes.

Nothing here opens a scan's voxels. Special files (FIFOs, sockets, devices) are recognised by ``stat`` without
opening them; outputs are written to a temporary file beside the target and renamed into place only when the
write succeeded, so an interrupted run never leaves a file that looks complete.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mhd", ".mha", ".nrrd", ".nhdr")


DICOM_SUFFIXES = (".dcm", ".dicom", ".ima", "")


class ImageReadError(ValueError):
    """A scan could not be read or is not a usable 3D image; the message names the file."""

    def __init__(self, path: str | os.PathLike[str], reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


# --------------------------------------------------------------------------------------------- writing
def _default_file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _default_file_mode()


#: Test hook: when set, called as ``before_replace(temporary, final)`` just before every rename of
#: :func:`atomic_write`, so a test can stop the process exactly at a rename point (``os._exit``) and check
#: that a rerun recovers. None in normal use.
before_replace: Callable[[Path, Path], None] | None = None


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only when the block succeeds.

    The temporary name keeps the final extension (SimpleITK picks the writer from it) and starts with
    ``.tmp-`` so an interrupted run never leaves a file that looks complete.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    ext = suffix if suffix is not None else full_suffix(final)
    fd, tmp_name = tempfile.mkstemp(prefix=f".tmp-{final.name}-", suffix=ext, dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; outputs are shared like any file the user writes
    try:
        yield tmp
        if before_replace is not None:
            before_replace(tmp, final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def full_suffix(path: Path) -> str:
    name = path.name.lower()
    for ext in (".nii.gz", ".tar.gz"):
        if name.endswith(ext):
            return ext
    return path.suffix.lower()


def strip_image_suffix(name: str) -> str:
    """``case.nii.gz`` -> ``case``; ``case.mhd`` -> ``case``."""
    lower = name.lower()
    for ext in IMAGE_SUFFIXES:
        if lower.endswith(ext):
            return name[: -len(ext)]
    return name


# --------------------------------------------------------------------------------------------- reading
_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def special_file_kind(path: str | os.PathLike[str]) -> str:
    """``"a FIFO (named pipe)"``, ``"a socket"``, ``"a character device"``, ``"a block device"``, or ``""``.

    Decided by ``stat`` (following links) without opening the file: opening a FIFO blocks until someone
    writes to it, and a device such as ``/dev/zero`` never ends.
    """
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return ""  # missing or a dangling link: the reader says so
    return next((kind for test, kind in _SPECIAL_KINDS if test(mode)), "")


def is_special_file(path: str | os.PathLike[str]) -> bool:
    """True for a FIFO, socket or device (never opened by this package)."""
    return bool(special_file_kind(path))


def skip_special_file(path: str | os.PathLike[str], notes: list[str]) -> bool:
    """True (and a note appended to ``notes``) when ``path`` is a special file that discovery must skip."""
    kind = special_file_kind(path)
    if kind:
        notes.append(f"skipped {path}: {kind}, not a regular file (never opened)")
    return bool(kind)


def refuse_special(path: str | os.PathLike[str]) -> None:
    kind = special_file_kind(path)
    if kind:
        raise ImageReadError(path, f"{kind}, not a regular file: refused without opening it")


_ITK_NOISE = re.compile(r"^(Exception thrown in SimpleITK \S+:\s*)?\S+\.(cxx|hxx|h|cpp|txx):\d+:?$")


_ITK_PREFIX = re.compile(r"^(sitk::ERROR:|ITK ERROR:\s*\w+\(0x[0-9a-fA-F]+\):|Description:)\s*")


def first_line(msg: str) -> str:
    """The human part of a SimpleITK/ITK exception: no source paths, no object addresses, one line."""
    for line in msg.splitlines():
        line = line.strip()
        if not line or _ITK_NOISE.match(line):
            continue
        line = _ITK_PREFIX.sub("", line)
        if line.startswith("Unable to determine ImageIO reader"):
            return "not a readable image (no reader recognises its content: corrupt or not an image)"
        if line:
            return line[:200]
    return " ".join(msg.split())[:200]


# --------------------------------------------------------------------------------------------- CSV cells
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"^[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|inf|nan)$")


def csv_safe(value: Any) -> Any:
    """A CSV cell that no spreadsheet evaluates: text starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
    return gets a leading ``'`` (OWASP's rule against CSV injection). Numbers (``-512.3`` as a number or as
    plain numeric text) and all other values are returned unchanged."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _PLAIN_NUMBER.match(value):
        return "'" + value
    return value


def csv_rows_text(rows: Iterable[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    """CSV text (``\\n`` line ends, quoted where needed) of ``rows``, every cell passed through :func:`csv_safe`."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header:
        writer.writerow([csv_safe(h) for h in header])
    writer.writerows([csv_safe(v) for v in row] for row in rows)
    return buf.getvalue()
