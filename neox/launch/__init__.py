"""A job's processes: the local launcher behind deepy.py, the distributed set-up, stop requests
(signals), the hang watchdog, the status a job ends with for Slurm, ports, start-up quiet and the
test-only fault switches planted in a running job."""
