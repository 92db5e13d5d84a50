"""Run untrusted Python code (a model's solution plus its tests) so that it cannot harm the host.

Layers, from the kernel outwards; each one alone stops the attacks the tests throw at it:

1. **Resource limits** (``resource.setrlimit`` in the child before ``exec``): CPU seconds, address space,
   processes, size of written files, open files. A wall-clock timeout kills the child's process group and,
   when the sandbox runs under its own uid, every process of that uid (a child that called ``setsid``).
2. **An unprivileged, per-run uid** (when started as root): a fresh uid with no files anywhere, so the
   process limit counts only this run's processes and nothing outside the work folder is writable, except
   the world-writable folders, which layer 3 hides.
3. **Namespaces** (root only, via ``unshare(2)``): a new network namespace (only a downed loopback: no
   network at all) and a new mount namespace where ``/tmp``, ``/var/tmp``, ``/dev/shm`` and ``/run/lock``
   are replaced by small private tmpfs mounts that vanish with the sandbox; the work folder is bound back
   at its own path. Python 3.11 has no ``os.unshare``, so libc is called through ctypes.
4. **A Python bootstrap** that runs before the user code: ``socket.socket``, ``socket.create_connection``
   and friends raise, and an audit hook (PEP 578, not removable from Python) refuses socket events, writes
   outside the work folder and ``ctypes`` loading. This is the only layer left when not running as root.

The parent keeps at most ``max_output_bytes`` of each of stdout and stderr and drains the rest. The user
code gets the standard library only: under a dropped uid the interpreter must be one the uid can read, so a
virtual environment under ``/root`` gives way to the system ``python3``. :attr:`SandboxResult.isolation`
names the layers that were in force for a run.
"""

from __future__ import annotations

import ctypes
import functools
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from novalign.eval.metrics import pass_at_k

__all__ = ["SandboxLimits", "SandboxResult", "pass_at_k_for_problem", "run_python", "run_tests"]

_CLONE_NEWNS = 0x00020000
_CLONE_NEWNET = 0x40000000
_MS_NOSUID, _MS_NODEV, _MS_BIND, _MS_REC, _MS_PRIVATE = 2, 4, 4096, 16384, 1 << 18
_HIDDEN_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")  # world-writable: hidden behind private tmpfs

