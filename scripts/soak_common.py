"""What the bounded load and durability scripts share: the real server, its memory, the client.

Each script starts the installed ``fastsmtp`` command in a process of its own, so that the
memory and the crashes measured belong to that server alone, and talks to it with the SMTP
client of ``benchmarks/load/client.py`` (imported from there, not copied). Every server
listens on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import IO

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
LOAD_DIR = ROOT / "benchmarks" / "load"


def load_client() -> ModuleType:
    """Import ``benchmarks/load/client.py``: read_reply, expect, open_session, send_message."""
    if str(LOAD_DIR) not in sys.path:
        sys.path.insert(0, str(LOAD_DIR))
    import client

    return client


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft limit of open files towards ``wanted``; return the new one.

    The soft limit can go up to the hard limit without privileges; the hard one is kept.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _soft_limit_to_hard() -> None:
    """Run in the server's child process before exec: as many files as the hard limit allows."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def fastsmtp_command() -> list[str]:
    """The installed ``fastsmtp`` command beside this interpreter, else ``python -m fastsmtp``."""
    script = Path(sys.executable).with_name("fastsmtp")
    if script.exists():
        return [str(script)]
    found = shutil.which("fastsmtp")
    return [found] if found else [sys.executable, "-m", "fastsmtp"]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for_greeting(port: int, process: subprocess.Popen[bytes], seconds: float) -> float:
    """Connect until the server greets with 220; return the seconds it took.

    Raises:
        RuntimeError: the process exited, or no greeting came within ``seconds``.
    """
    start = time.monotonic()
    deadline = start + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"fastsmtp exited with status {process.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=1.0) as connection:
                if connection.recv(512).startswith(b"220"):
                    connection.sendall(b"QUIT\r\n")
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"no 220 greeting on port {port} within {seconds}s")


def start_fastsmtp(
    port: int,
    options: Sequence[str],
    log: IO[bytes] | int = subprocess.DEVNULL,
    many_files: bool = False,
    ready_seconds: float = 30.0,
    prefix: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """Start the real ``fastsmtp`` command on 127.0.0.1:``port`` and wait for its greeting.

    ``options`` are further command-line options (``--maildir DIR``, limits); standard error
    goes to ``log``. With ``many_files`` the child may open as many files as the hard limit.
    ``prefix`` runs the command under another one (``strace -f ...``).
    """
    command = [*prefix, *fastsmtp_command(), "--host", HOST, "--port", str(port), *options]
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log,
        # Only setrlimit runs before exec, and this process has no other thread then.
        preexec_fn=_soft_limit_to_hard if many_files else None,  # noqa: PLW1509
        # A group of its own, so that stop() reaches a server run under a prefix (strace
        # leaves its tracee running when it is itself told to stop).
        start_new_session=True,
    )
    try:
        wait_for_greeting(port, process, ready_seconds)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process


def stop(process: subprocess.Popen[bytes], seconds: float = 10.0) -> None:
    """SIGTERM the server's process group, wait, and SIGKILL the group after ``seconds``."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def rss_kib(pid: int) -> int:
    """Resident memory of process ``pid`` in KiB, from /proc/PID/status (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def open_files(pid: int) -> int:
    """How many file descriptors process ``pid`` holds (Linux)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def machine() -> str:
    """One line naming the machine: cores, CPU model, Python and the fastsmtp in use."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    import fastsmtp

    return (
        f"nproc={os.cpu_count()} cpu={model!r} python={platform.python_version()} "
        f"fastsmtp={fastsmtp.__version__} hot-path={fastsmtp.IMPLEMENTATION}"
    )


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """The value at ``fraction`` (0..1) of an ascending list; nearest rank, no interpolation."""
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def summary_ms(values: Sequence[float]) -> str:
    """``n=.. median=.. p99=.. max=..`` of seconds, printed in milliseconds."""
    ordered = sorted(values)
    if not ordered:
        return "n=0"
    return (
        f"n={len(ordered)} median={percentile(ordered, 0.5) * 1000:.2f}ms "
        f"p99={percentile(ordered, 0.99) * 1000:.2f}ms max={ordered[-1] * 1000:.2f}ms"
    )
