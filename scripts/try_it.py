"""See fastsmtp work: run the real command, send it real mail, show what it stored.

Starts ``fastsmtp --port 0 --maildir DIR`` (the installed command), sends every message of
``tests/corpus/`` to it with ``smtplib``, then reads the Maildir back and checks that each
message arrived intact. Exits 1 if any did not.

    python scripts/try_it.py [--maildir ./Maildir]
"""

from __future__ import annotations

import argparse
import email.policy
import mailbox
import re
import signal
import smtplib
import subprocess
import sys
from email.parser import BytesParser
from pathlib import Path

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "corpus"


def crlf(raw: bytes) -> bytes:
    """Return the message as a client sends it: every line ended by CRLF."""
    text = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return text if text.endswith(b"\r\n") else text + b"\r\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--maildir", default="Maildir", help="where to store (default ./Maildir)")
    args = parser.parse_args()

    command = [sys.executable, "-m", "fastsmtp", "--port", "0", "--maildir", args.maildir]
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        startup = server.stderr.readline()
        print(startup.strip())
        found = re.search(r"listening on \S+:(\d+)", startup)  # the log or startup line
        if found is None:
            print("fastsmtp did not start", file=sys.stderr)
            return 1
        port = int(found.group(1))

        # Remember what was there before, so a reused Maildir does not confuse the check.
        before = set(mailbox.Maildir(args.maildir).keys())
        files = sorted(CORPUS.glob("*.eml"))
        sent = {}
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            for path in files:
                message = crlf(path.read_bytes())
                client.sendmail("demo@example.com", ["you@example.com"], message)
                sent[path.name] = message
        print(f"sent {len(sent)} real messages from {CORPUS} with smtplib")
    finally:
        server.send_signal(signal.SIGINT)
        # Read the rest of its log (one line per message) so the pipe never fills up.
        server.communicate(timeout=30)

    box = mailbox.Maildir(args.maildir)
    stored = [box.get_bytes(key) for key in set(box.keys()) - before]
    intact = sum(1 for message in sent.values() if message in stored)
    parser_ = BytesParser(policy=email.policy.default)
    for raw in stored[:5]:
        subject = parser_.parsebytes(raw, headersonly=True).get("Subject", "")
        print(f"  stored: {len(raw):>8} bytes  {str(subject)[:60]!r}")
    print(f"{len(stored)} new messages in {Path(args.maildir).resolve()}, {intact} intact")
    return 0 if intact == len(sent) == len(stored) else 1


if __name__ == "__main__":
    sys.exit(main())
