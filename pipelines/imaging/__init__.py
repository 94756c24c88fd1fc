"""Scans in and results out: reading any format and orientation, the canonical grid, resampling, writing back.

The first and last stage of every engine. :mod:`~pipelines.imaging.discovery` finds the cases in what the user
gave; :mod:`~pipelines.imaging.header`, :mod:`~pipelines.imaging.nifti_checks` and
:mod:`~pipelines.imaging.dicom_geometry` refuse what cannot be read safely; :mod:`~pipelines.imaging.io` reads a
scan onto the canonical LPS grid (arrays ``[z, y, x]``); :mod:`~pipelines.imaging.preprocess` crops and resamples
with exact inverses; :mod:`~pipelines.imaging.writing` writes masks back on the input's own grid;
:mod:`~pipelines.imaging.filesys` holds the atomic writes and special-file checks every stage uses.
"""
