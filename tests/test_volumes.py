"""CroppedVolume: the lung-crop probability without a full-size copy reads exactly like the full array."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.imaging.volumes import CroppedVolume
from pipelines.report.images import padded_box


def test_cropped_volume_boxes_equal_those_of_the_full_array():
    rng = np.random.default_rng(0)
    crop = rng.random((6, 7, 8)).astype(np.float32)
    vol = CroppedVolume(crop, (3, 2, 5), (12, 14, 20))
    full = vol.full()
    assert full.shape == (12, 14, 20) and full.dtype == np.float32 and vol.shape == full.shape
    np.testing.assert_array_equal(full[3:9, 2:9, 5:13], crop)
    assert full.sum() == pytest.approx(crop.sum(), rel=1e-6)  # zero elsewhere
    # boxes inside the crop, straddling its edge, outside it, and past the volume's border
    for center in [(5, 5, 8), (3, 2, 5), (9, 9, 13), (0, 0, 0), (11, 13, 19), (1, 12, 2), (20, -4, 30)]:
        for fill in (0.0, -1.0):
            np.testing.assert_array_equal(
                padded_box(vol, center, (2, 3, 4), fill=fill), padded_box(full, center, (2, 3, 4), fill=fill)
            )


def test_cropped_volume_refuses_a_box_that_does_not_fit():
    with pytest.raises(ValueError, match="does not fit"):
        CroppedVolume(np.zeros((4, 4, 4)), (0, 0, 2), (4, 4, 5))
    vol = CroppedVolume.from_slices(np.ones((2, 2, 2)), (slice(1, 3), slice(0, 2), slice(None, 2)), (3, 3, 3))
    assert vol.start == (1, 0, 0) and vol.full()[0].sum() == 0 and vol.full()[1:, :2, :2].all()
