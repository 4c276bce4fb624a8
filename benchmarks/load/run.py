"""End-to-end load runs: fastsmtp (compiled and pure twin) against aiosmtpd, on both loops.

Every measured run starts a fresh server process (serve.py) on 127.0.0.1, drives it with
Postfix's smtp-source when installed (else with client.py, which speaks the same dialogue and
checks every reply), and measures that process alone: CPU time as the change of its
``getrusage`` user+system time across the run (cross-checked with /proc/PID/stat), its user
part alone (the interpreter, the loop and the server's code; the system part is mostly the
socket calls), and peak RSS as VmHWM from /proc/PID/status. The listener of every server
counts what it received, and the count is checked against what the client sent. Runs are
interleaved (every server once, then every server again) and each figure printed is the median
over the repetitions.

The machine may have few cores: the load generator competes with the server for them, which
is why server CPU per message, not messages per second, is the figure to compare. A bare
asyncio Protocol that only splits lines and answers runs beside them on each loop: the floor
that any Python receiver on this machine and loop stands on.

    python benchmarks/load/run.py --quick           # under a minute: every workload once
    python benchmarks/load/run.py                   # the full run, five repetitions
    python benchmarks/load/run.py --profile py-spy  # where fastsmtp's time goes (workload 1)
    python benchmarks/load/run.py --quick --only w1 --servers fastsmtp/uvloop/c,bare/uvloop
    python benchmarks/load/run.py --instructions 1000 --only w1  # stable counts (callgrind)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import pstats
import resource
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
SMTP_SOURCE = "/usr/sbin/smtp-source"
KIB = 1024
MIB = 1024 * KIB
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass(frozen=True)
class Variant:
    server: str  # "fastsmtp", "aiosmtpd" or "bare" (the reference floor)
    loop: str  # "asyncio" or "uvloop"
    twin: str  # fastsmtp's hot path, "c" or "py"; "-" for the others

    @property
    def name(self) -> str:
        return f"{self.server}/{self.loop}/{self.twin}"


VARIANTS = [
    Variant("fastsmtp", "asyncio", "c"),
    Variant("fastsmtp", "asyncio", "py"),
    Variant("aiosmtpd", "asyncio", "-"),
    Variant("fastsmtp", "uvloop", "c"),
    Variant("fastsmtp", "uvloop", "py"),
    Variant("aiosmtpd", "uvloop", "-"),
    # The floor of each loop on this machine: a Protocol that splits lines and says 250.
    Variant("bare", "asyncio", "-"),
    Variant("bare", "uvloop", "-"),
]


@dataclasses.dataclass(frozen=True)
class Workload:
    key: str
    title: str
    size: int  # body octets per message
    sessions: int
    messages: int  # in all, per run: the count bound
    reuse: bool  # many messages per connection
    seconds: float  # the time bound of one run
    probe: bool = False  # workload 4: time a small-message client's replies meanwhile


def workloads(quick: bool) -> list[Workload]:
    scale = 1 if quick else 5
    return [
        Workload(
            "w1", "1 KiB messages, 100 sessions, connection reused",
            KIB, 100, 4000 * scale, True, 120.0,
        ),
        Workload(
            "w2", "1 KiB messages, one connection per message, 100 concurrent",
            KIB, 100, 2000 * scale, False, 120.0,
        ),
        Workload(
            "w3", "10 MiB messages, 4 sessions, connection reused",
            10 * MIB, 4, 8 if quick else 48, True, 180.0,
        ),
        Workload(
            "w4", "4 clients sending 25 MiB messages; a small-message client times its replies",
            25 * MIB, 4, 8 if quick else 24, True, 180.0, probe=True,
        ),
    ]  # fmt: skip


# Reading a child's output lines with a time bound


class LineReader:
    """Lines from a child's unbuffered stdout, each awaited at most ``timeout`` seconds."""

    def __init__(self, stream: object) -> None:
        self._fd = stream.fileno()  # type: ignore[attr-defined]
        self._buffer = b""

    def readline(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._fd], [], [], left)[0]:
                raise TimeoutError(f"no line from the child within {timeout} s")
            chunk = os.read(self._fd, 65536)
            if not chunk:
                raise EOFError("the child closed its output")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()


