"""A DICOM Structured Report (Comprehensive 3D SR, TID 1500 Measurement Report) of a case's nodules.

One finding per lung (its volume, ml, referencing its segment in the lungs SEG) and one per nodule (TID 1411
volumetric ROI measurements), each nodule finding holding:

* the region: a reference to the nodule's own segment in the nodules SEG (:mod:`pipelines.export.dicom_seg`),
  with the segment's tracking id (``Nodule <id>``) and tracking UID, so a reader links the finding to its
  voxels. This is how Slicer's QuantitativeReporting (dcmqi) writes TID 1500 volumetric findings;
* finding type SNOMED CT 27925004 "Nodule", finding site Lung with laterality (``lung_side``);
* measurements (value, UCUM unit): mean diameter (81827009 "Diameter", derivation 373098007 "Mean"), long
  axis (103339001), short axis (103340004), all ``mm``; volume (118565006, ``mm3``, method 126030 "Sum of
  segmented voxel volumes"); probability (DCM 122157 "Probability", unit ``1``: the network score of
  ``nodules.csv``, not a probability of cancer);
* qualitative evaluations: the nodule type and the nodule's Lung-RADS category.

At the report level, a "Qualitative Evaluations" container (TID 1500 row 12) holds the case's Lung-RADS
category. Neither Lung-RADS nor the Lung-RADS nodule types have codes in DICOM, SNOMED CT or LOINC that we could
cite, so they use the private coding scheme ``99LUNGSCREEN`` (DICOM PS3.16 8.2: designators starting ``99``
are local); ground-glass uses DICOM 112120 "Ground glass opacity" and calcified SNOMED CT 237897009.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pipelines import __version__

if TYPE_CHECKING:
    import highdicom as hd
    from pydicom import Dataset

PRIVATE_SCHEME = "99LUNGSCREEN"
#: (code value, scheme, meaning) of each nodule type of ``nodules.csv``.
TYPE_CODES = {
    "solid": ("SOLID", PRIVATE_SCHEME, "Solid nodule"),
    "part-solid": ("PARTSOLID", PRIVATE_SCHEME, "Part-solid nodule"),
    "ground-glass": ("112120", "DCM", "Ground glass opacity"),
    "calcified": ("237897009", "SCT", "Calcified"),
}
NODULE_TYPE_CONCEPT = ("NODULETYPE", PRIVATE_SCHEME, "Nodule type (Lung-RADS)")
LUNG_RADS_CONCEPT = ("LUNGRADS", PRIVATE_SCHEME, "Lung-RADS v2022 category")
#: TID 1500 row 12 container.
QUALITATIVE_EVALUATIONS = ("C0034375", "UMLS", "Qualitative Evaluations")
#: LOINC "CT Chest" as the procedure reported.
PROCEDURE = ("24627-2", "LN", "CT Chest")


def _concept(triple: tuple[str, str, str]) -> hd.sr.CodedConcept:
    import highdicom as hd

    value, scheme, meaning = triple
    return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def lung_rads_code(category: str) -> hd.sr.CodedConcept:
    """The coded value of a Lung-RADS v2022 category (``"0"``, ``"1"``, ..., ``"4X"``)."""
    from pipelines.nodules.lungrads import DESCRIPTORS

    if category not in DESCRIPTORS:
        raise ValueError(f"unknown Lung-RADS category {category!r}; expected one of {sorted(DESCRIPTORS)}")
    return _concept((f"LR{category}", PRIVATE_SCHEME, f"Lung-RADS {category} {DESCRIPTORS[category]}"))


def nodule_type_code(nodule_type: str) -> hd.sr.CodedConcept:
    if nodule_type not in TYPE_CODES:
        raise ValueError(f"unknown nodule type {nodule_type!r}; expected one of {sorted(TYPE_CODES)}")
    return _concept(TYPE_CODES[nodule_type])


def algorithm_id() -> hd.sr.AlgorithmIdentification:
    import highdicom as hd

    return hd.sr.AlgorithmIdentification(name="lungscreen", version=__version__)


def _measurements(row: Mapping[str, Any]) -> list[hd.sr.Measurement]:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    mm, mm3 = codes.UCUM.Millimeter, codes.UCUM.CubicMillimeter
    unitless = hd.sr.CodedConcept(value="1", scheme_designator="UCUM", meaning="no units")
    specs = [
        (codes.SCT.Diameter, "mean_diameter_mm", mm, {"derivation": codes.SCT.Mean}),
        (codes.SCT.LongAxis, "long_axis_mm", mm, {}),
        (codes.SCT.ShortAxis, "short_axis_mm", mm, {}),
        (codes.SCT.Volume, "volume_mm3", mm3, {"method": codes.DCM.SumOfSegmentedVoxelMethodForVolume}),
        (codes.DCM.Probability, "probability", unitless, {}),
    ]
    out = []
    for name, column, unit, extra in specs:
        value = row.get(column)
        if value in (None, ""):
            continue  # a column left empty is not reported rather than reported as 0
        out.append(
            hd.sr.Measurement(name=name, value=float(value), unit=unit, algorithm_id=algorithm_id(), **extra)
        )
    return out


def _finding_site(row: Mapping[str, Any]) -> hd.sr.FindingSite:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    side = {"right": codes.SCT.Right, "left": codes.SCT.Left}.get(str(row.get("lung_side", "")))
    return hd.sr.FindingSite(anatomic_location=codes.SCT.Lung, laterality=side)


def nodule_finding(
    row: Mapping[str, Any], segmentation: Dataset, *, tracking_uid: str
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """TID 1411 finding of one ``nodules.csv`` row, its region the segment numbered ``nodule_id`` of
    ``segmentation``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    nodule_id = int(row["nodule_id"])
    evaluations = [
        hd.sr.QualitativeEvaluation(_concept(NODULE_TYPE_CONCEPT), nodule_type_code(str(row["type"])))
    ]
    if row.get("lung_rads") not in (None, ""):
        evaluations.append(
            hd.sr.QualitativeEvaluation(_concept(LUNG_RADS_CONCEPT), lung_rads_code(str(row["lung_rads"])))
        )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=f"Nodule {nodule_id}"),
        referenced_segment=referenced_segment(segmentation, nodule_id),
        finding_type=codes.SCT.Nodule,
        algorithm_id=algorithm_id(),
        finding_sites=[_finding_site(row)],
        measurements=_measurements(row),
        qualitative_evaluations=evaluations,
    )


