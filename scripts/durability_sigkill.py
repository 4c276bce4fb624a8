"""SIGKILL the real ``fastsmtp`` command while clients send; no acknowledged message may be lost.

Each trial starts ``fastsmtp --maildir DIR`` on 127.0.0.1, lets ``--clients`` clients send
distinct messages (each carries a unique Message-ID; sizes from a few hundred octets to 1 MiB,
with dot-stuffed lines, 8-bit text and lines longer than 998 octets), and kills the server
with SIGKILL at a random moment. Then the Maildir is read back: every message whose 250 a
client read must be there exactly once, byte for byte as the client meant it (after removing
the dot-stuffing of the wire, which the server must undo; nothing else is normalised). A
message whose 250 never came may be there or not: the client would send it again. The next
trial restarts the server on the same Maildir; at the end every acknowledged message of every
trial is checked again.

``--trace-syscalls`` instead runs one server under strace, sends one message, and shows the
order of the system calls that make it durable: the message file's fsync, its link into
``new/``, the fsync of ``new/``, and only then the 250 written to the socket.

SIGKILL ends the process, not the machine: the kernel keeps what was written, so these trials
prove that no 250 goes out before the message is complete in ``new/``; the trace shows the
fsyncs that carry it through a power loss as well.

``--signal TERM`` sends SIGTERM instead: the graceful shutdown under load. Then, besides the
checks above, the server must exit with status 0 within its grace period (``--grace``
seconds, passed on as ``--shutdown-grace``) plus a second.

Bounded by ``--trials`` and by ``--seconds`` for the whole run. Exits non-zero if a message was
lost, altered or stored twice, or a file in ``new/`` or ``cur/`` is not one that was sent.

    python scripts/durability_sigkill.py                   # 50 trials, 4 clients
    python scripts/durability_sigkill.py --trials 5 --seconds 60
    python scripts/durability_sigkill.py --trace-syscalls
    python scripts/durability_sigkill.py --signal TERM --trials 20
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import soak_common

client = soak_common.load_client()

MESSAGE_ID = re.compile(rb"^Message-ID: <([^>]+)>\r\n", re.MULTILINE)
SIZES = [300, 2_000, 20_000, 200_000, 1_000_000]
SIZE_WEIGHTS = [30, 30, 20, 15, 5]


@dataclasses.dataclass
class Ledger:
    """What the clients sent: acknowledged (250 read) and in doubt (no 250 read)."""

    acked: dict[str, bytes] = dataclasses.field(default_factory=dict)
    in_doubt: dict[str, bytes] = dataclasses.field(default_factory=dict)


def make_content(rng: random.Random, token: str) -> bytes:
    """A message with Message-ID ``<token>``: headers, then lines of many kinds, CRLF-ended."""
    head = (
        f"From: <durable@client.example>\r\n"
        f"To: <sink@server.example>\r\n"
        f"Subject: durability {token}\r\n"
        f"Message-ID: <{token}>\r\n"
        "\r\n"
    ).encode()
    target = rng.choices(SIZES, SIZE_WEIGHTS)[0] * rng.uniform(0.5, 1.0)
    lines = []
    size = len(head)
    while size < target:
        kind = rng.random()
        if kind < 0.1:
            line = b"." + rng.randbytes(8).hex().encode()  # must be stuffed on the wire
        elif kind < 0.15:
            line = b"."  # a lone dot: the end marker if the server forgot to unstuff
        elif kind < 0.2:
            line = "caf\u00e9 na\u00efve \u00fcber".encode()
        elif kind < 0.22:
            line = b"L" * rng.randint(999, 5000)  # longer than RFC 5322's 998
        elif kind < 0.25:
            line = b""
        else:
            line = rng.randbytes(rng.randint(10, 38)).hex().encode()
        lines.append(line + b"\r\n")
        size += len(line) + 2
    return head + b"".join(lines)


def stuffed(content: bytes) -> bytes:
    """The wire form of CRLF-ended ``content`` (RFC 5321 §4.5.2), without the final dot."""
    return (b"\r\n" + content).replace(b"\r\n.", b"\r\n..")[2:]


async def sender(
    port: int, name: str, rng: random.Random, ledger: Ledger, stop: asyncio.Event
) -> None:
    """Send messages over a few connections in turn until the server dies or ``stop``."""
    count = 0
    while not stop.is_set():
        try:
            reader, writer = await client.open_session(port)
        except (OSError, asyncio.IncompleteReadError, client.ReplyMismatch):
            return
        try:
            for _ in range(rng.randint(1, 5)):
                count += 1
                token = f"{name}-{count}-{rng.randbytes(6).hex()}@durability.test"
                content = make_content(rng, token)
                ledger.in_doubt[token] = content
                await client.send_message(reader, writer, stuffed(content))
                # The 250 was read: from here on, losing this message is a failure.
                ledger.acked[token] = ledger.in_doubt.pop(token)
            await client.close_session(reader, writer)
        except (OSError, asyncio.IncompleteReadError, client.ReplyMismatch):
            writer.close()
            return


def read_maildir(maildir: Path) -> tuple[dict[str, list[bytes]], list[str], int]:
    """Return the stored messages by Message-ID token, files without one, and files in tmp/."""
    stored: dict[str, list[bytes]] = {}
    strangers: list[str] = []
    for subdirectory in ("new", "cur"):
        for path in sorted((maildir / subdirectory).iterdir()):
            data = path.read_bytes()
            found = MESSAGE_ID.search(data)
            if found is None:
                strangers.append(path.name)
                continue
            stored.setdefault(found.group(1).decode(), []).append(data)
    leftovers = sum(1 for _ in (maildir / "tmp").iterdir())
    return stored, strangers, leftovers


@dataclasses.dataclass
class Check:
    """The verdict on one reading of the Maildir."""

    acked: int = 0
    found: int = 0
    lost: list[str] = dataclasses.field(default_factory=list)
    altered: list[str] = dataclasses.field(default_factory=list)
    duplicated: list[str] = dataclasses.field(default_factory=list)
    in_doubt: int = 0
    in_doubt_stored: int = 0
    strangers: list[str] = dataclasses.field(default_factory=list)
    leftovers: int = 0

    @property
    def good(self) -> bool:
        return not (self.lost or self.altered or self.duplicated or self.strangers)


def check(maildir: Path, ledger: Ledger, earlier: Ledger | None = None) -> Check:
    """Compare what the Maildir holds with what was acknowledged and what was in doubt.

    Messages of ``earlier`` trials are known, not strangers; they are checked at the end.
    """
    stored, strangers, leftovers = read_maildir(maildir)
    verdict = Check(strangers=strangers, leftovers=leftovers)
    verdict.acked = len(ledger.acked)
    for token, content in ledger.acked.items():
        copies = stored.get(token, [])
        if not copies:
            verdict.lost.append(token)
        elif any(copy != content for copy in copies):
            verdict.altered.append(token)
        else:
            verdict.found += 1
        if len(copies) > 1:
            verdict.duplicated.append(token)
    verdict.in_doubt = len(ledger.in_doubt)
    for token, content in ledger.in_doubt.items():
        copies = stored.get(token, [])
        if copies:
            verdict.in_doubt_stored += 1
        if any(copy != content for copy in copies):
            verdict.altered.append(token)  # stored without a 250 is fine, stored wrong is not
        if len(copies) > 1:
            verdict.duplicated.append(token)
    known = ledger.acked.keys() | ledger.in_doubt.keys()
    if earlier is not None:
        known |= earlier.acked.keys() | earlier.in_doubt.keys()
    verdict.strangers += [token for token in stored if token not in known]
    return verdict


async def trial(
    number: int,
    port: int,
    server: subprocess.Popen[bytes],
    args: argparse.Namespace,
    rng: random.Random,
) -> tuple[Ledger, float, str]:
    """Run the clients against ``server``, signal it after a random delay, wait for its end.

    Returns the ledger, the delay and what went wrong with the server's end ("" if nothing).
    """
    ledger = Ledger()
    stop = asyncio.Event()
    senders = [
        asyncio.ensure_future(
            sender(port, f"t{number}c{index}", random.Random(rng.random()), ledger, stop)
        )
        for index in range(args.clients)
    ]
    delay = rng.uniform(args.kill_after_min, args.kill_after_max)
    await asyncio.sleep(delay)
    signum = signal.Signals[f"SIG{args.signal}"]
    server.send_signal(signum)
    signalled = time.monotonic()
    await asyncio.get_running_loop().run_in_executor(None, server.wait)
    took = time.monotonic() - signalled
    stop.set()
    await asyncio.wait_for(asyncio.gather(*senders), 30.0)

    problem = ""
    if signum is signal.SIGTERM:
        # A graceful stop: a clean exit, no later than the grace period allows.
        if server.returncode != 0:
            problem = f"exit status {server.returncode} after SIGTERM"
        elif took > args.grace + 1.0:
            problem = f"took {took:.1f}s to stop after SIGTERM (grace {args.grace}s)"
    return ledger, delay, problem


def print_check(label: str, verdict: Check) -> None:
    print(
        f"{label}: acknowledged={verdict.acked} found={verdict.found} "
        f"lost={len(verdict.lost)} altered={len(verdict.altered)} "
        f"duplicated={len(verdict.duplicated)} in-doubt={verdict.in_doubt} "
        f"(stored anyway: {verdict.in_doubt_stored}) unknown-files={len(verdict.strangers)} "
        f"tmp-leftovers={verdict.leftovers}"
    )
    for name, tokens in (("lost", verdict.lost), ("altered", verdict.altered)):
        for token in tokens[:3]:
            print(f"    {name}: {token}")


def run_trials(args: argparse.Namespace, maildir: Path, logs: Path) -> bool:
    deadline = time.monotonic() + args.seconds
    rng = random.Random(args.seed)
    every = Ledger()
    all_good = True
    done = bad_stops = 0
    for number in range(1, args.trials + 1):
        if time.monotonic() >= deadline:
            print(f"time bound reached after {done} trials")
            break
        port = soak_common.free_port()
        with (logs / f"trial-{number}.log").open("wb") as log:
            options = ["--maildir", str(maildir), "--loop", args.loop]
            options += ["--shutdown-grace", str(args.grace)]
            server = soak_common.start_fastsmtp(port, options, log=log)
            ledger, delay, problem = asyncio.run(trial(number, port, server, args, rng))
        verdict = check(maildir, ledger, every)
        all_good &= verdict.good and not problem
        if args.verbose or not verdict.good or problem:
            print_check(f"trial {number} (SIG{args.signal} after {delay:.3f}s)", verdict)
        if problem:
            print(f"    server: {problem}")
            bad_stops += 1
        every.acked.update(ledger.acked)
        every.in_doubt.update(ledger.in_doubt)
        done += 1

    # Every message acknowledged in any trial, checked once more after all the restarts.
    final = check(maildir, every)
    print(
        f"trials: {done} (SIG{args.signal} after {args.kill_after_min}-{args.kill_after_max}s"
        f" each); unclean or late stops: {bad_stops}"
    )
    print_check("all trials", final)
    return all_good and final.good and done == args.trials


SYSCALLS = "openat,fsync,fdatasync,link,linkat,rename,renameat,renameat2,sendto,write"


def trace_syscalls(args: argparse.Namespace, scratch: Path) -> bool:
    """Run one server under strace, send one message, show and check the durable order."""
    strace = shutil.which("strace")
    if strace is None:
        print("strace is not installed (apt-get install strace)")
        return False
    maildir = scratch / "Maildir"
    trace = scratch / "trace.txt"
    prefix = [strace, "-f", "-qq", "-s", "64", "-e", f"trace={SYSCALLS}", "-o", str(trace)]
    port = soak_common.free_port()
    server = soak_common.start_fastsmtp(
        port, ["--maildir", str(maildir), "--loop", args.loop], prefix=prefix
    )
    try:
        content = make_content(random.Random(1), "traced@durability.test")

        async def one() -> None:
            reader, writer = await client.open_session(port)
            await client.send_message(reader, writer, stuffed(content))
            await client.close_session(reader, writer)

        asyncio.run(one())
    finally:
        soak_common.stop(server)

    events = durable_order(trace.read_text().splitlines(), str(maildir))
    for event in events:
        print(f"    {event}")
    steps = [event.split(":", 1)[0] for event in events]
    wanted = ["open tmp", "fsync file", "link to new", "open new", "fsync new", "send 250"]
    good = steps == wanted
    print("order: " + " -> ".join(steps))
    print("durable before 250: " + ("yes" if good else f"NO (wanted {' -> '.join(wanted)})"))
    return good


def durable_order(lines: list[str], maildir: str) -> list[str]:
    """Pick out of an strace log the calls that store the message and send its 250.

    ``mailbox`` opens its file in ``tmp/`` twice (to create it, then to write it): the two
    opens count as one step.
    """
    events: list[str] = []
    fds: dict[str, str] = {}
    opened = re.compile(r'openat\(AT_FDCWD, "([^"]+)", ([^)]*)\) = (\d+)')
    synced = re.compile(r"\bf(?:data)?sync\((\d+)\)\s*= 0")
    for line in lines:
        step = ""
        if (found := opened.search(line)) and found.group(1).startswith(maildir + "/"):
            inside, fd = found.group(1)[len(maildir) :], found.group(3)
            if inside.startswith("/tmp/"):
                fds[fd], step = "file", "open tmp"
            elif inside.rstrip("/") == "/new" and "O_DIRECTORY" in found.group(2):
                fds[fd], step = "new", "open new"
        elif (found := synced.search(line)) and found.group(1) in fds:
            step = f"fsync {fds.pop(found.group(1))}"
        elif re.search(r"\b(link|linkat|rename\w*)\(", line) and f"{maildir}/new/" in line:
            step = "link to new"
        elif re.search(r"\b(sendto|write)\(\d+, \"250 2\.0\.0", line):
            step = "send 250"
        if step and not (events and events[-1].startswith(step + ":")):
            events.append(f"{step}: {line.strip()}")
    return events


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=50, help="server lives to kill")
    parser.add_argument("--clients", type=int, default=4, help="clients sending at once")
    parser.add_argument("--kill-after-min", type=float, default=0.05, help="seconds")
    parser.add_argument("--kill-after-max", type=float, default=1.5, help="seconds")
    parser.add_argument("--seconds", type=float, default=400.0, help="time bound of the run")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: new)")
    parser.add_argument("--maildir", type=Path, help="Maildir to use and keep (default: temp)")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument(
        "--signal", choices=("KILL", "TERM"), default="KILL", help="how the server is ended"
    )
    parser.add_argument("--grace", type=float, default=5.0, help="--shutdown-grace, seconds")
    parser.add_argument("--trace-syscalls", action="store_true", help="strace one message")
    parser.add_argument("--verbose", action="store_true", help="print every trial's figures")
    args = parser.parse_args(argv)
    if not 1 <= args.trials <= 1000 or not 1 <= args.clients <= 64:
        parser.error("--trials must be 1..1000 and --clients 1..64")
    if not 0 < args.kill_after_min <= args.kill_after_max <= 30:
        parser.error("need 0 < --kill-after-min <= --kill-after-max <= 30")
    if args.seed is None:
        args.seed = random.randrange(2**32)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(soak_common.machine())
    with tempfile.TemporaryDirectory(prefix="fastsmtp-kill-") as temporary:
        scratch = Path(temporary)
        if args.trace_syscalls:
            good = trace_syscalls(args, scratch)
        else:
            print(f"loop: {args.loop}; clients: {args.clients}; seed: {args.seed}")
            maildir = args.maildir or scratch / "Maildir"
            good = run_trials(args, maildir, scratch)
    print("OK" if good else "FAILED")
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
