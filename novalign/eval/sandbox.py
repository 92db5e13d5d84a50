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
   outside the work folder, ``ctypes`` loading, every way to start a process (``os.system``, ``subprocess``,
   ``os.posix_spawn``, ``os.exec*``, ``os.fork``: a child would have no hook), signals to other processes and
   frame introspection. This is the only layer left when not running as root; at the end every process that
   carries the run's environment marker is killed too (a ``setsid`` child leaves the process group).
5. **A completion token**: a pass needs the scripts to run to their end. The parent hands the bootstrap a
   one-time token on stdin, and the bootstrap writes it back on a private pipe only after the last script
   returned, so ``sys.exit(0)`` or ``os._exit(0)`` before the tests fails.

Limits, for the record: layers 4 and 5 are Python-level; native code (refused: ``ctypes``, no compiler, no
child processes) could get past them, which is what layers 1-3 are for when running as root.

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
import secrets
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

# Runs as ``python -I -B -c _BOOTSTRAP <workdir> <done fd> <script>...``. The parent writes a one-time token on
# stdin; the scripts run in order in one fresh ``__main__`` namespace, and only when the last one returns does
# the bootstrap write the token back on <done fd>: an early ``sys.exit(0)``/``os._exit(0)`` cannot pass. The
# token lives only in ``_main``'s frame, and the audit hook refuses every way Python offers to reach a frame
# (``sys._getframe``, traceback/generator frames, tracers, ``gc``) and /proc/<pid>/mem.
_BOOTSTRAP = r"""
import os, socket, sys

def _no_network(*args, **kwargs):
    raise PermissionError("network access is disabled in the sandbox")

class _NoSocket(socket.socket):
    def __init__(self, *args, **kwargs):
        _no_network()

for _name in ("create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo"):
    setattr(socket, _name, _no_network)
socket.socket = socket.SocketType = _NoSocket

def _install_guard(root, realpath=os.path.realpath, fsdecode=os.fsdecode, getpid=os.getpid):
    # bound as defaults: user code that patches os.path.realpath cannot widen the folder check
    class Refused(PermissionError, ValueError):
        # a ValueError too: the stdlib's own frame probes (namedtuple, typing, enum, logging) catch that
        pass

    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    path_events = {"os.remove", "os.rename", "os.mkdir", "os.rmdir", "os.chmod", "os.chown", "os.symlink",
                   "os.link", "os.truncate", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile"}
    # a child process has no audit hook: every way to start one is refused (issue 22)
    process_events = {"os.system", "os.exec", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn",
                      "subprocess.Popen", "pty.spawn", "os.startfile"}
    frame_events = {"sys._getframe", "sys._current_frames", "sys.settrace", "sys.setprofile",
                    "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys.monitoring.register_callback"}
    frame_attrs = {"tb_frame", "gi_frame", "cr_frame", "ag_frame"}

    def inside(path):
        if isinstance(path, int):
            return True
        real = realpath(fsdecode(path))
        return real == root or real.startswith(root + "/")

    def audit(event, args):
        if event.startswith("socket.") or event.startswith("ctypes.") or event in process_events:
            raise Refused(f"{event} is disabled in the sandbox")
        if event in frame_events or (event == "object.__getattr__" and args[1] in frame_attrs):
            raise Refused(f"frame introspection ({event}) is disabled in the sandbox")
        if event == "import" and args[0] == "_posixsubprocess":  # a second copy would bring fork_exec back
            raise Refused("loading _posixsubprocess again is disabled in the sandbox")
        if event in ("os.kill", "os.killpg") and args[0] != getpid():
            raise Refused(f"{event} of another process is disabled in the sandbox")
        if event == "open":
            path, mode, flags = args
            if isinstance(path, (str, bytes)) and not isinstance(path, int):
                real = realpath(fsdecode(path))
                if real.startswith("/proc/") and real.endswith("/mem"):
                    raise Refused(f"reading process memory is disabled in the sandbox: {path!r}")
            writing = (isinstance(mode, str) and any(ch in mode for ch in "wax+")) or (
                isinstance(flags, int) and flags & write_flags)
            if writing and path is not None and not inside(path):
                raise Refused(f"writing outside the sandbox folder is disabled: {path!r}")
        elif event in path_events:
            for arg in args:
                if isinstance(arg, (str, bytes, os.PathLike)) and not inside(arg):
                    raise Refused(f"{event} outside the sandbox folder is disabled: {arg!r}")

    def no_fork_exec(*args, **kwargs):
        raise Refused("starting a process is disabled in the sandbox")

    import _posixsubprocess  # its fork_exec raises no audit event: the loaded copy loses it, a fresh load is refused
    _posixsubprocess.fork_exec = no_fork_exec
    sys.addaudithook(audit)

def _no_process_syscalls():
    # seccomp-bpf (no root needed, after PR_SET_NO_NEW_PRIVS): fork, vfork, execve, execveat and clone without
    # CLONE_THREAD fail with EPERM; clone3 gets ENOSYS so that glibc makes threads with clone. x86_64 only
    # (syscall numbers of arch/x86/entry/syscalls/syscall_64.tbl); the kernel form of the process refusal.
    import ctypes, struct
    if os.uname().machine != "x86_64":
        return False
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    op = lambda code, k, jt=0, jf=0: struct.pack("HBBI", code, jt, jf, k)
    prog = [op(ld, 4), op(jeq, 0xC000003E, 1, 0), op(ret, eperm),  # arch must be AUDIT_ARCH_X86_64
            op(ld, 0), op(jge, 0x40000000, 0, 1), op(ret, eperm)]  # no x32 syscalls
    for nr, answer in ((57, eperm), (58, eperm), (59, eperm), (322, eperm), (435, enosys)):
        prog += [op(jeq, nr, 0, 1), op(ret, answer)]
    prog += [op(jeq, 56, 1, 0), op(ret, allow), op(ld, 16), op(jset, 0x10000, 0, 1), op(ret, allow), op(ret, eperm)]
    code = ctypes.create_string_buffer(b"".join(prog))

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        return False
    return libc.prctl(22, 2, ctypes.byref(Prog(len(prog), ctypes.addressof(code))), 0, 0) == 0  # SECCOMP_MODE_FILTER

def _plain_results(namespace, modules, type=type, dict=dict, dict_items=dict.items, getattr=getattr,
                   setattr=setattr, isinstance=isinstance, str=str, function=type(lambda: 0)):
    # strict results: the tests see the solution's functions (and its classes' methods) through wrappers that
    # refuse any return value that is not plain built-in data, so an object with a rigged __eq__ / __bool__ /
    # __sub__ ("always equal") cannot pass `assert f(x) == y`. Everything is bound here, before any test runs;
    # the tests get their own copy of the namespace, which the solution's code (holding only its own globals)
    # cannot reach: frames are refused by the audit hook.
    scalars = {type(None), bool, int, float, complex, str, bytes, range}
    containers = {list, tuple, set, frozenset}

    def plain(x, depth):
        t = type(x)
        if t in scalars:
            return True
        if depth > 64:
            return False
        if t in containers:  # exact built-in types: iterating them runs no user code
            for item in x:
                if not plain(item, depth + 1):
                    return False
            return True
        if t is dict:
            for k, v in dict_items(x):
                if not (plain(k, depth + 1) and plain(v, depth + 1)):
                    return False
            return True
        return False

    def wrap(fn, name):
        def guarded(*args, **kwargs):
            result = fn(*args, **kwargs)
            if not plain(result, 0):
                raise TypeError(f"{name} returned an object that is not plain built-in data (the sandbox's strict "
                                "results: a solution must return values such as int, str, list, dict)")
            return result
        return guarded

    def imported(cls):  # a class some loaded module holds under its own name (not the solution's)
        mod = modules.get(getattr(cls, "__module__", None) if type(getattr(cls, "__module__", None)) is str else None)
        return mod is not None and mod is not modules.get("__main__") and getattr(
            mod, getattr(cls, "__name__", ""), None) is cls

    tests_ns = dict(namespace)
    for name, obj in dict_items(namespace):
        if type(obj) is function:
            tests_ns[name] = wrap(obj, f"{name}()")
        elif isinstance(obj, type) and not imported(obj):
            for attr, member in dict_items(dict(obj.__dict__)):
                if type(member) is function and not (attr.startswith("__") and attr.endswith("__")):
                    setattr(obj, attr, wrap(member, f"{name}.{attr}()"))
    return tests_ns

def _main(write=os.write, close=os.close, run=exec):  # bound: user code may patch builtins.exec
    root, done_fd, strict = os.path.realpath(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "strict"
    scripts = sys.argv[4:]
    token = os.read(0, 64)
    os.close(0)
    os.open(os.devnull, os.O_RDONLY)  # takes fd 0 again
    codes = []
    for script in scripts:  # all compiled before any runs: a solution cannot rewrite its tests
        with open(script, "rb") as f:
            codes.append(compile(f.read(), script, "exec"))
    if _no_process_syscalls():
        write(done_fd, b"seccomp\n")
    _install_guard(root)
    sys.argv = [scripts[0]]
    sys.path.insert(0, root)
    namespace = {"__name__": "__main__", "__file__": scripts[0], "__builtins__": __builtins__}
    modules = sys.modules
    for i, code in enumerate(codes):
        if i == 1 and strict:  # the solution has run: its functions reach the tests only through the guard
            namespace = _plain_results(namespace, modules)
        run(code, namespace)
    write(done_fd, token)
    close(done_fd)

_main()
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
    """Outcome of one run: ``passed`` means the scripts ran to their end (``completed``), exit code 0, in time."""

    passed: bool
    timed_out: bool
    exit_code: int | None
    stdout: str
    stderr: str
    reason: str  # "passed", "timeout", "killed by SIGKILL", "exit code 1", ...
    truncated: bool = False
    isolation: tuple[str, ...] = field(default_factory=tuple)  # layers in force: rlimits, uid, netns, ...
    completed: bool = False  # the bootstrap saw the last script return (not an early exit)


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


def _run_processes(uid: int | None, marker: str) -> list[int]:
    """Pids of this run's processes: owned by the per-run ``uid`` (root), or, without one, of our own uid and
    carrying the run's ``marker`` in their environment (a ``setsid`` child leaves the group, not the env)."""
    own_uid, found = os.getuid(), []
    needle = marker.encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as status:
                owner = int(next(line for line in status if line.startswith("Uid:")).split()[1])
            if uid is not None:
                if owner == uid:
                    found.append(int(pid))
            elif owner == own_uid:
                with open(f"/proc/{pid}/environ", "rb") as env:
                    if needle in env.read().split(b"\0"):
                        found.append(int(pid))
        except (OSError, StopIteration, ValueError):
            continue
    return found