# The server process


class ServerProcess:
    """One serve.py process: started, asked for its counters, measured from /proc, stopped."""

    def __init__(
        self,
        variant: Variant,
        cprofile: str | None = None,
        lag_monitor: bool = False,
        wrapper: tuple[str, ...] = (),
    ) -> None:
        command = [
            *wrapper, sys.executable, str(HERE / "serve.py"),
            "--server", variant.server, "--loop", variant.loop,
        ]  # fmt: skip
        if variant.server == "fastsmtp":
            command += ["--twin", variant.twin]
        if cprofile:
            command += ["--cprofile", cprofile]
        if lag_monitor:
            command.append("--lag-monitor")
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
        )
        self.pid = self.process.pid
        self._lines = LineReader(self.process.stdout)
        # Under a wrapper such as valgrind everything runs tens of times slower.
        self._patience = 20.0 if wrapper else 1.0
        ready = self._lines.readline(30.0 * self._patience)
        if not ready.startswith("READY "):
            raise RuntimeError(f"{variant.name} did not start: {ready!r}")
        self.port = int(ready.split()[1])

    def stats(self) -> dict[str, float]:
        assert self.process.stdin is not None
        self.process.stdin.write(b"stats\n")
        stats: dict[str, float] = json.loads(self._lines.readline(10.0 * self._patience))
        stats["cpu"] = stats["utime"] + stats["stime"]
        stats["proc_cpu"] = self.proc_cpu()
        return stats

    def proc_cpu(self) -> float:
        """utime + stime of the process from /proc/PID/stat, in seconds."""
        text = Path(f"/proc/{self.pid}/stat").read_text()
        fields = text[text.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def status_kib(self, field: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)

    def stop(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            try:
                self.process.stdin.write(b"quit\n")
                self.process.stdin.close()
            except BrokenPipeError:
                pass
            try:
                self.process.wait(15.0 * self._patience)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# The load generators


def smtp_source_command(workload: Workload, port: int, messages: int) -> list[str]:
    command = [
        SMTP_SOURCE, "-s", str(workload.sessions), "-m", str(messages),
        "-l", str(workload.size), "-M", "client.example",
        "-f", "load@client.example", "-t", "sink@server.example",
    ]  # fmt: skip
    if workload.reuse:
        command.append("-d")
    return [*command, f"{HOST}:{port}"]


def client_command(workload: Workload, port: int, messages: int) -> list[str]:
    command = [
        sys.executable, str(HERE / "client.py"), "--port", str(port),
        "--sessions", str(workload.sessions), "--messages", str(messages),
        "--size", str(workload.size), "--seconds", str(workload.seconds),
    ]  # fmt: skip
    if workload.reuse:
        command.append("--reuse")
    return command


def drive(workload: Workload, port: int, use_smtp_source: bool) -> dict[str, object]:
    """Run the load generator to its end; return what it sent and how long it took."""
    messages = workload.messages
    if use_smtp_source:
        command = smtp_source_command(workload, port, messages)
    else:
        command = client_command(workload, port, messages)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command, check=False, capture_output=True, text=True, timeout=workload.seconds + 30
        )
    except subprocess.TimeoutExpired:
        return {"sent": 0, "elapsed": time.perf_counter() - start, "errors": ["timed out"]}
    elapsed = time.perf_counter() - start
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (children_after.ru_utime - children_before.ru_utime) + (
        children_after.ru_stime - children_before.ru_stime
    )
    if use_smtp_source:
        # smtp-source stops at the first unexpected reply, with a non-zero exit.
        ok = done.returncode == 0
        errors = [] if ok else [done.stderr.strip()[-300:] or f"exit {done.returncode}"]
        return {
            "sent": messages if ok else 0,
            "elapsed": elapsed,
            "client_cpu": client_cpu,
            "errors": errors,
        }
    result = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {}
    errors = result.get("errors") or ([] if done.returncode == 0 else [done.stderr[-300:]])
    return {
        "sent": result.get("sent", 0),
        "octets": result.get("octets"),
        # The client's own clock leaves its start-up out.
        "elapsed": result.get("elapsed", elapsed),
        "client_cpu": client_cpu,
        "errors": errors,
    }


def drive_with_probe(workload: Workload, port: int, use_smtp_source: bool) -> dict[str, object]:
    """Workload 4: large senders, and meanwhile a small-message client timing its replies."""
    command = [
        sys.executable, str(HERE / "client.py"), "--port", str(port), "--probe",
        "--size", str(KIB), "--messages", "100000", "--seconds", str(workload.seconds + 10),
    ]  # fmt: skip
    probe = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0
    )
    lines = LineReader(probe.stdout)
    try:
        started = lines.readline(30.0)
        if started != "PROBING":
            raise RuntimeError(f"the probe did not start: {started!r}")
        big = drive(workload, port, use_smtp_source)
        assert probe.stdin is not None
        probe.stdin.close()
        result = json.loads(lines.readline(30.0))
    finally:
        if probe.poll() is None:
            try:
                probe.wait(30.0)
            except subprocess.TimeoutExpired:
                probe.kill()
        probe.wait()
    big["probe"] = result
    big["probe_sent"] = result.get("sent", 0)
    octets = big.get("octets")
    if isinstance(octets, int):
        big["octets"] = octets + int(result.get("octets", 0))
    big["errors"] = [*big["errors"], *result.get("errors", [])]  # type: ignore[misc]
    return big


