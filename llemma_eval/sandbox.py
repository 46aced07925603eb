"""Running a model-written Python program in a sandbox (the tool-use tasks' scoring).

run_program(source) runs the program as a separate Python process and returns what it printed.
The layers, each on for every program:

- a fresh temporary working directory (also HOME and TMPDIR), removed afterwards whatever happened;
- no inherited environment: only PATH, LANG, HOME, TMPDIR, PYTHONDONTWRITEBYTECODE and one-thread
  settings for BLAS libraries, so nothing set in the scoring process (tokens, keys) is visible;
- `python -I` (no PYTHON* variables, no user site, no script directory on sys.path); site still runs,
  so the environment's site-packages (SymPy) are importable; directories holding sympy/mpmath in the
  scoring process are added when the child's site-packages lack them;
- resource limits set by a bootstrap before the program runs: RLIMIT_AS (address space), RLIMIT_CPU,
  RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_CORE = 0 and RLIMIT_NPROC = 0 (no new process or thread for
  a non-root user; the kernel does not apply it to root, hence the next layers);
- an audit hook (sys.addaudithook, installed by the bootstrap and impossible to remove from Python)
  that ends the program (exit status 4, "refused: <event>") on: fork, exec, spawn, system, Popen,
  kill; any socket creation, connect, bind or name lookup; any ctypes use; opening a file for
  writing, or creating, removing, renaming, linking or changing the mode of a path, outside the
  temporary directory; reading another process's /proc entry; opening a directory outside the
  temporary directory (a directory descriptor would let a relative path escape). The bootstrap
  imports ctypes and subprocess first (SymPy imports both), replaces _posixsubprocess.fork_exec (the
  one process-creating call without an audit event) and gc's object walkers (the way to the hook's
  own function) with refusals, and refuses their re-import. The hook stops careless or naive
  programs (what a language model writes), not a determined attacker who rewrites the interpreter's
  own Python-level functions; the process group kill, the limits and the namespace do not depend on it;
- a network namespace of its own (`unshare -rn`) where user namespaces are allowed: no interface
  but loopback, down;
- a session (process group) of its own, killed as a whole when the program ends, overruns the
  wall-clock timeout or prints more than max_output_bytes; run_program returns only once no process
  of the group is left.

If this machine cannot provide the sandbox (not POSIX, no `resource` module, no audit hooks in the
target interpreter), run_program raises SandboxUnavailable: programs are never run unsandboxed.
"""

import dataclasses
import functools
import importlib.util
import math
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from types import TracebackType

from neox.errors import NeoxError

DEFAULT_MEMORY = 2 * 2**30
DEFAULT_OUTPUT = 64 * 2**10
FILE_SIZE_LIMIT = 16 * 2**20
EXIT_MEMORY, EXIT_REFUSED, EXIT_SETUP = 3, 4, 5


class SandboxUnavailable(NeoxError, RuntimeError):
    """This machine cannot sandbox a program; the reason is the message (one line)."""


@dataclasses.dataclass
class SandboxResult:
    ok: bool
    stdout: str
    stderr: str
    reason: str  # "ok", "timeout", "cpu limit", "memory", "exit N", "output too large", "refused: EVENT", ...


