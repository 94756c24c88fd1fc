"""What a reader looks at: the per-case HTML report, its figures and the run's index page."""