# One measured run


def measure(variant: Variant, workload: Workload, use_smtp_source: bool) -> dict[str, object]:
    server = ServerProcess(variant, lag_monitor=workload.probe)
    try:
        rss_start = server.status_kib("VmRSS")
        before = server.stats()
        if workload.probe:
            load = drive_with_probe(workload, server.port, use_smtp_source)
        else:
            load = drive(workload, server.port, use_smtp_source)
        time.sleep(0.2)  # let the server finish closing connections before reading its clock
        after = server.stats()
        peak_kib = server.status_kib("VmHWM")
    finally:
        server.stop()

    # getrusage (fine-grained) and /proc/PID/stat (clock ticks) must tell the same story.
    proc_cpu = after["proc_cpu"] - before["proc_cpu"]
    cpu = after["cpu"] - before["cpu"]
    user = after["utime"] - before["utime"]
    if abs(cpu - proc_cpu) > 0.05 + 0.05 * cpu:
        print(f"  warning: {variant.name}: getrusage {cpu:.3f} s, /proc {proc_cpu:.3f} s")

    received = int(after["messages"] - before["messages"])
    sent = int(load["sent"]) + int(load.get("probe_sent", 0))  # type: ignore[call-overload]
    octets = after["octets"] - before["octets"]
    elapsed = float(load["elapsed"])  # type: ignore[arg-type]
    result: dict[str, object] = {
        "variant": variant.name,
        "workload": workload.key,
        "sent": sent,
        "received": received,
        # Known when client.py sent: what it wrote must be what the listener got.
        "sent_octets": load.get("octets"),
        "received_octets": octets,
        "elapsed": elapsed,
        "msgs_per_s": received / elapsed if elapsed else 0.0,
        "mb_per_s": octets / elapsed / 1e6 if elapsed else 0.0,
        "cpu_s": cpu,
        "proc_cpu_s": proc_cpu,
        "cpu_us_per_msg": cpu / received * 1e6 if received else None,
        # User space: the interpreter, the loop and the server's code; the rest is the kernel's.
        "user_us_per_msg": user / received * 1e6 if received else None,
        "client_cpu_s": load.get("client_cpu"),
        "rss_start_mib": rss_start / KIB,
        "peak_rss_mib": peak_kib / KIB,
        "errors": load["errors"],
    }
    if "probe" in load:
        probe = load["probe"]
        assert isinstance(probe, dict)
        result["stall_ms"] = probe.get("max_ms")
        result["probe_p99_ms"] = probe.get("p99_ms")
        result["probe_replies"] = probe.get("replies")
        result["loop_lag_ms"] = after["worst_lag"] * 1000
    return result


