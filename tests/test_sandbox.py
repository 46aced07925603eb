"""llemma_eval.sandbox: hostile programs fail, leave no process and no file behind, and are scored wrong."""

import os
import socket
import stat
import time

import psutil
import pytest

from llemma_eval import sandbox, tool_use
from llemma_eval.sandbox import SandboxUnavailable, run_program

pytestmark = pytest.mark.processes  # every test here starts processes (docs/tests.md)


@pytest.fixture
def made_dirs(monkeypatch):
    """The temporary directories run_program makes (each must be gone after the run), and this
    process's children before it (earlier tests may leave some: torch's compile workers)."""
    made = _Made()
    made.children_before = {c.pid for c in psutil.Process().children(recursive=True)}
    real = sandbox.tempfile.mkdtemp

    def mkdtemp(*a, **k):
        made.append(real(*a, **k))
        return made[-1]

    monkeypatch.setattr(sandbox.tempfile, "mkdtemp", mkdtemp)
    return made


class _Made(list):
    children_before: set


def assert_nothing_left(made_dirs):
    assert made_dirs, "run_program made no temporary directory"
    for d in made_dirs:
        assert not os.path.exists(d), f"temporary directory {d} left behind"
        for p in psutil.process_iter(["cmdline"]):
            try:
                assert not any(d in part for part in (p.info["cmdline"] or [])), f"process {p.pid} left behind"
            except psutil.Error:
                pass
    new = [c for c in psutil.Process().children(recursive=True) if c.pid not in made_dirs.children_before]
    assert new == []


def test_correct_program_prints_42(made_dirs):
    r = run_program("x = 6 * 7\nprint(x)\n")
    assert (r.ok, r.stdout, r.reason) == (True, "42\n", "ok")
    assert_nothing_left(made_dirs)


def test_sympy_is_importable_and_files_inside_the_directory_are_allowed(made_dirs):
    r = run_program("import sympy\nopen('scratch.txt', 'w').write('5')\n"
                    "print(sympy.Rational(int(open('scratch.txt').read()), 10))\n", timeout_s=30)
    assert (r.ok, r.stdout.strip()) == (True, "1/2"), r.stderr
    assert_nothing_left(made_dirs)


def test_infinite_loop_times_out(made_dirs):
    start = time.monotonic()
    r = run_program("while True:\n    pass\n", timeout_s=1.0)
    elapsed = time.monotonic() - start
    assert (r.ok, r.reason) == (False, "timeout")
    assert 1.0 <= elapsed < 5.0  # the limit, plus killing the group on a loaded 2-core machine
    assert_nothing_left(made_dirs)


def test_cpu_limit(made_dirs):
    start = time.monotonic()
    r = run_program("while True:\n    pass\n", timeout_s=30, cpu_s=1)
    assert (r.ok, r.reason) == (False, "cpu limit")
    assert time.monotonic() - start < 10
    assert_nothing_left(made_dirs)


def test_huge_allocation_is_a_memory_failure(made_dirs):
    r = run_program("x = bytearray(100 * 2**30)\nprint('allocated')\n")
    assert (r.ok, r.reason, r.stdout) == (False, "memory", "")
    assert_nothing_left(made_dirs)


def test_huge_output_is_capped(made_dirs):
    r = run_program("while True:\n    print('y' * 1000)\n", max_output_bytes=10_000, timeout_s=10)
    assert (r.ok, r.reason) == (False, "output too large")
    assert len(r.stdout) == 10_000
    assert_nothing_left(made_dirs)


def test_environment_is_not_inherited(made_dirs, monkeypatch):
    monkeypatch.setenv("LLEMMA_SECRET", "x-parent-only-value")
    r = run_program("import os\nprint(os.environ.get('LLEMMA_SECRET'))\nprint(dict(os.environ))\n")
    assert r.ok, r.stderr
    assert "x-parent-only-value" not in r.stdout and r.stdout.startswith("None\n")
    assert "'HOME': '" + made_dirs[0] in r.stdout
    r = run_program("import os\nprint(open(f'/proc/{os.getppid()}/environ').read())\n")
    assert not r.ok and r.reason.startswith("refused open of another process's /proc/")
    assert_nothing_left(made_dirs)


