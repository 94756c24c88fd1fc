"""Nodule centres from the canonical grid to world coordinates and to the original file's voxel grid.

:func:`pipelines.nodules.extract.extract_nodules` reports ``canonical_index_zyx``: a continuous voxel index
``[z, y, x]`` on the canonical grid (SimpleITK ``DICOMOrient(image, "LPS")``). SimpleITK indexes images
``(x, y, z)``, so the index is reversed before every SimpleITK call. World coordinates are mm in the
ITK/DICOM LPS frame (as LUNA16's ``coordX, coordY, coordZ``); RAS is ``(-x, -y, z)`` of LPS.
"""

from __future__ import annotations

from collections.abc import Iterable

import SimpleITK as sitk

from pipelines.nodules.record import Candidate

_LPS_KEYS = ("center_lps_x_mm", "center_lps_y_mm", "center_lps_z_mm")


def image_orientation(image: sitk.Image) -> str:
    """Three-letter DICOM orientation code of a 3-D image (``"LPS"`` for the canonical grid)."""
    return str(sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection()))


def add_world_coordinates(nodules: Iterable[Candidate], image: sitk.Image) -> list[Candidate]:
    """Add the world centre of each nodule, in LPS and RAS mm.

    Args:
        nodules: rows with ``canonical_index_zyx`` (continuous index ``[z, y, x]`` on ``image``'s grid).
        image: the canonical image (``DICOMOrient(original, "LPS")``) the index refers to; only its
            geometry is used.

    Returns:
        The same rows, updated in place, with ``center_lps_{x,y,z}_mm`` (from
        ``image.TransformContinuousIndexToPhysicalPoint((x, y, z))``) and ``center_ras_{x,y,z}_mm``
        ``= (-x, -y, z)``.

    Raises:
        ValueError: if ``image`` is not 3-D or not LPS-oriented (an index from a different grid would
            silently land elsewhere).
        KeyError: if a row lacks ``canonical_index_zyx``.
    """
    if image.GetDimension() != 3:
        raise ValueError(f"image must be 3-D, not {image.GetDimension()}-D")
    orientation = image_orientation(image)
    if orientation != "LPS":
        raise ValueError(
            f"image must be the canonical LPS-oriented image (SimpleITK.DICOMOrient(image, 'LPS')), "
            f"not {orientation!r}"
        )
    out: list[Candidate] = []
    for nodule in nodules:
        z, y, x = (float(v) for v in nodule["canonical_index_zyx"])
        lps = image.TransformContinuousIndexToPhysicalPoint((x, y, z))
        nodule.update(
            {
                "center_lps_x_mm": float(lps[0]),
                "center_lps_y_mm": float(lps[1]),
                "center_lps_z_mm": float(lps[2]),
                "center_ras_x_mm": -float(lps[0]),
                "center_ras_y_mm": -float(lps[1]),
                "center_ras_z_mm": float(lps[2]),
            }
        )
        out.append(nodule)
    return out


def add_original_indices(nodules: Iterable[Candidate], original_image: sitk.Image) -> list[Candidate]:
    """Add the continuous voxel index of each nodule centre in the original file's grid.

    Args:
        nodules: rows with ``center_lps_{x,y,z}_mm`` (from :func:`add_world_coordinates`).
        original_image: the image as read from disk, before reorientation (any orientation).

    Returns:
        The same rows, updated in place, with ``voxel_i``, ``voxel_j``, ``voxel_k``: SimpleITK's
        ``(i, j, k)`` = ``(x, y, z)`` index of the original file (``TransformPhysicalPointToContinuousIndex``), rounded to 2 decimals.
        numpy arrays of that file read by SimpleITK are indexed ``[k, j, i]``.

    Raises:
        KeyError: if a row has no world centre yet.
    """
    out: list[Candidate] = []
    for nodule in nodules:
        missing = [key for key in _LPS_KEYS if key not in nodule]
        if missing:
            raise KeyError(f"nodule row lacks {missing}; call add_world_coordinates first")
        point = (nodule["center_lps_x_mm"], nodule["center_lps_y_mm"], nodule["center_lps_z_mm"])
        index = original_image.TransformPhysicalPointToContinuousIndex(point)
        nodule.update(
            {"voxel_i": round(index[0], 2), "voxel_j": round(index[1], 2), "voxel_k": round(index[2], 2)}
        )
        out.append(nodule)
    return out