# Reporting


def median(values: list[object]) -> float | None:
    present = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(present) if present else None


def summarise(results: list[dict[str, object]]) -> dict[tuple[str, str], dict[str, object]]:
    """Median of every figure per (workload, variant), and the sum of any mismatch."""
    grouped: dict[tuple[str, str], list[dict[str, object]]] = {}
    for result in results:
        key = (str(result["workload"]), str(result["variant"]))
        grouped.setdefault(key, []).append(result)
    summary: dict[tuple[str, str], dict[str, object]] = {}
    figures = (
        "msgs_per_s", "mb_per_s", "cpu_us_per_msg", "user_us_per_msg", "peak_rss_mib",
        "rss_start_mib", "stall_ms", "probe_p99_ms", "loop_lag_ms", "elapsed", "client_cpu_s",
    )  # fmt: skip
    for key, runs in grouped.items():
        row: dict[str, object] = {f: median([r.get(f) for r in runs]) for f in figures}
        row["runs"] = len(runs)
        row["mismatches"] = [
            f"sent {r['sent']} ({r['sent_octets']} octets), "
            f"received {r['received']} ({r['received_octets']} octets)"
            for r in runs
            if not delivered_all(r)
        ]
        row["errors"] = [e for r in runs for e in r["errors"]]  # type: ignore[attr-defined]
        summary[key] = row
    return summary


def delivered_all(result: dict[str, object]) -> bool:
    """Every message sent reached the listener (and every octet, where they are known)."""
    if result["sent"] != result["received"]:
        return False
    return result["sent_octets"] is None or result["sent_octets"] == result["received_octets"]


def fmt(value: object, digits: int = 0) -> str:
    if value is None:
        return "-"
    assert isinstance(value, (int, float))
    return f"{value:,.{digits}f}"


def table(workload: Workload, summary: dict[tuple[str, str], dict[str, object]]) -> str:
    """A Markdown table of one workload, with each server's CPU/msg ratio to aiosmtpd."""
    if workload.probe:
        header = (
            "| server | loop | twin | MB/s | worst stall ms | p99 reply ms | loop lag ms "
            "| peak RSS MiB | stall vs aiosmtpd | checked |"
        )
    else:
        header = (
            "| server | loop | twin | msgs/s | MB/s | server CPU µs/msg | of which user "
            "| peak RSS MiB | aiosmtpd CPU ÷ this | checked |"
        )
    lines = [f"**{workload.key}: {workload.title}**", "", header]
    lines.append("|" + "---|" * (header.count("|") - 1))
    for variant in VARIANTS:
        row = summary.get((workload.key, variant.name))
        if row is None:
            continue
        peer = summary.get((workload.key, Variant("aiosmtpd", variant.loop, "-").name), {})
        checked = "ok" if not row["mismatches"] and not row["errors"] else "MISMATCH"
        checked += f" ({row['runs']} runs)"
        if workload.probe:
            ratio = _ratio(row.get("stall_ms"), peer.get("stall_ms"))
            cells = [
                fmt(row["mb_per_s"]), fmt(row["stall_ms"], 1), fmt(row["probe_p99_ms"], 1),
                fmt(row["loop_lag_ms"], 1), fmt(row["peak_rss_mib"], 1), ratio,
            ]  # fmt: skip
        else:
            ratio = _ratio(peer.get("cpu_us_per_msg"), row.get("cpu_us_per_msg"))
            cells = [
                fmt(row["msgs_per_s"]), fmt(row["mb_per_s"], 1), fmt(row["cpu_us_per_msg"]),
                fmt(row["user_us_per_msg"]), fmt(row["peak_rss_mib"], 1), ratio,
            ]  # fmt: skip
        names = f"| {variant.server} | {variant.loop} | {variant.twin} | "
        lines.append(names + " | ".join(cells) + f" | {checked} |")
    return "\n".join(lines)