def referenced_segment(segmentation: Dataset, segment_number: int) -> hd.sr.ReferencedSegment:
    """A reference to one segment of a SEG, with the source series it was derived from.

    Built from the SEG's header rather than with ``ReferencedSegment.from_segmentation``, which looks for the
    segment number per frame and fails on a SEG of one segment (highdicom stores it in the shared group).
    """
    import highdicom as hd

    return hd.sr.ReferencedSegment(
        sop_class_uid=segmentation.SOPClassUID,
        sop_instance_uid=segmentation.SOPInstanceUID,
        segment_number=segment_number,
        source_series=hd.sr.SourceSeriesForSegmentation(
            segmentation.ReferencedSeriesSequence[0].SeriesInstanceUID
        ),
    )


def lung_finding(
    lungs_seg: Dataset, segment_number: int, *, volume_ml: float
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """TID 1411 finding of one lung (segment 1 right, 2 left of the lungs SEG): its volume in ml."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    segment = next(s for s in lungs_seg.SegmentSequence if int(s.SegmentNumber) == segment_number)
    side = codes.SCT.Right if segment_number == 1 else codes.SCT.Left
    volume = hd.sr.Measurement(
        name=codes.SCT.Volume,
        value=float(volume_ml),
        unit=hd.sr.CodedConcept(value="ml", scheme_designator="UCUM", meaning="milliliter"),
        method=codes.DCM.SumOfSegmentedVoxelMethodForVolume,
        algorithm_id=algorithm_id(),
    )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=segment.TrackingUID, identifier=segment.TrackingID),
        referenced_segment=hd.sr.ReferencedSegment.from_segmentation(
            lungs_seg, segment_number=segment_number
        ),
        finding_type=codes.SCT.Lung,
        algorithm_id=algorithm_id(),
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SCT.Lung, laterality=side)],
        measurements=[volume],
    )


def measurement_report(
    nodule_rows: Sequence[Mapping[str, Any]],
    *,
    category: str,
    lungs_seg: Dataset,
    lung_volumes_ml: Mapping[int, float],
    nodule_seg: Dataset | None,
    tracking_uids: Mapping[int, str],
) -> hd.sr.MeasurementReport:
    """The TID 1500 content: a finding per lung (its volume), one per nodule row, and the case's Lung-RADS
    category.

    Args:
        nodule_rows: ``nodules.csv`` rows (text or numbers), ``nodule_id`` = segment number in ``nodule_seg``.
        category: the case's Lung-RADS v2022 category.
        lungs_seg: the lungs SEG (segment 1 right, 2 left).
        lung_volumes_ml: volume (ml) per lung segment number; a lung without voxels is left out.
        nodule_seg: the nodules SEG (None without nodules).
        tracking_uids: nodule id -> the tracking UID of its SEG segment.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    if nodule_rows and nodule_seg is None:
        raise ValueError("nodule findings need the nodules SEG their regions refer to")
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=["lungscreen", __version__]),
        name="lungscreen",
        manufacturer_name="lungscreen",
        model_name="lungscreen",
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )
    findings = [
        lung_finding(lungs_seg, number, volume_ml=volume)
        for number, volume in sorted(lung_volumes_ml.items())
        if volume > 0
    ]
    findings += [
        nodule_finding(row, nodule_seg, tracking_uid=tracking_uids[int(row["nodule_id"])])
        for row in nodule_rows
        if nodule_seg is not None
    ]
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=_concept(PROCEDURE),
        imaging_measurements=findings or None,
    )
    _add_case_category(report, category)
    return report


