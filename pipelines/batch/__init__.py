"""What every batch engine shares: the runner (resume, faults, pipelining, sharding), run state and records."""
