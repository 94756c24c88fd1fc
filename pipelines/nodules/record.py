"""The candidate/nodule record: every measured field, typed, from extraction to the writers.

A candidate is born in :func:`pipelines.nodules.extract.extract_nodules` (mask measures, canonical index),
gets world and file coordinates (:mod:`pipelines.nodules.coordinates`), scores
(:func:`pipelines.screening.scoring.score_candidates`), its grid (:mod:`pipelines.screening.multiscale`), a
``nodule_id`` when it is reported, a lung zone, and a Lung-RADS category assigned once
(:func:`pipelines.nodules.lungrads.assign_categories`). The writers (``nodules.csv/json``, ``candidates.csv``,
the report) read it; :data:`pipelines.screening.outputs.NODULE_COLUMNS` lists the written fields in order.

The record is a :class:`typing.TypedDict`: a plain dict at run time (written to JSON and CSV as it is, and the
form our tests and users' scripts read), while mypy checks every key and value type at every step. Units and
frames are in the names: ``_mm`` millimetres, ``_mm3`` cubic millimetres, ``_hu`` Hounsfield units, ``lps``/
``ras`` world frames (LPS is the ITK/DICOM frame LUNA16 uses), ``canonical_index_zyx`` the voxel index on the
canonical LPS grid, ``voxel_i/j/k`` the index in the input file's own grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict


class Candidate(TypedDict, total=False):
    """One candidate; a reported nodule is a candidate with a ``nodule_id`` and a Lung-RADS category."""

    # identity and origin
    candidate_id: int  #: 1.. over the case's candidates, by score
    nodule_id: int  #: 1.. over the reported nodules; the label value in nodules.nii.gz
    source: str  #: "network" or "second_look"
    scale_mm: float  #: spacing of the network grid whose score it carries

    # scores, each in [0, 1] (the network output is a score, not a calibrated probability)
    probability: float  #: the final score that ranks candidates and is thresholded for reporting
    segmentation_probability: float  #: the network's peak probability
    classifier_probability: float | None  #: the false-positive classifier's, None without a classifier
    blobness: float  #: shape term (Hessian blob response)

    # position
    canonical_index_zyx: Sequence[float]  #: centre, voxel index on the canonical LPS grid
    center_lps_x_mm: float
    center_lps_y_mm: float
    center_lps_z_mm: float
    center_ras_x_mm: float
    center_ras_y_mm: float
    center_ras_z_mm: float
    voxel_i: float  #: centre, index in the input file's grid (x)
    voxel_j: float
    voxel_k: float
    lung_side: str  #: "right", "left" or ""
    lung_zone: str  #: upper / middle / lower third of that lung

    # size (Lung-RADS uses mean_diameter_mm) and density
    diameter_mm: float  #: equivalent-sphere diameter (internal name; written as equivalent_diameter_mm)
    equivalent_diameter_mm: float
    mean_diameter_mm: float  #: mean of long and short axis on the largest axial slice
    long_axis_mm: float
    short_axis_mm: float
    volume_mm3: float
    voxel_count: int
    mean_hu: float
    max_hu: float
    std_hu: float
    type: str  #: "solid", "part-solid", "ground-glass" or "calcified"
    solid_component_mm: float  #: mean diameter of the solid part (part-solid; the nodule's own when solid)

    # Lung-RADS v2022, assigned once
    lung_rads: str  #: the category reported ("0" for every nodule of a scan that was not fully read)
    size_category: str  #: the size-and-type category, kept when the scan category is "0"


#: Every key a :class:`Candidate` may hold.
CANDIDATE_FIELDS = tuple(Candidate.__annotations__)
