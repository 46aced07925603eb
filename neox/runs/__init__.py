"""What is done with whole runs: mixture sweeps of short trial runs (``sweep``) and a run's metrics
as pictures (``plot``)."""