# The child's first code: limits, sys.path, audit hook, then the program (argv: limits, dirs, paths).
_BOOTSTRAP = r"""
import os, sys
tmp, prog = sys.argv[1], sys.argv[2]
mem, cpu, fsize = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
sys.path.extend(p for p in sys.argv[6:] if p not in sys.path)
try:
    import resource
    for lim, value in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_FSIZE, fsize), (resource.RLIMIT_CORE, 0),
                       (resource.RLIMIT_NOFILE, 256), (resource.RLIMIT_NPROC, 0)):
        resource.setrlimit(lim, (value, value))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    import ctypes, gc, subprocess, _posixsubprocess  # SymPy imports ctypes and subprocess: loaded before the hook
    sys.addaudithook
except Exception as e:
    sys.stderr.write(f"sandbox setup failed: {type(e).__name__}: {e}\n")
    os._exit(5)


def _refusal(*a, **k):
    raise PermissionError("not allowed in the sandbox")


# process creation without an audit event; the way to the hook's function object
_posixsubprocess.fork_exec = gc.get_objects = gc.get_referrers = gc.get_referents = _refusal


def _install(tmp, real=os.path.realpath, fsdecode=os.fsdecode, isdir=os.path.isdir, write=os.write,
             exit=os._exit, flush=sys.stdout.flush, sep=os.sep, pid=str(os.getpid()),
             wflags=os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND):
    tmp = real(tmp)
    deny = frozenset({
        "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system", "os.startfile",
        "subprocess.Popen", "os.kill", "os.killpg", "signal.pthread_kill", "resource.setrlimit",
        "resource.prlimit", "pty.spawn", "socket.__new__", "socket.connect", "socket.bind",
        "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr", "socket.sethostname",
        "socket.sendto", "socket.sendmsg", "socket.getnameinfo", "os.setxattr", "os.removexattr",
        "os.chflags", "os.lchflags", "sys.setprofile", "sys.settrace"})
    # event -> positions of the paths it changes
    changes = {"os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.chmod": (0,), "os.chown": (0,),
               "os.truncate": (0,), "os.utime": (0,), "os.rename": (0, 1), "os.link": (1,), "os.symlink": (1,),
               "shutil.rmtree": (0,), "shutil.copyfile": (1,), "shutil.copytree": (1,), "shutil.move": (0, 1),
               "os.mkfifo": (0,), "os.mknod": (0,)}
    reimport = frozenset({"_posixsubprocess", "_ctypes", "ctypes", "subprocess", "resource", "gc"})

    def inside(path):
        p = real(fsdecode(path))
        return p == tmp or p.startswith(tmp + sep)

    def refuse(what):
        flush()
        write(2, f"\nsandbox: refused {what}\n".encode())
        exit(4)

    def hook(event, args):
        if event in deny or event.startswith("ctypes.") or event.startswith("_xxsubinterpreters"):
            refuse(event)
        elif event == "import" and args[0] in reimport:
            refuse(f"re-import of {args[0]}")
        elif event == "open" and not isinstance(args[0], int):
            path, mode, flags = args
            writing = (mode is not None and any(c in mode for c in "wax+")) or bool((flags or 0) & wflags)
            p = real(fsdecode(path))
            if writing and not inside(p):
                refuse(f"open for writing outside the sandbox: {p}")
            parts = p.split(sep)
            if len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() and parts[2] != pid:
                refuse(f"open of another process's {p}")
            if not inside(p) and isdir(p):
                refuse(f"open of a directory outside the sandbox: {p}")
        elif event in changes:
            for i in changes[event]:
                path = args[i] if i < len(args) else None
                if path is not None and not isinstance(path, int) and not inside(path):
                    refuse(f"{event} outside the sandbox: {fsdecode(path)}")

    sys.addaudithook(hook)


_install(tmp)
del _install, _refusal
with open(prog, encoding="utf-8") as f:
    code = compile(f.read(), "<program>", "exec")
try:
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
except MemoryError:
    sys.stdout.flush()
    os.write(2, b"\nMemoryError\n")
    os._exit(3)
"""


_NAMESPACE = {"off": False}  # set when unshare stopped working in this process


