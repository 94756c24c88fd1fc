"""The ``lungscreen`` command line: one module per command group, each parser beside its handler."""
