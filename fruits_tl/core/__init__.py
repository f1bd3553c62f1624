"""What every layer uses: the error types, the configuration dataclasses, durable file writes,
progress and timing, how a job stops (signals, and the fault points the kill tests use), and
where it runs (the distribution strategy, the cores and the workers)."""