def _kill_run(uid: int | None, marker: str) -> None:
    """SIGKILL every process of this run (see :func:`_run_processes`)."""
    for _ in range(3):  # a fork bomb may still be forking while we sweep
        pids = _run_processes(uid, marker)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                continue
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


def _reason(timed_out: bool, exit_code: int, completed: bool) -> str:
    if timed_out:
        return "timeout"
    if exit_code < 0:
        return f"killed by {signal.Signals(-exit_code).name}"
    if exit_code != 0:
        return f"exit code {exit_code}"
    return "passed" if completed else "exited before the end"


def _write_files(workdir: str, files: dict[str, str], uid: int | None) -> None:
    for name, text in files.items():
        with open(os.path.join(workdir, name), "w") as f:
            f.write(text)
    if uid is not None:
        for entry in [workdir] + [os.path.join(workdir, n) for n in os.listdir(workdir)]:
            os.chown(entry, uid, uid)
        os.chmod(workdir, 0o700)


def run_python(code: str, limits: SandboxLimits | None = None, files: dict[str, str] | None = None, *,
               tests: str | None = None, strict_results: bool = False) -> SandboxResult:
    """Run ``code`` as ``main.py`` in a fresh temporary folder under the sandbox; the folder is deleted after.

    Args:
        code: Python source, trusted by nobody.
        limits: Resource limits; :class:`SandboxLimits` defaults if ``None``.
        files: Extra files to place in the folder, name -> text.
        tests: Source run after ``code`` in the same namespace (as ``tests.py``, compiled before ``code`` runs,
            so ``code`` can neither rewrite nor comment it out); the run passes only if it returns.
        strict_results: The tests call ``code``'s functions (and its classes' non-dunder methods) through
            guards that raise ``TypeError`` on a return value that is not plain built-in data (None, bool,
            int, float, complex, str, bytes, range, and lists, tuples, sets, dicts of those), so a result with
            a rigged ``__eq__`` -- the "always equal" reward hack -- fails ``assert f(x) == y``. Not a proof
            against a solution that rewires the standard library or metaclasses; the host is protected either
            way (layers 1-5).

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
    token = secrets.token_hex(16).encode()
    marker = f"NOVALIGN_SANDBOX_RUN={secrets.token_hex(8)}"
    workdir = os.path.realpath(tempfile.mkdtemp(prefix="novalign_sandbox_"))
    isolation = ["rlimits", "audit-hook"] + (["uid"] if uid is not None else []) + (
        ["netns", "mountns"] if use_namespaces else [])
    done_read, done_write = os.pipe()
    try:
        scripts = {**(files or {}), "main.py": code, **({"tests.py": tests} if tests is not None else {})}
        _write_files(workdir, scripts, uid)

        def preexec() -> None:
            if use_namespaces:
                _enter_namespaces(workdir)
            _set_limits(limits)
            if uid is not None:
                _drop_to(uid)

        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir,
               marker.split("=")[0]: marker.split("=")[1]}
        argv = [python, "-I", "-B", "-c", _BOOTSTRAP, workdir, str(done_write), "strict" if strict_results else "free",
                "main.py"] + (["tests.py"] if tests is not None else [])
        # preexec_fn is the only hook between fork and exec for setrlimit/unshare/setuid. It calls only
        # functions that are loaded already (os, resource, the cached libc), so it takes no import lock.
        proc = subprocess.Popen(
            argv, cwd=workdir, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            preexec_fn=preexec, start_new_session=True, close_fds=True, pass_fds=(done_write,),  # noqa: PLW1509
        )
        os.close(done_write)
        done_write = -1
        try:
            proc.stdin.write(token)  # 32 bytes: fits any pipe buffer, never blocks
            proc.stdin.close()
        except OSError:  # the child died at once
            pass
        out: list[bytes] = []
        err: list[bytes] = []
        done: list[bytes] = []
        truncated = [False]
        sinks = ((proc.stdout, limits.max_output_bytes, out, truncated),
                 (proc.stderr, limits.max_output_bytes, err, truncated),
                 (os.fdopen(done_read, "rb"), 64, done, [False]))
        done_read = -1
        readers = [threading.Thread(target=_drain, args=sink, daemon=True) for sink in sinks]
        for reader in readers:
            reader.start()
        timed_out = False
        try:
            proc.wait(timeout=limits.wall_seconds)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            # The group and the run's processes all go, also after a normal exit: no orphan outlives the run.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:  # the group is gone already
                pass
            _kill_run(uid, marker)
            proc.wait()
        for reader in readers:
            reader.join(timeout=5)
        exit_code = proc.returncode
        done_bytes = b"".join(done)
        if done_bytes.startswith(b"seccomp\n"):  # written by the bootstrap before any user code
            isolation.append("seccomp")
            done_bytes = done_bytes[len(b"seccomp\n"):]
        completed = done_bytes == token
        return SandboxResult(
            passed=exit_code == 0 and not timed_out and completed,
            timed_out=timed_out,
            exit_code=exit_code,
            stdout=b"".join(out).decode("utf-8", "replace"),
            stderr=b"".join(err).decode("utf-8", "replace"),
            reason=_reason(timed_out, exit_code, completed),
            truncated=truncated[0],
            isolation=tuple(isolation),
            completed=completed,
        )
    finally:
        for fd in (done_read, done_write):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(workdir, ignore_errors=True)


def run_tests(solution: str, tests: str, limits: SandboxLimits | None = None, *,
              strict_results: bool = False) -> SandboxResult:
    """Run a solution, then its tests (HumanEval style: assertions that raise on failure) in its namespace.

    A pass needs the tests to run to their end: a solution that exits early (``sys.exit(0)``, ``os._exit(0)``)
    or leaves the tests unparsed fails. ``strict_results``: see :func:`run_python`.
    """
    return run_python(solution, limits, tests=tests, strict_results=strict_results)


def pass_at_k_for_problem(samples: Sequence[str], tests: str, k: int, limits: SandboxLimits | None = None) -> float:
    """Unbiased pass@k of one problem: run every sample's tests in the sandbox, count the passes c, and
    return :func:`novalign.eval.metrics.pass_at_k` (n = len(samples), c, k)."""
    num_correct = sum(run_tests(s, tests, limits).passed for s in samples)
    return pass_at_k(len(samples), num_correct, k)