def test_temporary_directory_removed_even_when_made_unremovable(made_dirs):
    r = run_program("import os\nos.makedirs('a/b')\nopen('a/b/f', 'w').write('x')\nos.chmod('a/b', 0)\n"
                    "os.chmod('a', 0)\nprint('done')\n")
    assert (r.ok, r.stdout) == (True, "done\n"), r.stderr
    assert_nothing_left(made_dirs)


# Hostile programs: each must fail in the sandbox, leave nothing behind and score wrong as a solution().
FORK_BOMB = "import os\nwhile True:\n    os.fork()\n"
SUBPROCESS_BOMB = ("import subprocess, sys\nwhile True:\n"
                   "    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n")
MULTIPROCESSING = "import multiprocessing, time\np = multiprocessing.Process(target=time.sleep, args=(60,))\np.start()\n"
FORK_EXEC = ("import _posixsubprocess, sys\n"
             "_posixsubprocess.fork_exec([sys.executable], [sys.executable.encode()], True, (), None, None, "
             "-1, -1, -1, -1, -1, -1, -1, -1, False, True, None, None, None, -1, None, False)\n")
CTYPES_FORK = "import ctypes\nctypes.CDLL(None).fork()\n"
SYSTEM = "import os\nos.system('sleep 60 &')\n"


@pytest.mark.parametrize("source, reason", [
    (FORK_BOMB, "refused os.fork"),
    (SUBPROCESS_BOMB, "refused subprocess.Popen"),
    (MULTIPROCESSING, "refused os.fork"),
    (FORK_EXEC, "exit 1"),  # fork_exec is replaced by a refusal: PermissionError
    (CTYPES_FORK, "refused ctypes.dlopen"),
    (SYSTEM, "refused os.system"),
])
def test_no_process_can_be_made(made_dirs, source, reason):
    r = run_program(source, timeout_s=10)
    assert (r.ok, r.reason) == (False, reason), r.stderr
    if reason == "exit 1":
        assert r.stderr.rstrip().endswith("PermissionError: not allowed in the sandbox")
    assert_nothing_left(made_dirs)


def test_writing_outside_the_directory_is_refused(made_dirs, tmp_path):
    target, keep = tmp_path / "escaped.txt", tmp_path / "keep.txt"
    keep.write_text("kept")
    for source, reason in [
        (f"open({str(target)!r}, 'w').write('x')\n", "refused open for writing outside the sandbox"),
        (f"import os\nos.close(os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT))\n", "refused open for writing"),
        (f"import os\nos.remove({str(keep)!r})\n", "refused os.remove outside the sandbox"),
        (f"import os\nos.rename({str(keep)!r}, 'mine')\n", "refused os.rename outside the sandbox"),
        (f"import os\nos.symlink({str(tmp_path)!r}, 'link')\nopen('link/escaped.txt', 'w').write('x')\n",
         "refused open for writing outside the sandbox"),
        (f"import os\nfd = os.open({str(tmp_path)!r}, os.O_RDONLY)\n"
         "os.close(os.open('escaped.txt', os.O_WRONLY | os.O_CREAT, dir_fd=fd))\n", "refused open of a directory"),
    ]:
        r = run_program(source)
        assert not r.ok and r.reason.startswith(reason), (source, r.reason, r.stderr)
        assert not target.exists() and keep.read_text() == "kept"
    assert sorted(os.listdir(tmp_path)) == ["keep.txt"]
    assert_nothing_left(made_dirs)


def test_no_socket_and_the_listener_sees_no_connection(made_dirs):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    try:
        r = run_program(f"import socket\ns = socket.socket()\ns.connect(('127.0.0.1', {port}))\nprint('connected')\n")
        assert (r.ok, r.reason, r.stdout) == (False, "refused socket.__new__", "")
        with pytest.raises(socket.timeout):
            listener.accept()
    finally:
        listener.close()
    assert_nothing_left(made_dirs)