def _ratio(numerator: object, denominator: object) -> str:
    if not isinstance(numerator, (int, float)) or not isinstance(denominator, (int, float)):
        return "-"
    if denominator == 0:
        return "-"
    return f"{numerator / denominator:.2f}x"


def machine() -> str:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    import aiosmtpd

    import fastsmtp

    try:
        import uvloop

        uvloop_version = uvloop.__version__
    except ImportError:
        uvloop_version = "not installed"
    return (
        f"nproc {os.cpu_count()}, {model}; Python {platform.python_version()}; "
        f"fastsmtp {fastsmtp.__version__} from {Path(fastsmtp.__file__).parent} (compiled twin "
        f"installed: {_has_compiled_twin()}), aiosmtpd {aiosmtpd.__version__}, "
        f"uvloop {uvloop_version}"
    )


def stale_install() -> list[str]:
    """Name what the installed fastsmtp lacks of this work tree, if the runs use a copy.

    A venv made with ``pip install .`` keeps measuring the code as it was then, whatever
    changed since: the very mistake that makes a change look like it did nothing. An editable
    install reads the Python modules from the tree but keeps the compiled twin it last built.
    """
    import fastsmtp
    from fastsmtp import _wire

    root = HERE.parent.parent
    installed = Path(fastsmtp.__file__).resolve().parent
    tree = root / "src" / "fastsmtp"
    stale = []
    if tree.is_dir() and installed != tree.resolve():
        stale = [
            source.name
            for source in sorted(tree.glob("*.py"))
            if not (installed / source.name).is_file()
            or (installed / source.name).read_bytes() != source.read_bytes()
        ]
    twin = root / "fastsmtp_ext" / "_wire_c.pyx"
    try:
        built = Path(_wire.load("c").__file__ or "")
    except ImportError:
        return stale
    if twin.is_file() and built.is_file() and built.stat().st_mtime < twin.stat().st_mtime:
        stale.append(f"{built.name} (older than {twin.name})")
    return stale


def _has_compiled_twin() -> bool:
    from fastsmtp import _wire

    try:
        _wire.load("c")
    except ImportError:
        return False
    return True


# Instructions per message


def instructions(
    variants: list[Variant], workload: Workload, messages: int, use_smtp_source: bool
) -> int:
    """Count each server's instructions per message under callgrind; print a table.

    CPU time on a shared machine moves by 10-20% between runs; the instructions a server
    executes in user space hardly move. Each server runs ``messages`` and then twice as many
    messages, in two processes: the difference is the cost of ``messages`` messages, without
    the start and the stop. Kernel time (the socket calls) is not counted.
    """
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("valgrind is not installed (Debian package valgrind)")
        return 1
    print(f"instructions per message by callgrind ({workload.key}: {workload.title}), "
          f"from runs of {messages} and {2 * messages} messages")  # fmt: skip
    per_message: dict[str, float] = {}
    for variant in variants:
        once = _count(valgrind, variant, workload, messages, use_smtp_source)
        twice = _count(valgrind, variant, workload, 2 * messages, use_smtp_source)
        if once is None or twice is None:
            print(f"  {variant.name}: a run failed, not counted")
            continue
        count = per_message[variant.name] = (twice - once) / messages
        print(f"  {variant.name:24} {count:12,.0f} instructions/msg", flush=True)

    print()
    print("| server | loop | twin | instructions/msg | aiosmtpd ÷ this | this ÷ bare |")
    print("|---|---|---|---|---|---|")
    for variant in variants:
        own = per_message.get(variant.name)
        if own is None:
            continue
        peer = per_message.get(Variant("aiosmtpd", variant.loop, "-").name)
        floor = per_message.get(Variant("bare", variant.loop, "-").name)
        print(f"| {variant.server} | {variant.loop} | {variant.twin} | {own:,.0f} "
              f"| {_ratio(peer, own)} | {_ratio(own, floor)} |")  # fmt: skip
    return 0 if len(per_message) == len(variants) else 1


