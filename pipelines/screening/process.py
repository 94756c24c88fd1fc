"""Process set-up for programs that exist to screen (the ``lungscreen screen`` command, the benchmark's workers).

Not for a library caller's interpreter: :func:`settle_imports` acts on the whole process.
"""

from __future__ import annotations


def settle_imports() -> None:
    """Import what screening runs and leave every object alive now out of the cyclic garbage collector's scans.

    A screening process holds some 400 thousand objects from its imports (torch, MONAI, SciPy) for its whole
    life. Python's first full collection walks all of them: 0.28 s on the development VM, once per process, in
    whichever stage it falls (it fell in the postprocessing of the benchmark's single scan). ``gc.freeze`` moves
    them to a generation no collection scans; they are still freed by reference counting. Meant for processes
    that exist to screen (the command line, the benchmark's workers), not for a library caller's interpreter,
    whose own objects it would freeze too.
    """
    import gc

    import pipelines.bundle
    import pipelines.nodules.extract
    import pipelines.nodules.second_look
    import pipelines.screening.multiscale
    import pipelines.screening.stages  # noqa: F401  (imports only)

    gc.freeze()
