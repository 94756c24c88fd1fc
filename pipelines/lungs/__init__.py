"""Lung segmentation of chest CT (classical, no network): right and left lung on the canonical grid."""
