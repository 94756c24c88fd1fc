"""DICOM Segmentation objects (BINARY) of a case's lungs and nodules, referencing the source series' frames.

Two SEG instances in one SEG series, both frame-for-frame on the source series:

* ``lungs``: segment 1 *right lung*, segment 2 *left lung* (SNOMED CT 39607008 "Lung", type modifier Right
  24028007 / Left 7771000, category 91723000 "Anatomical Structure"): a PACS user compares sides, so the
  sides stay separate as in ``lungs.nii.gz`` (label 1 right, 2 left).
* ``nodules``: one segment per nodule, segment number = nodule id of ``nodules.csv``, tracking id
  ``Nodule <id>`` and a tracking UID that the SR finding of that nodule repeats (category 49755003
  "Morphologically Abnormal Structure", type 27925004 "Nodule", anatomic region Lung). One segment per nodule
  lets OHIF and Slicer list, show and jump to each nodule, and lets each SR finding point at its own segment.

Why two objects and not one: a nodule lies inside its lung, so one object holding both would need overlapping
segments, which highdicom takes only as a dense ``[frames, rows, columns, segments]`` array (a 400-slice scan
with 2 + 10 segments: 1.2 GB of booleans). Each object here is a label map (its segments do not overlap), built
from one ``[frames, rows, columns]`` array, and each segment equals our mask exactly.

Frames are cut from our masks through world coordinates (:func:`pipelines.export.dicom_source.frames_on_source`);
frames without any segment are left out (highdicom's ``omit_empty_frames``). Algorithm identification: name
``lungscreen``, family "Artificial Intelligence", version :data:`pipelines.__version__`, type AUTOMATIC.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines import __version__

if TYPE_CHECKING:
    import highdicom as hd
    from pydicom import Dataset

MANUFACTURER = "lungscreen"
MODEL_NAME = "lungscreen"
#: CIELab display colours (from RGB): right lung, left lung, nodules.
_RGB = {"right": (128, 174, 128), "left": (241, 214, 145), "nodule": (216, 101, 79)}


def algorithm_identification() -> hd.AlgorithmIdentificationSequence:
    """lungscreen as the segmentation algorithm (name, version, family Artificial Intelligence)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.AlgorithmIdentificationSequence(
        name="lungscreen", family=codes.cid7162.ArtificialIntelligence, version=__version__
    )


def _color(key: str) -> hd.color.CIELabColor:
    import highdicom as hd

    r, g, b = _RGB[key]
    return hd.color.CIELabColor.from_rgb(r, g, b)


def lung_segments() -> list[hd.seg.SegmentDescription]:
    """Segment 1 right lung, segment 2 left lung (the labels of ``lungs.nii.gz``)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    segments = []
    for number, side, modifier in ((1, "right", codes.SCT.Right), (2, "left", codes.SCT.Left)):
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=f"{side.capitalize()} lung",
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=codes.SCT.Lung,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm_identification(),
            tracking_uid=hd.UID(),
            tracking_id=f"{side.capitalize()} lung",
            display_color=_color(side),
        )
        # the modifier lives inside the type's code item (Segment Description macro, PS3.3 C.8.20-4)
        type_item = description.SegmentedPropertyTypeCodeSequence[0]
        type_item.SegmentedPropertyTypeModifierCodeSequence = [hd.sr.CodedConcept.from_code(modifier)]
        segments.append(description)
    return segments


def nodule_segments(
    nodule_rows: Sequence[Mapping[str, Any]], tracking_uids: Mapping[int, str]
) -> list[hd.seg.SegmentDescription]:
    """One segment per nodule row, numbered by ``nodule_id`` (which must run 1..N, as in ``nodules.csv``)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    segments = []
    for row in nodule_rows:
        nodule_id = int(row["nodule_id"])
        segments.append(
            hd.seg.SegmentDescription(
                segment_number=nodule_id,
                segment_label=f"Nodule {nodule_id}",
                segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
                segmented_property_type=codes.SCT.Nodule,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm_identification(),
                tracking_uid=tracking_uids[nodule_id],
                tracking_id=f"Nodule {nodule_id}",
                anatomic_regions=[codes.SCT.Lung],
                display_color=_color("nodule"),
            )
        )
    return segments


def build_segmentation(
    source: Sequence[Dataset],
    labels: np.ndarray,
    segments: Sequence[hd.seg.SegmentDescription],
    *,
    series_uid: str,
    instance_number: int,
    label: str,
    description: str,
) -> hd.seg.Segmentation:
    """A BINARY SEG of label-map frames on the source series.

    Args:
        source: the source headers (:func:`pipelines.export.dicom_source.read_source_series`).
        labels: unsigned labels ``[frames, rows, columns]``, ``labels[i]`` on ``source[i]``'s pixels; value ``k``
            is segment ``k`` (every value present must have a description in ``segments``).
        segments: segment descriptions numbered 1..len(segments).
        series_uid: the SEG series (shared by the case's SEG instances).
        instance_number: the instance's number in that series.
        label: ContentLabel (upper case, 16 characters at most).
        description: ContentDescription.
    """
    import highdicom as hd

    return hd.seg.Segmentation(
        source_images=list(source),
        pixel_array=labels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=list(segments),
        series_instance_uid=series_uid,
        series_number=_series_number(source, offset=900),
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME,
        software_versions=__version__,
        device_serial_number="1",
        content_label=label,
        content_description=description,
        series_description="lungscreen segmentation",
        omit_empty_frames=True,
    )


def _series_number(source: Sequence[Dataset], *, offset: int) -> int:
    """A series number beside the source's (``offset`` + the source's number), kept in IS range."""
    number = getattr(source[0], "SeriesNumber", None)
    return offset + (int(number) if number not in (None, "") else 1) % 100000


def label_dtype(max_label: int) -> type[np.unsignedinteger]:
    """The smallest unsigned type holding ``max_label``."""
    return np.uint8 if max_label <= np.iinfo(np.uint8).max else np.uint16