HOSTILE_SOLUTIONS = {
    "loop": "    while True:\n        pass\n",
    "fork": "    import os\n    os.fork()\n",
    "subprocess": "    import subprocess\n    subprocess.run(['true'])\n",
    "memory": "    x = bytearray(100 * 2**30)\n",
    "write": "    open('/tmp/llemma-sandbox-escape-test', 'w').write('x')\n",
    "socket": "    import socket\n    socket.create_connection(('127.0.0.1', 9))\n",
    "output": "    print('z' * 10**6)\n",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_SOLUTIONS))
def test_hostile_solution_scores_wrong(made_dirs, monkeypatch, name):
    monkeypatch.setattr(tool_use.Gsm8kPythonKind, "timeout_s", 1.5)
    program = "def solution():\n" + HOSTILE_SOLUTIONS[name] + "    return 42\n"
    kind = tool_use.GSM8K_PYTHON
    gold = kind.gold("6 * 7 = 42\n#### 42", "default")
    honest = kind.extract("def solution():\n    return 42\n```", "default")
    assert honest == "42" and kind.equal(honest, gold, "default", None)
    for protocol in ("default", "llemma"):
        assert kind.extract(program + "```", protocol) is None
    assert not os.path.exists("/tmp/llemma-sandbox-escape-test")
    assert_nothing_left(made_dirs)


def test_unavailable_sandbox_refuses(monkeypatch, tmp_path):
    monkeypatch.setattr(sandbox.os, "name", "nt")
    with pytest.raises(SandboxUnavailable, match="POSIX"):
        run_program("print(1)")
    with pytest.raises(SandboxUnavailable):  # the scorer does not fall back to running unsandboxed
        tool_use.GSM8K_PYTHON.extract("def solution():\n    return 1\n", "default")
    monkeypatch.undo()
    # an interpreter whose bootstrap cannot set the limits up
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'sandbox setup failed: ModuleNotFoundError: no resource' >&2\nexit 5\n")
    fake.chmod(stat.S_IRWXU)
    with pytest.raises(SandboxUnavailable, match="no resource"):
        run_program("print(1)", python=str(fake))
    assert run_program("print(1)").ok  # the real interpreter still works afterwards


def test_the_hook_cannot_be_reached_or_its_modules_reloaded(made_dirs):
    r = run_program("import gc\nprint(len(gc.get_objects()))\n")
    assert not r.ok and r.stderr.rstrip().endswith("PermissionError: not allowed in the sandbox")
    for module in ("gc", "_posixsubprocess", "_ctypes"):
        r = run_program(f"import sys\nsys.modules.pop({module!r}, None)\nimport {module}\nprint('reloaded')\n")
        assert (r.ok, r.reason, r.stdout) == (False, f"refused re-import of {module}", "")
    r = run_program("import sys\nsys.settrace(lambda *a: None)\n")
    assert r.reason == "refused sys.settrace"
    assert_nothing_left(made_dirs)


def test_network_namespace_when_available_else_fallback(made_dirs, monkeypatch):
    r = run_program("import os\nprint(os.readlink('/proc/self/ns/net'))\n")
    assert r.ok, r.stderr
    own = os.readlink("/proc/self/ns/net")
    assert (r.stdout.strip() != own) == bool(sandbox._unshare_prefix())
    # unshare failing at run time: the program still runs (audit hook on), namespace off from then on
    monkeypatch.setitem(sandbox._NAMESPACE, "off", False)
    monkeypatch.setattr(sandbox, "_unshare_prefix", lambda: ("/bin/sh", "-c", "echo 'unshare: no room' >&2; exit 1"))
    r = run_program("import os\nos.fork()\n")
    assert (r.ok, r.reason, sandbox._NAMESPACE["off"]) == (False, "refused os.fork", True)
    assert run_program("print(6 * 7)").stdout == "42\n"
    assert_nothing_left(made_dirs)


def test_concurrent_runs_from_threads(made_dirs):
    from concurrent.futures import ThreadPoolExecutor

    sources = [f"print({i} * {i})\n" if i % 3 else "while True:\n    pass\n" for i in range(12)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda s: run_program(s, timeout_s=2.0), sources))
    for i, r in enumerate(results):
        assert (r.ok, r.stdout) == (True, f"{i * i}\n") if i % 3 else r.reason == "timeout"
    assert len(made_dirs) == 12
    assert_nothing_left(made_dirs)
