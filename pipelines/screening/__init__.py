"""The screening of chest CT: settings, the per-case stages, the network, scoring, case writing, the API.

:class:`~pipelines.screening.stages.Screener` runs one case (preprocess -> predict -> analyse -> write);
:class:`~pipelines.screening.engine.ScreeningEngine` runs a batch of them with :mod:`pipelines.batch.runner`;
:func:`~pipelines.screening.api.screen` is the Python API.
"""
