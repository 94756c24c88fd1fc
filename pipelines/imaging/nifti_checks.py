"""NIfTI checks that SimpleITK's reader skips: it silently "repairs" what should be refused.

SimpleITK reads a truncated ``.nii.gz`` (missing voxels become 0), replaces a zero ``pixdim`` spacing by 1 mm,
flips a negative one, and turns NaN/Inf voxels into 0. :func:`check_nifti_file` looks at the header as stored
and streams the voxel data only when it must; :func:`pipelines.imaging.io.read_image` calls it before SimpleITK.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.imaging.filesys import ImageReadError, first_line

_NIFTI_CHUNK = 1 << 24


def check_nifti_file(path: str | os.PathLike[str]) -> None:
    """Refuse NIfTI files that SimpleITK would silently "repair": it reads a truncated file (missing voxels
    become 0), replaces a zero spacing in ``pixdim`` by 1 mm, flips a negative one, and turns NaN/Inf voxels
    into 0. Reads the header, then streams the voxel data once only when needed (compressed files whose gzip
    size trailer disagrees with the header, and float data, which is scanned for non-finite values).

    Raises:
        ImageReadError: naming the file: not gzip data, not a NIfTI header, zero/negative/non-finite spacing,
            truncated or corrupt data, NaN/Inf voxels.
    """
    p = Path(path)
    gz = p.name.lower().endswith(".gz")
    with open(p, "rb") as fh:
        magic = fh.read(2)
    if gz and magic != b"\x1f\x8b":
        raise ImageReadError(p, "not gzip-compressed although named .gz: not a .nii.gz image")
    try:
        hdr = raw_nifti_header(p, gz=gz)
        ndim = int(hdr["dim"][0])
        shape = tuple(int(v) for v in hdr["dim"][1 : ndim + 1])
        dtype = hdr.get_data_dtype()
        offset = int(hdr.get_data_offset())
    except EOFError:
        raise ImageReadError(p, "truncated: the file ends inside the NIfTI header") from None
    except (OSError, zlib.error) as err:
        raise ImageReadError(p, f"corrupt compressed data ({first_line(str(err))})") from None
    except Exception as err:  # noqa: BLE001 - nibabel raises many types for a bad header
        raise ImageReadError(p, f"not a NIfTI image ({first_line(str(err)) or type(err).__name__})") from None
    pixdim = np.asarray(hdr["pixdim"][1 : 1 + min(ndim, 3)], dtype=float)
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim <= 0):
        raise ImageReadError(
            p, f"header spacing (pixdim) must be strictly positive and finite, not {tuple(pixdim.tolist())}"
        )
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    is_float = dtype.kind == "f"
    if not gz and not is_float:
        if p.stat().st_size < offset + expected:
            raise ImageReadError(
                p, f"truncated: {p.stat().st_size} bytes, the header needs {offset + expected}"
            )
        return
    if gz and not is_float and _gzip_trailer_size(p) == (offset + expected) % (1 << 32):
        return
    _stream_voxels(p, gz=gz, offset=offset, expected=expected, dtype=dtype)


def raw_nifti_header(path: Path, *, gz: bool) -> Any:
    """The header exactly as stored (``nibabel.load`` would "fix" zero or negative ``pixdim`` first)."""
    from nibabel.nifti1 import Nifti1Header
    from nibabel.nifti2 import Nifti2Header

    with gzip.open(path, "rb") if gz else open(path, "rb") as fh:
        raw = fh.read(540)
    sizes = {int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big")}
    klass = Nifti1Header if 348 in sizes else Nifti2Header if 540 in sizes else None
    if klass is None:
        raise ValueError("no NIfTI header (sizeof_hdr is neither 348 nor 540)")
    # the bare header bytes only: from_fileobj would also try to parse extensions (vox_offset > 352)
    hdr = klass(raw[: 348 if klass is Nifti1Header else 540], check=False)
    if bytes(hdr["magic"]).rstrip(b"\0") not in (b"n+1", b"n+2"):
        raise ValueError(f"bad NIfTI magic {bytes(hdr['magic'])!r}")
    return hdr


def _gzip_trailer_size(path: Path) -> int:
    with open(path, "rb") as fh:
        fh.seek(-4, os.SEEK_END)
        return int(struct.unpack("<I", fh.read(4))[0])


def _stream_voxels(path: Path, *, gz: bool, offset: int, expected: int, dtype: np.dtype) -> None:
    item = dtype.itemsize
    got, bad = 0, 0
    try:
        with gzip.open(path, "rb") if gz else open(path, "rb") as fh:
            fh.read(offset)
            while got < expected:
                chunk = fh.read(min(_NIFTI_CHUNK * item, expected - got))
                if not chunk:
                    break
                got += len(chunk)
                if dtype.kind == "f":
                    values = np.frombuffer(chunk[: len(chunk) - len(chunk) % item], dtype=dtype)
                    bad += int(values.size - np.count_nonzero(np.isfinite(values)))
    except EOFError:
        raise ImageReadError(
            path, "truncated: the compressed data ends early (incomplete download or copy?)"
        ) from None
    except (OSError, zlib.error) as err:
        raise ImageReadError(path, f"corrupt compressed data ({first_line(str(err))})") from None
    if got < expected:
        raise ImageReadError(path, f"truncated: {got} of {expected} voxel bytes present")
    if bad:
        raise ImageReadError(path, f"{bad} voxels are NaN or infinite")
