"""From a probability map to measured nodules: extraction, size, density, coordinates, second look, Lung-RADS.

:mod:`~pipelines.nodules.record` is the typed record that carries every field from extraction to the writers.
"""
