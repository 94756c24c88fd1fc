"""Real NIfTI files with header extensions (TotalSegmentator's segmentations) are read, not refused."""

from __future__ import annotations

import pytest

from pipelines.imaging.io import read_image


@pytest.mark.parametrize(
    "name",
    ["ct/totalseg_abdomen_ct_3mm_reference_seg.nii.gz", "mri/totalseg_abdomen_mr_3mm_reference_seg.nii.gz"],
)
def test_nifti_with_extensions_is_read(shared_data, name):
    img = read_image(shared_data / name)
    assert img.GetDimension() == 3 and min(img.GetSize()) > 1