@functools.lru_cache(maxsize=None)
def _unshare_prefix() -> tuple[str, ...]:
    """["unshare", "-rn"] where a network namespace can be made here (user namespaces allowed)."""
    exe = shutil.which("unshare")
    if not exe or not sys.platform.startswith("linux"):
        return ()
    try:
        ok = subprocess.run([exe, "-rn", "true"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, timeout=10, env={"PATH": "/usr/bin:/bin"}).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return (exe, "-rn") if ok else ()


def _check_platform() -> None:
    if os.name != "posix" or not hasattr(os, "killpg") or not hasattr(os, "waitid"):
        raise SandboxUnavailable(f"program sandbox needs a POSIX system (this is {sys.platform}); "
                                 "tool-use tasks cannot be scored here")
    if importlib.util.find_spec("resource") is None:
        raise SandboxUnavailable("program sandbox needs Python's resource module; tool-use tasks cannot be scored here")


@functools.lru_cache(maxsize=None)
def _extra_paths(python: str) -> tuple[str, ...]:
    """Directories holding sympy and mpmath in this process (added to the child's sys.path if absent)."""
    if os.path.realpath(python) != os.path.realpath(sys.executable):
        return ()
    paths = []
    for name in ("sympy", "mpmath"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            paths.append(os.path.dirname(os.path.dirname(spec.origin)))
    return tuple(dict.fromkeys(paths))


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member we cannot signal (it changed user): still there
        return True
    return True


def _remove_tree(path: str) -> None:
    def unlock(func: Callable[[str], object], p: str,  # a directory the program made unwritable or unsearchable
               _exc: tuple[type[BaseException], BaseException, TracebackType]) -> None:
        try:
            os.chmod(os.path.dirname(p), stat.S_IRWXU)
            os.chmod(p, stat.S_IRWXU)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=unlock)
    if os.path.exists(path):
        shutil.rmtree(path, ignore_errors=True)


def run_program(source: str, *, timeout_s: float = 5.0, cpu_s: int | None = None,
                memory_bytes: int = DEFAULT_MEMORY, max_output_bytes: int = DEFAULT_OUTPUT,
                python: str = sys.executable) -> SandboxResult:
    """Run a Python program in the sandbox; stdout/stderr are what it printed (each capped)."""
    _check_platform()
    cpu = cpu_s if cpu_s is not None else max(1, math.ceil(timeout_s)) + 1
    limits = (timeout_s, cpu, memory_bytes, max_output_bytes, python)
    if not _NAMESPACE["off"] and _unshare_prefix():
        result = _run_once(source, _unshare_prefix(), *limits)
        if result is not None:
            return result
        _NAMESPACE["off"] = True  # unshare stopped working (e.g. a namespace limit): the hook still stands
        print("warning: program sandbox runs without a network namespace from now on (unshare failed)",
              file=sys.stderr)
    result = _run_once(source, (), *limits)
    assert result is not None, "None only when an unshare prefix failed"
    return result


def _run_once(source, prefix, timeout_s, cpu, memory_bytes, max_output_bytes, python) -> SandboxResult | None:
    """One run; None when the unshare prefix itself failed."""
    tmp = tempfile.mkdtemp(prefix="llemma-sandbox-")
    proc = None
    try:
        prog = os.path.join(tmp, "program.py")
        with open(prog, "w", encoding="utf-8") as f:
            f.write(source)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": tmp, "TMPDIR": tmp,
               "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1"}
        cmd = [*prefix, python, "-I", "-c", _BOOTSTRAP, tmp, prog, str(memory_bytes), str(cpu),
               str(FILE_SIZE_LIMIT), *_extra_paths(python)]
        start = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, close_fds=True)
        out, err, why = _collect(proc, start + timeout_s, max_output_bytes)
        # the whole group, while the leader (exited or not) is not yet reaped: its id cannot be reused
        _kill_group(proc.pid)
        rc = proc.wait()
        deadline = time.monotonic() + 10
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        stdout, stderr = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
        if why is None and prefix and rc == 1 and not stdout and stderr.startswith("unshare: "):
            return None
        if why is None:
            why = _reason(rc, stderr)
        return SandboxResult(ok=why == "ok", stdout=stdout, stderr=stderr, reason=why)
    finally:
        if proc is not None:
            for stream in (proc.stdout, proc.stderr):
                assert stream is not None, "both are pipes"
                stream.close()
            if proc.returncode is None:  # an exception on the way: still nothing left running
                _kill_group(proc.pid)
                proc.wait()
        _remove_tree(tmp)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _collect(proc, deadline: float, cap: int):
    """(stdout, stderr, reason or None): read both pipes until EOF, the deadline or stdout over cap."""
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    bufs = {out_fd: bytearray(), err_fd: bytearray()}
    with selectors.DefaultSelector() as sel:  # not select(): no FD_SETSIZE limit in a process with many files
        for fd in bufs:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(bufs[out_fd]), bytes(bufs[err_fd]), "timeout"
            for key, _ in sel.select(left):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                buf = bufs[key.fd]
                buf += chunk[:max(0, cap + 1 - len(buf))]
                if key.fd == out_fd and len(buf) > cap:
                    return bytes(buf[:cap]), bytes(bufs[err_fd]), "output too large"
    # both pipes closed: wait for the leader to exit, without reaping it (its group id stays ours)
    while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if time.monotonic() >= deadline:
            return bytes(bufs[out_fd]), bytes(bufs[err_fd]), "timeout"
        time.sleep(0.002)
    return bytes(bufs[out_fd]), bytes(bufs[err_fd]), None


def _reason(rc: int, stderr: str) -> str:
    if rc == 0:
        return "ok"
    if rc == EXIT_REFUSED:
        line = stderr.rstrip().rsplit("\n", 1)[-1]
        return line.replace("sandbox: ", "", 1) if line.startswith("sandbox: refused") else f"exit {rc}"
    if rc == EXIT_MEMORY or (rc == 1 and stderr.rstrip().endswith("MemoryError")):
        return "memory"
    if rc == EXIT_SETUP and stderr.startswith("sandbox setup failed"):
        raise SandboxUnavailable(stderr.strip().splitlines()[0])
    if rc == -signal.SIGXCPU:
        return "cpu limit"
    if rc == -signal.SIGXFSZ:
        return "file size"
    if rc < 0:
        return "killed"
    return f"exit {rc}"
