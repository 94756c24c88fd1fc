"""Evaluation: LUNA16 FROC/CPM with bootstrap intervals, segmentation metrics, LUNA16 ingest."""