def _count(
    valgrind: str, variant: Variant, workload: Workload, messages: int, use_smtp_source: bool
) -> int | None:
    """Run ``messages`` messages through one server under callgrind; its instruction total."""
    with tempfile.TemporaryDirectory() as scratch:
        out = os.path.join(scratch, "callgrind.out")
        wrapper = (valgrind, "-q", "--tool=callgrind", f"--callgrind-out-file={out}")
        server = ServerProcess(variant, wrapper=wrapper)
        try:
            before = server.stats()["messages"]
            load = drive(dataclasses.replace(workload, messages=messages), server.port,
                         use_smtp_source)  # fmt: skip
            received = server.stats()["messages"] - before
        finally:
            server.stop()
        if load["errors"] or received != messages:
            print(f"  {variant.name}: {received} of {messages} received, {load['errors']}")
            return None
        # callgrind's own total, written when the process ends.
        try:
            written = Path(out).read_text()
        except OSError as error:
            print(f"  {variant.name}: no callgrind output ({error})")
            return None
        for line in written.splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    return None


# Profiling


def profile(
    tool: str, loop: str, twin: str, workload: Workload, top: int, flags: list[str]
) -> None:
    """Run ``workload`` against one fastsmtp process under a profiler; print the top own times."""
    use_smtp_source = os.access(SMTP_SOURCE, os.X_OK)
    variant = Variant("fastsmtp", loop, twin)
    with tempfile.TemporaryDirectory() as scratch:
        out = os.path.join(scratch, "profile")
        if tool == "cprofile":
            server = ServerProcess(variant, cprofile=out)
            try:
                drive(workload, server.port, use_smtp_source)
            finally:
                server.stop()
            stats = pstats.Stats(out)
            entries = stats.stats  # type: ignore[attr-defined]
            total = sum(entry[2] for entry in entries.values())
            print(f"cProfile, {variant.name}, {workload.title}: own time, top {top}")
            rows = sorted(entries.items(), key=lambda item: -item[1][2])
            for (path, line, name), (_cc, calls, own, _cum, _callers) in rows[:top]:
                where = f"{Path(path).name}:{line}" if line else path
                print(f"{own / total * 100:6.1f}%  {own:8.3f}s  {calls:>9}  {name}  ({where})")
            return

        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        server = ServerProcess(variant)
        try:
            command = [
                spy, "record", "--pid", str(server.pid), "--format", "raw", "--output", out,
                "--rate", "250", "--nolineno",
            ]  # fmt: skip
            command += flags
            recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL)
            time.sleep(1.0)  # py-spy attaches
            drive(workload, server.port, use_smtp_source)
            time.sleep(0.3)
        finally:
            server.stop()
        recorder.wait(30)
        title = f"py-spy {' '.join(flags)}, {variant.name}, {workload.title}"
        print_collapsed(out, title, top)


