"""The code sandbox against the attacks of issue 7: each must fail without touching the host.

Limits are kept tight (a few seconds, 16 processes, 256 MiB) so that even a failing test cannot load this
shared machine for long.
"""

from __future__ import annotations

import os
import socket
import time
import uuid

import pytest

from novalign.eval.sandbox import (
    SandboxLimits,
    pass_at_k_for_problem,
    run_python,
    run_tests,
)

TIGHT = SandboxLimits(wall_seconds=3.0, cpu_seconds=2, memory_bytes=256 * 2**20, max_processes=16)

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the sandbox needs POSIX rlimits")


def _sandbox_processes() -> list[str]:
    """Command lines of live sandbox processes (their argv holds the work folder path)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
        except OSError:
            continue
        if "novalign_sandbox_" in cmdline and "pytest" not in cmdline:
            found.append(cmdline)
    return found


def test_correct_solution_passes_and_wrong_one_fails():
    solution = "def add(a, b):\n    return a + b\n"
    tests = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\nprint('ok')\n"
    result = run_tests(solution, tests, TIGHT)
    assert result.passed and result.reason == "passed" and result.stdout == "ok\n"
    wrong = run_tests("def add(a, b):\n    return a - b\n", tests, TIGHT)
    assert not wrong.passed and wrong.exit_code == 1 and "AssertionError" in wrong.stderr


def test_infinite_loop_is_killed_by_the_wall_clock():
    start = time.monotonic()
    result = run_python("import time\nwhile True:\n    time.sleep(0.01)\n", SandboxLimits(wall_seconds=1.0))
    assert result.timed_out and not result.passed and result.reason == "timeout"
    assert time.monotonic() - start < 5


def test_busy_loop_is_stopped_by_cpu_or_wall_limit():
    start = time.monotonic()
    result = run_python("while True:\n    pass\n", SandboxLimits(wall_seconds=3.0, cpu_seconds=1))
    assert not result.passed
    assert result.reason in ("killed by SIGXCPU", "killed by SIGKILL", "timeout")
    assert time.monotonic() - start < 6


def test_memory_bomb_fails_inside_the_limit():
    bomb = "blocks = []\nwhile True:\n    blocks.append(bytearray(50 * 2**20))\n"
    result = run_python(bomb, TIGHT)
    assert not result.passed and not result.timed_out
    assert "MemoryError" in result.stderr


def test_fork_bomb_is_contained_and_leaves_no_process():
    bomb = (
        "import os\n"
        "while True:\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        pass\n"
    )
    start = time.monotonic()
    result = run_python(bomb, SandboxLimits(wall_seconds=2.0, cpu_seconds=2, max_processes=8))
    assert not result.passed
    assert time.monotonic() - start < 8
    time.sleep(0.2)
    assert _sandbox_processes() == []


def test_writes_outside_the_work_folder_fail():
    target = f"/tmp/novalign_sandbox_escape_{uuid.uuid4().hex}"
    code = (
        f"target = {target!r}\n"
        "try:\n"
        "    open(target, 'w').write('escaped')\n"
        "    print('python write succeeded')\n"
        "except OSError as e:\n"
        "    print('python write blocked', e)\n"
        "open('inside.txt', 'w').write('fine')\n"
        "print(open('inside.txt').read())\n"
    )
    result = run_python(code, TIGHT)
    assert "python write blocked" in result.stdout and "fine" in result.stdout
    assert not os.path.exists(target)
    # A shell child would have no audit hook: starting it is refused (and, as root, the uid and the private
    # /tmp would stop it too).
    shell = f"import subprocess\nsubprocess.run(['/bin/sh', '-c', 'echo escaped > {target}'])\n"
    result = run_python(shell, TIGHT)
    assert "subprocess.Popen is disabled in the sandbox" in result.stderr
    assert not os.path.exists(target)


def test_outgoing_socket_to_localhost_fails():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    code = (
        "import socket, subprocess, sys\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
        "    print('connected')\n"
        "except OSError as e:\n"
        "    print('blocked', e)\n"
        # a fresh interpreter without the bootstrap: only the network namespace stops this one
        "probe = 'import socket; socket.create_connection((\"127.0.0.1\", %d), timeout=1)'\n"
        "try:\n"
        f"    done = subprocess.run(['/usr/bin/env', 'python3', '-c', probe % {port}], capture_output=True)\n"
        "    print('child exit', done.returncode)\n"
        "except OSError as e:\n"
        "    print('child refused')\n"
    )
    try:
        result = run_python(code, TIGHT)
        if os.geteuid() == 0:
            # as root the network namespace must be in force, wherever the checkout (and its venv) lives --
            # a probe that failed for an unrelated reason once silently dropped it in a clone under /tmp
            assert "netns" in result.isolation, result.isolation
        if "netns" in result.isolation:
            server.setblocking(False)
            with pytest.raises(BlockingIOError):  # nothing ever reached the listening socket
                server.accept()
            assert "child refused" in result.stdout
    finally:
        server.close()
    assert "blocked" in result.stdout and "connected" not in result.stdout


def test_output_is_capped():
    result = run_python("print('x' * 100_000)\n", SandboxLimits(max_output_bytes=1000))
    assert result.passed and result.truncated and len(result.stdout) == 1000


def test_pass_at_k_for_problem_counts_passing_samples():
    """Samples: 2 correct, 3 wrong -> n=5, c=2: pass@1 = 0.4, pass@2 = 1 - C(3,2)/C(5,2) = 0.7."""
    tests = "assert square(3) == 9\n"
    right = "def square(x):\n    return x * x\n"
    wrong = "def square(x):\n    return x + x\n"
    loops = "def square(x):\n    while True:\n        pass\n"
    broken = "def square(x) return x\n"
    samples = [right, wrong, loops, right, broken]
    limits = SandboxLimits(wall_seconds=1.0, cpu_seconds=1)
    assert pass_at_k_for_problem(samples, tests, 1, limits) == pytest.approx(0.4)
    assert pass_at_k_for_problem(samples, tests, 2, limits) == pytest.approx(0.7)


def test_without_privileges_the_bootstrap_still_blocks_sockets_and_writes(monkeypatch):
    """The layer left to a non-root user (as on CI): no uid switch, no namespaces, only rlimits and the
    bootstrap. Simulated here by hiding root; no fork bomb in this mode, since root ignores RLIMIT_NPROC."""
    from novalign.eval import sandbox

    monkeypatch.setattr(sandbox.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(sandbox, "_namespaces_work", lambda: False)
    target = f"/tmp/novalign_sandbox_escape_{uuid.uuid4().hex}"
    code = (
        "import socket\n"
        "for attempt in (lambda: socket.create_connection(('127.0.0.1', 9), timeout=1),\n"
        "                lambda: socket.socket(), lambda: __import__('ctypes').CDLL(None),\n"
        f"                lambda: open({target!r}, 'w')):\n"
        "    try:\n"
        "        attempt()\n"
        "        print('allowed')\n"
        "    except (OSError, ImportError) as e:\n"
        "        print('blocked')\n"
    )
    result = run_python(code, TIGHT)
    assert result.isolation[:2] == ("rlimits", "audit-hook") and set(result.isolation[2:]) <= {"seccomp"}
    assert result.stdout.split() == ["blocked"] * 4, result.stderr
    assert not os.path.exists(target)


ADD_TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"


@pytest.mark.parametrize("solution", [
    "import sys\nsys.exit(0)\n",
    "import os\nos._exit(0)\n",
    "raise SystemExit\n",
    "def add(a, b):\n    return 0\n'''\n",  # comment the tests out: they are parsed on their own
    "import builtins\nbuiltins.exec = lambda *a, **k: None\ndef add(a, b):\n    return 0\n",  # skip the tests
    "import os\nfor fd in range(3, 20):\n    try:\n        os.write(fd, b'0' * 32)\n    except OSError:\n"
    "        pass\nos._exit(0)\n",  # forge the completion message
    "import sys\ntoken = sys._getframe(1).f_locals['token']\n",  # steal the token from the bootstrap's frame
])
def test_exiting_before_the_tests_fails(solution):
    """Issue 22 item 1: an exit code 0 is not a pass; the tests must have run to their end."""
    result = run_tests(solution, ADD_TESTS, TIGHT)
    assert not result.passed and not result.completed, (result.reason, result.stderr)


def test_stdlib_frame_probes_still_work():
    """The frame-introspection refusal is a ValueError too, which namedtuple, typing, enum and logging catch."""
    solution = (
        "import collections, enum, logging, typing\n"
        "Point = collections.namedtuple('Point', 'x y')\nT = typing.TypeVar('T')\nColor = enum.Enum('Color', 'RED')\n"
        "logging.warning('still logs')\n"
        "def add(a, b):\n    return Point(a, b).x + Point(a, b).y\n"
    )
    result = run_tests(solution, ADD_TESTS, TIGHT)
    assert result.passed and result.completed and result.reason == "passed", result.stderr
    assert "still logs" in result.stderr


PROCESS_ATTEMPTS = (
    "os.system('touch {t}')",
    "subprocess.run(['/bin/sh', '-c', 'touch {t}'])",
    "os.posix_spawn('/bin/sh', ['sh', '-c', 'touch {t}'], {{}})",
    "os.execv('/bin/sh', ['sh', '-c', 'touch {t}'])",
    "os.fork() or os._exit(0)",
    "importlib.util.module_from_spec(importlib.util.find_spec('_posixsubprocess'))",  # a fresh copy (see below)
    "os.kill(os.getppid(), 0)",
)


def _try_processes(target: str) -> str:
    lines = ["import _imp, importlib.util, os, subprocess"]
    for i, attempt in enumerate(PROCESS_ATTEMPTS):
        lines += ["try:", f"    {attempt.format(t=target)}", f"    print('allowed {i}')",
                  "except (OSError, ImportError):", f"    print('refused {i}')"]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("simulate_user", [False, True])
def test_starting_a_process_is_refused(monkeypatch, simulate_user):
    """Issue 22 item 2: a child process has no audit hook, so every way to start one is refused, with and
    without root. Attempt 5, a fresh copy of fork_exec, is refused for an extension module; a built-in one (Debian's
    python3) hands it out, and calling it is what seccomp refuses (x86_64)."""
    from novalign.eval import sandbox

    if simulate_user:
        monkeypatch.setattr(sandbox.os, "geteuid", lambda: 1000)
        monkeypatch.setattr(sandbox, "_namespaces_work", lambda: False)
    target = f"/tmp/novalign_sandbox_child_{uuid.uuid4().hex}"
    result = run_python(_try_processes(target), TIGHT)
    refused = [f"refused {i}" for i in range(len(PROCESS_ATTEMPTS)) if i != 5]
    assert [line for line in result.stdout.split("\n") if line.startswith("refused") and line != "refused 5"] == \
        refused, result.stdout + result.stderr
    assert not os.path.exists(target)
    if os.uname().machine == "x86_64":
        assert "seccomp" in result.isolation
        # past every Python-level guard: sys.audit silenced, an unpatched fork_exec; only seccomp is left
        fresh = run_python("import _imp, importlib.util, subprocess, sys\n"
                           "sys.audit = lambda *args: None\n"
                           "copy = _imp.create_builtin(importlib.util.find_spec('_posixsubprocess'))\n"
                           "if copy is None:\n    print('no fresh copy')\nelse:\n"
                           "    subprocess._fork_exec = copy.fork_exec\n"
                           f"    subprocess.run(['/bin/sh', '-c', 'touch {target}'])\n", TIGHT)
        assert "Operation not permitted" in fresh.stderr or fresh.stdout == "no fresh copy\n", fresh.stderr
        assert not os.path.exists(target), fresh.stdout + fresh.stderr


def test_leftover_processes_of_a_run_are_killed():
    """A child that left the process group (setsid) still carries the run's environment marker: the sweep
    at the end of a run finds and kills it. The child here is started by the test, outside any sandbox."""
    import subprocess

    from novalign.eval.sandbox import _kill_run, _run_processes

    marker = f"NOVALIGN_SANDBOX_RUN={uuid.uuid4().hex[:16]}"
    name, value = marker.split("=")
    child = subprocess.Popen(["sleep", "30"], env={"PATH": "/usr/bin:/bin", name: value}, start_new_session=True)
    try:
        time.sleep(0.1)
        assert _run_processes(None, marker) == [child.pid]
        _kill_run(None, marker)
        assert child.wait(timeout=5) == -9
    finally:
        if child.poll() is None:
            child.kill()


ALWAYS_EQUAL = '''
class _Yes:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    def __bool__(self): return True
    def __sub__(self, other): return 0
    def __abs__(self): return 0

def add(a, b):
    return _Yes()

class Solution:
    def two_sum(self, nums, target):
        return _Yes()
'''


def test_strict_results_defeat_the_always_equal_hack():
    """The "always equal" reward hack: add() returns an object whose __eq__ is always True (and whose
    difference is 0). Without strict results it passes `assert add(2, 3) == 5`; with them the call raises
    TypeError and the run fails -- as does the same trick in a class-based (LeetCode style) problem.
    Honest solutions returning plain data (ints, nested lists/dicts/tuples, None) pass strict runs, and the
    tests' own helper classes are not touched."""
    tests = "assert add(2, 3) == 5\nassert abs(add(1, 1) - 2) < 1e-9\n"
    assert run_tests(ALWAYS_EQUAL, tests, TIGHT).passed  # the hole, without the guard
    hacked = run_tests(ALWAYS_EQUAL, tests, TIGHT, strict_results=True)
    assert not hacked.passed and "not plain built-in data" in hacked.stderr
    cls = run_tests(ALWAYS_EQUAL, "assert Solution().two_sum([1, 2], 3) == [0, 1]\n", TIGHT, strict_results=True)
    assert not cls.passed and "Solution.two_sum() returned" in cls.stderr
    honest = ("import math\ndef add(a, b):\n    return a + b\n"
              "def table(n):\n    return {'rows': [(i, [i * i, None]) for i in range(n)], 'ok': True}\n"
              "class Solution:\n    def two_sum(self, nums, target):\n        return [0, 1]\n")
    tests_ok = ("class Box:\n    def __init__(self, v): self.v = v\n    def get(self): return self.v\n"
                "assert add(2, 3) == 5 and Box(add(1, 1)).get() == 2\n"
                "assert table(2) == {'rows': [(0, [0, None]), (1, [1, None])], 'ok': True}\n"
                "assert Solution().two_sum([1, 2], 3) == [0, 1] and math.sqrt(4) == 2\n")
    result = run_tests(honest, tests_ok, TIGHT, strict_results=True)
    assert result.passed, result.stderr


def test_the_world_code_checker_is_strict_by_default():
    """The RL code reward (world checkers) scores the hack 0, an honest reply 1; "strict_results": false
    brings the plain behaviour back."""
    from novalign.world.checkers import score

    spec = {"type": "code", "tests": "assert add(2, 3) == 5\n"}
    assert score(f"```python\n{ALWAYS_EQUAL}\n```", spec) == 0.0
    assert score("```python\ndef add(a, b):\n    return a + b\n```", spec) == 1.0
    assert score(f"```python\n{ALWAYS_EQUAL}\n```", spec | {"strict_results": False}) == 1.0
