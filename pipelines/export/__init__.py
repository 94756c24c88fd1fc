"""Results for other tools: DICOM Segmentation and Structured Report objects filed with the source study
(:mod:`pipelines.export.dicom_out`), and 3D Slicer markups (:mod:`pipelines.export.markups`).

The DICOM objects carry the source's patient and study identifiers by design (a PACS files them with the
study); they are written only on request. ``pydicom`` and ``highdicom`` (the ``dicom`` extra) are imported
when an export runs, never when the package is imported.
"""