def print_collapsed(path: str, title: str, top: int) -> None:
    """Own time per function from py-spy's collapsed stacks: the leaf frame of each sample."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = stack.split(";")
        if any("answer_requests" in f for f in frames):
            continue  # serve.py's thread that waits for the runner's requests
        if any("select" in f and "selectors.py" in f for f in frames[-2:]):
            continue  # waiting in epoll: idle, not work
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    print(f"{title}: {total} busy samples; own time, top {top}")
    for frame, count in own.most_common(top):
        print(f"{count / total * 100:6.1f}% own  {inclusive[frame] / total * 100:6.1f}% incl  "
              f"{frame}")  # fmt: skip


# Main


def positive(text: str) -> int:
    """An argparse type: a whole number above zero."""
    number = int(text)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not above zero")
    return number


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, one repetition")
    parser.add_argument("--repeat", type=positive, help="repetitions (default: 1 quick, 5 full)")
    parser.add_argument("--client", choices=("auto", "smtp-source", "python"), default="auto")
    parser.add_argument("--only", help="comma-separated workloads, e.g. w1,w3")
    parser.add_argument(
        "--servers", help="comma-separated servers, e.g. fastsmtp/uvloop/c,aiosmtpd/uvloop"
    )
    parser.add_argument("--json", metavar="PATH", help="write every run's figures here")
    parser.add_argument("--profile", choices=("py-spy", "cprofile"), help="profile instead")
    parser.add_argument("--profile-loop", choices=("asyncio", "uvloop"), default="uvloop")
    parser.add_argument("--profile-twin", choices=("c", "py"), default="c")
    parser.add_argument("--top", type=int, default=25, help="profile lines to print")
    parser.add_argument("--native", action="store_true", help="py-spy: C frames too")
    parser.add_argument("--gil", action="store_true", help="py-spy: only samples holding the GIL")
    parser.add_argument(
        "--instructions",
        type=positive,
        metavar="N",
        help="count instructions per message under callgrind, from runs of N and 2N messages",
    )
    args = parser.parse_args()

    chosen = workloads(args.quick)
    if args.only:
        keys = set(args.only.split(","))
        chosen = [w for w in chosen if w.key in keys]
    if args.profile:
        # The first workload chosen (w1 unless --only says otherwise).
        flags = ["--native"] * args.native + ["--gil"] * args.gil
        profile(args.profile, args.profile_loop, args.profile_twin, chosen[0], args.top, flags)
        return 0

    have_smtp_source = os.access(SMTP_SOURCE, os.X_OK)
    if args.client == "smtp-source" and not have_smtp_source:
        parser.error(f"{SMTP_SOURCE} is not installed (Debian package postfix)")
    use_smtp_source = have_smtp_source and args.client != "python"
    repeat = args.repeat or (1 if args.quick else 5)
    variants = [v for v in VARIANTS if v.twin != "c" or _has_compiled_twin()]
    if args.servers:
        wanted = [w for w in args.servers.split(",") if w]
        variants = [v for v in variants if any(v.name.startswith(w) for w in wanted)]
        if not wanted or not variants:
            parser.error(f"--servers {args.servers!r} names none of: "
                         + ", ".join(v.name for v in VARIANTS))  # fmt: skip
    try:
        import uvloop  # noqa: F401
    except ImportError:
        variants = [v for v in variants if v.loop != "uvloop"]

    stale = stale_install()
    if stale:
        print(f"warning: the installed fastsmtp is not this work tree ({', '.join(stale)}): "
              "measuring old code; pip install --no-deps . again")  # fmt: skip
    if args.instructions is not None:
        # The first workload chosen, as for --profile.
        return instructions(variants, chosen[0], args.instructions, use_smtp_source)

    print(machine())
    print(f"load generator: {'smtp-source' if use_smtp_source else 'client.py'}"
          f" (workload 4's probe: client.py); {repeat} repetition(s), interleaved")  # fmt: skip
    results: list[dict[str, object]] = []
    for workload in chosen:
        for round_ in range(repeat):
            for variant in variants:
                result = measure(variant, workload, use_smtp_source)
                results.append(result)
                note = "" if delivered_all(result) else "  MISMATCH"
                note += f"  errors: {result['errors']}" if result["errors"] else ""
                print(
                    f"  {workload.key} round {round_ + 1} {variant.name:24} "
                    f"{result['received']:>6} msgs {result['elapsed']:7.2f} s  "
                    f"cpu {fmt(result['cpu_us_per_msg'])} µs/msg "
                    f"(user {fmt(result['user_us_per_msg'])})  "
                    f"peak {result['peak_rss_mib']:.1f} MiB"
                    + (
                        f"  stall {fmt(result.get('stall_ms'), 1)} ms"
                        f"  loop lag {fmt(result.get('loop_lag_ms'), 1)} ms"
                        if workload.probe
                        else ""
                    )
                    + note,
                    flush=True,
                )

    summary = summarise(results)
    print()
    for workload in chosen:
        print(table(workload, summary))
        print()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    failed = any(row["mismatches"] or row["errors"] for row in summary.values())
    if failed:
        print("some runs lost messages or failed: see MISMATCH above")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