# Runs as ``python -I -B -c _BOOTSTRAP <workdir> <script>``; its names start with ``_`` and are deleted
# before the user script runs in a fresh ``__main__`` namespace.
_BOOTSTRAP = r"""
import os, socket, sys
_root = os.path.realpath(sys.argv[1])
_script = sys.argv[2]

def _no_network(*args, **kwargs):
    raise PermissionError("network access is disabled in the sandbox")

class _NoSocket(socket.socket):
    def __init__(self, *args, **kwargs):
        _no_network()

for _name in ("create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo"):
    setattr(socket, _name, _no_network)
socket.socket = socket.SocketType = _NoSocket

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_PATH_EVENTS = {"os.remove", "os.rename", "os.mkdir", "os.rmdir", "os.chmod", "os.chown", "os.symlink",
                "os.link", "os.truncate", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile"}

def _inside(path):
    if isinstance(path, int):
        return True
    real = os.path.realpath(os.fsdecode(path))
    return real == _root or real.startswith(_root + os.sep)

def _audit(event, args):
    if event.startswith("socket.") or event.startswith("ctypes."):
        raise PermissionError(f"{event} is disabled in the sandbox")
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(ch in mode for ch in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS)
        if writing and path is not None and not _inside(path):
            raise PermissionError(f"writing outside the sandbox folder is disabled: {path!r}")
    elif event in _PATH_EVENTS:
        for arg in args:
            if isinstance(arg, (str, bytes, os.PathLike)) and not _inside(arg):
                raise PermissionError(f"{event} outside the sandbox folder is disabled: {arg!r}")

sys.addaudithook(_audit)
sys.argv = [_script]
sys.path.insert(0, _root)
with open(_script, "rb") as _f:
    _code = compile(_f.read(), _script, "exec")
exec(_code, {"__name__": "__main__", "__file__": _script, "__builtins__": __builtins__})
"""


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed run. Memory is address space, so it must leave room for the interpreter."""

    wall_seconds: float = 10.0
    cpu_seconds: int = 5
    memory_bytes: int = 512 * 2**20
    max_processes: int = 16  # the whole per-run uid; tiny, so a fork bomb stops at once
    max_file_bytes: int = 16 * 2**20
    max_open_files: int = 64
    max_output_bytes: int = 64 * 2**10  # kept per stream; the rest is read and dropped


@dataclass
class SandboxResult:
    """Outcome of one run: ``passed`` means exit code 0 within the limits."""

    passed: bool
    timed_out: bool
    exit_code: int | None
    stdout: str
    stderr: str
    reason: str  # "passed", "timeout", "killed by SIGKILL", "exit code 1", ...
    truncated: bool = False
    isolation: tuple[str, ...] = field(default_factory=tuple)  # layers in force: rlimits, uid, netns, ...


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    return libc


def _check(ret: int, what: str) -> None:
    if ret != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _enter_namespaces(workdir: str) -> None:
    """In the child, as root: private network and mount namespaces, world-writable folders hidden."""
    libc = _libc()
    _check(libc.unshare(_CLONE_NEWNS | _CLONE_NEWNET), "unshare")
    _check(libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "make / private")
    os.chdir(workdir)  # keeps the real work folder reachable as "." once /tmp is covered
    for hidden in _HIDDEN_DIRS:
        if os.path.isdir(hidden):
            flags = _MS_NOSUID | _MS_NODEV
            _check(libc.mount(b"tmpfs", hidden.encode(), b"tmpfs", flags, b"size=1m,mode=755"), f"tmpfs {hidden}")
    if not os.path.isdir(workdir):  # it lived under a hidden folder: bind it back at its own path
        os.makedirs(workdir)
        _check(libc.mount(b".", workdir.encode(), None, _MS_BIND, None), "bind work folder")
    os.chdir(workdir)


def _set_limits(limits: SandboxLimits) -> None:
    for which, value in (
        (resource.RLIMIT_CPU, limits.cpu_seconds),
        (resource.RLIMIT_AS, limits.memory_bytes),
        (resource.RLIMIT_NPROC, limits.max_processes),
        (resource.RLIMIT_FSIZE, limits.max_file_bytes),
        (resource.RLIMIT_NOFILE, limits.max_open_files),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(which, (value, value))


@functools.lru_cache(maxsize=1)
def _namespaces_work() -> bool:
    """Whether this host lets us unshare and mount (root, not blocked by a container); probed once."""
    if os.geteuid() != 0:
        return False
    probe = tempfile.mkdtemp(prefix="novalign_sandbox_probe_")
    try:
        _libc()
        # probe with a system binary: an interpreter that lives under /tmp (a venv in a CI clone) would be
        # hidden by the private tmpfs and make the probe fail for the wrong reason
        done = subprocess.run(
            [shutil.which("true", path="/usr/bin:/bin") or "/bin/true"],
            preexec_fn=lambda: _enter_namespaces(probe),
            capture_output=True,
            check=False,
            timeout=30,
        )
        return done.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def _drop_to(uid: int) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


@functools.lru_cache(maxsize=4)
def _interpreter(as_uid: bool) -> str | None:
    """A Python the sandbox uid can run: ours if readable by others (not under /root), else a system one.

    The sandbox runs the user code with the standard library only. ``None`` when no interpreter works
    after dropping privileges.
    """
    if not as_uid:
        return sys.executable
    # the system Python first (user code gets the standard library only anyway); ours only if it does not
    # live under a folder the mount namespace hides
    system = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    for candidate in dict.fromkeys([system, sys.executable]):
        if not candidate:
            continue
        real = os.path.realpath(candidate)
        if any(real == d or real.startswith(d + "/") for d in _HIDDEN_DIRS):
            continue
        try:
            done = subprocess.run([candidate, "-I", "-c", "import sys; sys.addaudithook"], capture_output=True,
                                  check=False, timeout=30, cwd="/", preexec_fn=lambda: _drop_to(random.randrange(200_000, 2**31)))
        except (OSError, subprocess.SubprocessError):
            continue
        if done.returncode == 0:
            return candidate
    return None


def _kill_uid(uid: int) -> None:
    """SIGKILL every process owned by ``uid`` (a per-run uid: nothing else runs as it)."""
    for _ in range(3):  # a fork bomb may still be forking while we sweep
        found = False
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/status") as status:
                    uids = next(line for line in status if line.startswith("Uid:")).split()
                if int(uids[1]) == uid:
                    os.kill(int(pid), signal.SIGKILL)
                    found = True
            except (OSError, StopIteration, ValueError):
                continue
        if not found:
            return
        time.sleep(0.05)


def _drain(stream, cap: int, sink: list[bytes], truncated: list[bool]) -> None:
    kept = 0
    while chunk := stream.read1(65536):
        room = cap - kept
        if len(chunk) > room:
            truncated[0] = True
        if room > 0:
            sink.append(chunk[:room])
            kept += min(room, len(chunk))
    stream.close()


def run_python(code: str, limits: SandboxLimits | None = None, files: dict[str, str] | None = None) -> SandboxResult:
    """Run ``code`` as ``main.py`` in a fresh temporary folder under the sandbox; the folder is deleted after.

    Args:
        code: Python source, trusted by nobody.
        limits: Resource limits; :class:`SandboxLimits` defaults if ``None``.
        files: Extra files to place in the folder, name -> text.

    Raises:
        RuntimeError: running as root but no interpreter works under an unprivileged uid.
    """
    limits = limits or SandboxLimits()
    as_root = os.geteuid() == 0
    use_namespaces = _namespaces_work()
    python = _interpreter(as_root)
    if python is None:  # root ignores RLIMIT_NPROC and may write anywhere: never run untrusted code as root
        raise RuntimeError("no Python interpreter is usable by an unprivileged uid; refusing to run as root")
    uid = random.randrange(200_000, 2**31) if as_root else None
    workdir = os.path.realpath(tempfile.mkdtemp(prefix="novalign_sandbox_"))
    isolation = ["rlimits", "audit-hook"] + (["uid"] if uid is not None else []) + (
        ["netns", "mountns"] if use_namespaces else [])
    try:
        for name, text in {**(files or {}), "main.py": code}.items():
            with open(os.path.join(workdir, name), "w") as f:
                f.write(text)
        if uid is not None:
            for entry in [workdir] + [os.path.join(workdir, n) for n in os.listdir(workdir)]:
                os.chown(entry, uid, uid)
            os.chmod(workdir, 0o700)

        def preexec() -> None:
            if use_namespaces:
                _enter_namespaces(workdir)
            _set_limits(limits)
            if uid is not None:
                _drop_to(uid)

        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir}
        argv = [python, "-I", "-B", "-c", _BOOTSTRAP, workdir, "main.py"]
        # preexec_fn is the only hook between fork and exec for setrlimit/unshare/setuid. It calls only
        # functions that are loaded already (os, resource, the cached libc), so it takes no import lock.
        proc = subprocess.Popen(
            argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            preexec_fn=preexec, start_new_session=True, close_fds=True,  # noqa: PLW1509
        )
        out: list[bytes] = []
        err: list[bytes] = []
        truncated = [False]
        readers = [threading.Thread(target=_drain, args=(s, limits.max_output_bytes, sink, truncated), daemon=True)
                   for s, sink in ((proc.stdout, out), (proc.stderr, err))]
        for reader in readers:
            reader.start()
        timed_out = False
        try:
            proc.wait(timeout=limits.wall_seconds)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            # The group and the uid both go, also after a normal exit: no orphan outlives the run.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:  # the group is gone already
                pass
            if uid is not None:
                _kill_uid(uid)
            proc.wait()
        for reader in readers:
            reader.join(timeout=5)
        exit_code = proc.returncode
        if timed_out:
            reason = "timeout"
        elif exit_code == 0:
            reason = "passed"
        elif exit_code < 0:
            reason = f"killed by {signal.Signals(-exit_code).name}"
        else:
            reason = f"exit code {exit_code}"
        return SandboxResult(
            passed=exit_code == 0 and not timed_out,
            timed_out=timed_out,
            exit_code=exit_code,
            stdout=b"".join(out).decode("utf-8", "replace"),
            stderr=b"".join(err).decode("utf-8", "replace"),
            reason=reason,
            truncated=truncated[0],
            isolation=tuple(isolation),
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_tests(solution: str, tests: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run a solution followed by its tests (HumanEval style: assertions that raise on failure) in one file."""
    return run_python(f"{solution}\n\n{tests}\n", limits)


def pass_at_k_for_problem(samples: Sequence[str], tests: str, k: int, limits: SandboxLimits | None = None) -> float:
    """Unbiased pass@k of one problem: run every sample's tests in the sandbox, count the passes c, and
    return :func:`novalign.eval.metrics.pass_at_k` (n = len(samples), c, k)."""
    num_correct = sum(run_tests(s, tests, limits).passed for s in samples)
    return pass_at_k(len(samples), num_correct, k)
