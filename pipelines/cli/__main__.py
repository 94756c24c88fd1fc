"""``python -m pipelines.cli``: the ``lungscreen`` command."""

from pipelines.cli.main import main

raise SystemExit(main())
