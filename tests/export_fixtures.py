"""A tiny synthetic CT series written with pydicom in a non-trivial orientation, with known truth per file.

The series: 7 slices of 10 rows x 12 columns; rows run anterior (ImageOrientationPatient column direction
(0, -1, 0): the image is flipped top-bottom), so the slice normal points to the feet and sorting along it puts
the slices in descending z; the files are named in neither order. The truth (lungs 1 right / 2 left, two
nodules) is a function of world LPS position, evaluated per DICOM pixel for the expected frames and per voxel
of the grid SimpleITK reads for the masks, so the two sides of the comparison are computed independently.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

ROW_DIR = np.array([1.0, 0.0, 0.0])  # along a row: toward patient left
COL_DIR = np.array([0.0, -1.0, 0.0])  # down a column: toward anterior (flipped)
ROWS, COLUMNS, SLICES = 10, 12, 7
ROW_SPACING, COLUMN_SPACING, SLICE_GAP = 0.7, 0.8, 2.5
FIRST = np.array([-4.4, 3.1, 20.0])  # first pixel of the first-written slice (LPS mm)
PATIENT_ID = "LS-TEST-0001"
PATIENT_NAME = "Test^Phantom"
#: nodule centres (LPS mm) and radii (mm): nodule 1 in the right lung (x < 0), nodule 2 in the left.
NODULES = ((np.array([-2.0, -0.4, 15.0]), 1.6), (np.array([3.2, -2.5, 10.0]), 1.2))


def truth_labels(world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(lungs, nodules)`` labels at world points ``[..., 3]`` (LPS mm)."""
    x, y, z = world[..., 0], world[..., 1], world[..., 2]
    inside = (np.abs(y + 1.0) < 2.6) & (z > 6.0) & (z < 19.0) & (np.abs(x) > 0.5)
    lungs = np.where(inside, np.where(x < 0, 1, 2), 0).astype(np.uint8)
    nodules = np.zeros(world.shape[:-1], np.uint8)
    for k, (centre, radius) in enumerate(NODULES, start=1):
        nodules[np.linalg.norm(world - centre, axis=-1) <= radius] = k
    return lungs, nodules


def pixel_world(position: np.ndarray) -> np.ndarray:
    """World position ``[rows, columns, 3]`` of every pixel of a slice whose first pixel is at ``position``."""
    r = np.arange(ROWS)[:, None, None] * ROW_SPACING * COL_DIR
    c = np.arange(COLUMNS)[None, :, None] * COLUMN_SPACING * ROW_DIR
    return position + r + c


@dataclass
class Series:
    folder: Path
    files: list[Path]
    sop_uids: list[str]  # per file
    lungs: list[np.ndarray] = field(default_factory=list)  # expected frame per file
    nodules: list[np.ndarray] = field(default_factory=list)
    study_uid: str = ""
    series_uid: str = ""


def write_series(folder: Path) -> Series:
    """Write the series (files ``img_<random-ish>.dcm`` in no spatial order); return files and truth per file."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series_uid, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    normal = np.cross(ROW_DIR, COL_DIR)
    out = Series(folder, [], [], study_uid=study, series_uid=series_uid)
    for k in range(SLICES):
        position = FIRST + k * SLICE_GAP * normal  # normal points to the feet: z goes down
        world = pixel_world(position)
        lungs, nodules = truth_labels(world)
        hu = np.where(lungs > 0, -850, 40).astype(np.int16)
        hu[nodules > 0] = 30
        ds = _slice(hu, position, k, study=study, series=series_uid, frame_of_reference=frame_of_reference)
        path = folder / f"img_{(k * 5) % SLICES}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.files.append(path)
        out.sop_uids.append(str(ds.SOPInstanceUID))
        out.lungs.append(lungs)
        out.nodules.append(nodules)
    return out


def _slice(hu: np.ndarray, position: np.ndarray, k: int, *, study: str, series: str, frame_of_reference: str):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sop = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
        PATIENT_NAME,
        PATIENT_ID,
        "19600101",
        "O",
    )
    today = datetime.date(2026, 1, 2).strftime("%Y%m%d")
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime, ds.StudyID = study, today, "101500", "S1"
    ds.AccessionNumber, ds.ReferringPhysicianName = "ACC42", ""
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.Modality = series, 3, "CT"
    ds.SeriesDate, ds.ContentDate, ds.ContentTime = today, today, "101500"
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference, ""
    ds.Manufacturer, ds.ImageType = "test", ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceNumber, ds.AcquisitionNumber, ds.KVP = k + 1, 1, "120"
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*ROW_DIR, *COL_DIR)]
    ds.PixelSpacing = [f"{ROW_SPACING}", f"{COLUMN_SPACING}"]
    ds.SliceThickness = f"{SLICE_GAP}"
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
    ds.PixelData = hu.tobytes()
    return ds


def masks_on_grid(grid: sitk.Image) -> tuple[sitk.Image, sitk.Image]:
    """The truth evaluated at the voxel centres of ``grid`` (as SimpleITK read the series): ``(lungs, nodules)``
    images on that exact grid, as the pipeline writes ``lungs.nii.gz`` and ``nodules.nii.gz``."""
    size = grid.GetSize()
    idx = np.stack(np.meshgrid(*(np.arange(n) for n in size), indexing="ij"), axis=-1)  # [x, y, z, 3]
    direction = np.asarray(grid.GetDirection()).reshape(3, 3)
    world = np.asarray(grid.GetOrigin()) + (idx * np.asarray(grid.GetSpacing())) @ direction.T
    lungs, nodules = truth_labels(world.transpose(2, 1, 0, 3))  # -> [z, y, x, 3]
    images = []
    for array in (lungs, nodules):
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(grid)
        images.append(image)
    return images[0], images[1]


def nodule_rows() -> list[dict[str, object]]:
    """Two ``nodules.csv``-like rows (strings, as read back from the CSV) for the two truth nodules."""
    rows = []
    for k, ((x, y, z), radius) in enumerate(NODULES, start=1):
        rows.append(
            {
                "nodule_id": str(k),
                "probability": f"{0.9 - 0.2 * k:.3f}",
                "center_lps_x_mm": f"{x:.2f}",
                "center_lps_y_mm": f"{y:.2f}",
                "center_lps_z_mm": f"{z:.2f}",
                "mean_diameter_mm": f"{2 * radius:.1f}",
                "long_axis_mm": f"{2 * radius + 0.3:.1f}",
                "short_axis_mm": f"{2 * radius - 0.3:.1f}",
                "volume_mm3": f"{4 / 3 * np.pi * radius**3:.1f}",
                "type": ("solid", "part-solid")[k - 1],
                "solid_component_mm": ("", "1.0")[k - 1],
                "lung_side": ("right", "left")[k - 1],
                "lung_zone": "upper",
                "lung_rads": "2",
            }
        )
    return rows