def _add_case_category(report: hd.sr.MeasurementReport, category: str) -> None:
    """Append TID 1500's "Qualitative Evaluations" container holding the case's Lung-RADS category (highdicom
    builds the rest of the template but not this row)."""
    import highdicom as hd

    item = hd.sr.CodeContentItem(
        name=_concept(LUNG_RADS_CONCEPT),
        value=lung_rads_code(category),
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    container = hd.sr.ContainerContentItem(
        name=_concept(QUALITATIVE_EVALUATIONS), relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence([item])
    report[0].ContentSequence.append(container)


def build_sr(
    source: Sequence[Dataset],
    report: hd.sr.MeasurementReport,
    *,
    evidence: Sequence[Dataset] = (),
    series_uid: str | None = None,
) -> hd.sr.Comprehensive3DSR:
    """The Comprehensive 3D SR instance of ``report``, in the source's study (patient and study copied).

    ``evidence``: the SEG instances the findings refer to (listed with the source series as evidence).
    """
    import highdicom as hd

    return hd.sr.Comprehensive3DSR(
        evidence=[*source, *evidence],
        content=report,
        series_instance_uid=series_uid or hd.UID(),
        series_number=_series_number(source),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="lungscreen",
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description="lungscreen nodule report",
        coding_schemes=[
            hd.coding_schemes.CodingSchemeIdentificationItem(
                designator=PRIVATE_SCHEME,
                name="lungscreen local codes (Lung-RADS v2022 terms)",
                responsible_organization="lungscreen",
            )
        ],
    )


def _series_number(source: Sequence[Dataset]) -> int:
    number = getattr(source[0], "SeriesNumber", None)
    return 950 + (int(number) if number not in (None, "") else 1) % 100000
