"""One job per save directory: a lock file in <save> naming its holder (host, pid, Slurm job id,
start time), taken by rank 0 before anything is written there and released on exit.

A second job gets a one-line error naming the holder. A lock is stale, and is taken over with a
warning, when its holder is gone on this host (no such pid) or, held from another host, when it
has not been refreshed for ``save_lock_stale_minutes`` (the holder touches it every minute from
a background thread, so only a dead holder or a dead node gets that old). Temp directories carry
the job's identity (``.tmp-global_step<N>.<job>``), and the ``.tmp-*`` of dead jobs are removed."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import threading
import time

from neox.checkpoint.files import CheckpointError

LOCK = ".lock"
HEARTBEAT_SECONDS = 60


def job_identity() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "slurm_cluster": os.environ.get("SLURM_CLUSTER_NAME"),
            "start_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def job_token(holder: dict) -> str:
    """The job's part of its temp directory names (safe in a file name)."""
    job = f"slurm{holder['slurm_job_id']}" if holder.get("slurm_job_id") else "local"
    return f"{holder['host']}-{holder['pid']}-{job}".replace("/", "_")


def describe(holder: dict) -> str:
    slurm = f", Slurm job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    return f"host {holder.get('host')} pid {holder.get('pid')}{slurm}, started {holder.get('start_time')}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def slurm_job_running(job: str) -> bool | None:
    """Whether Slurm still runs the job (squeue), None where there is no squeue to ask."""
    try:
        r = subprocess.run(["squeue", "-h", "-j", str(job), "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.returncode == 0 and r.stdout.strip() in ("RUNNING", "COMPLETING", "SUSPENDED", "STOPPED")


def stale_reason(holder: dict, age_seconds: float, stale_minutes: float) -> str | None:
    """Why the lock's holder is gone, or None if it may still be running."""
    job = holder.get("slurm_job_id")
    # job ids mean something only on their own cluster (save directories can be shared between two)
    cluster = os.environ.get("SLURM_CLUSTER_NAME")
    this_cluster = bool(job) and cluster is not None and holder.get("slurm_cluster") == cluster
    if this_cluster and job == os.environ.get("SLURM_JOB_ID"):
        # Slurm starts a requeued job only after its earlier run has ended, on whichever nodes
        return "an earlier run of this Slurm job (requeued), whose rank 0 did not release it"
    if holder.get("host") == socket.gethostname():
        return None if _pid_alive(int(holder.get("pid", -1))) else f"pid {holder.get('pid')} is not running"
    if this_cluster and job is not None and slurm_job_running(job) is False:  # this_cluster: job is set
        return f"Slurm job {job} is no longer running"
    if age_seconds > stale_minutes * 60:
        return f"not refreshed for {age_seconds / 60:.0f} minutes (save_lock_stale_minutes {stale_minutes:g})"
    return None


def io_cause(error: Exception, directory: str) -> str:
    """The operating system's reason for a failed write. torch.save reports a full disk as
    'unexpected pos 3328 vs 3220', so a small probe write in the same directory asks again."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    where = directory if os.path.isdir(directory) else os.path.dirname(directory)
    probe = os.path.join(where, f".write-probe-{os.getpid()}")
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * (1 << 20))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        return e.strerror or str(e)
    finally:
        if os.path.exists(probe):
            os.remove(probe)
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def check_save_dir(save: str, needed_bytes: int) -> None:
    """At start: <save> can be created and written (a probe file) and holds one checkpoint."""
    try:
        os.makedirs(save, exist_ok=True)
        probe = os.path.join(save, f".write-probe-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("probe")
        os.remove(probe)
    except OSError as e:
        raise CheckpointError(f"key 'save': cannot write to {save}: {e.strerror or e}") from None
    free = shutil.disk_usage(save).free
    if free < needed_bytes:
        raise CheckpointError(f"key 'save': {save} has {free / 2**20:,.1f} MiB free but one checkpoint needs "
                              f"{needed_bytes / 2**20:,.1f} MiB (planner): free space or save elsewhere")


class SaveLock:
    def __init__(self, save: str, stale_minutes: float):
        self.save, self.path, self.stale_minutes = save, os.path.join(save, LOCK), stale_minutes
        self.holder = job_identity()
        self.token = job_token(self.holder)
        self._stop = threading.Event()

    def acquire(self) -> list[str]:
        """Take the lock (or raise CheckpointError naming the holder). Returns warning lines."""
        os.makedirs(self.save, exist_ok=True)
        warnings = []
        for _ in range(2):  # a second try after removing a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                warnings += self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.holder, f)
            threading.Thread(target=self._heartbeat, daemon=True, name="save-lock").start()
            return warnings + self._remove_dead_temp_dirs()
        raise CheckpointError(f"save directory {self.save}: could not take the lock {self.path}")

    def _take_over_if_stale(self) -> list[str]:
        try:
            with open(self.path) as f:
                holder = json.load(f)
            age = time.time() - os.path.getmtime(self.path)
        except FileNotFoundError:  # released meanwhile
            return []
        except (OSError, ValueError):
            holder, age = {}, float("inf")  # unreadable: a crash while writing it
        reason = stale_reason(holder, age, self.stale_minutes)
        if reason is None:
            raise CheckpointError(f"save directory {self.save} is in use by another job ({describe(holder)}; lock "
                                  f"{self.path}): two jobs would delete each other's checkpoints; stop that job "
                                  "or give this one another save directory")
        os.remove(self.path)
        return [f"save directory {self.save}: took over the stale lock of {describe(holder)} ({reason})"]

    def _remove_dead_temp_dirs(self) -> list[str]:
        """With the lock held, every .tmp-* in <save> belongs to a job that is gone."""
        dead = sorted(glob.glob(os.path.join(self.save, ".tmp-*")))
        for path in dead:
            shutil.rmtree(path, ignore_errors=True)
        return [f"removed {len(dead)} unfinished checkpoint director{'y' if len(dead) == 1 else 'ies'} of earlier "
                f"jobs: {', '.join(os.path.basename(p) for p in dead)}"] if dead else []

    def _heartbeat(self):
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        self._stop.set()
        try:
            with open(self.path) as f:
                mine = json.load(f) == self.holder
        except (OSError, ValueError):
            return
        if mine:
            os.remove(self.path)
