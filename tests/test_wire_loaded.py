"""Guard against a silent fallback: a broken build must not quietly test Python twice.

On CPython, unless ``FASTSMTP_NO_EXTENSIONS`` says a pure run is deliberate, the selector
must have picked the compiled twin. The two twins must also promise the same interface.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from fastsmtp import _wire

CPYTHON = sys.implementation.name == "cpython"


@pytest.mark.skipif(_wire.NO_EXTENSIONS, reason="FASTSMTP_NO_EXTENSIONS is set: pure run")
@pytest.mark.skipif(not CPYTHON, reason="the compiled twin is built for CPython only")
def test_compiled_twin_is_the_one_in_use():
    assert _wire.IMPLEMENTATION == "c", (
        "fastsmtp._wire fell back to the pure-Python twin: the extension did not build or "
        "import; reinstall with a C compiler, or set FASTSMTP_NO_EXTENSIONS=1 for a pure run"
    )
    assert _wire.WireReader is _wire.load("c").WireReader


@pytest.mark.skipif(not _wire.NO_EXTENSIONS, reason="FASTSMTP_NO_EXTENSIONS is not set")
def test_flag_selects_the_python_twin():
    assert _wire.IMPLEMENTATION == "py"
    assert _wire.WireReader is _wire.load("py").WireReader


def _chosen_with(value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "FASTSMTP_NO_EXTENSIONS"}
    if value is not None:
        env["FASTSMTP_NO_EXTENSIONS"] = value
    code = "from fastsmtp import _wire; print(_wire.IMPLEMENTATION)"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


@pytest.mark.parametrize(
    ("value", "pure"),
    [
        ("1", True),
        ("true", True),
        ("YES", True),
        ("on", True),
        (" y ", True),
        (None, False),
        ("", False),
        ("0", False),
        ("off", False),
        ("False", False),
        ("n", False),
    ],
)
def test_flag_values(value, pure):
    # The values scikit-build-core reads as true or false at build time mean the same here.
    compiled_available = CPYTHON and importlib.util.find_spec("fastsmtp._wire_c") is not None
    expected = "py" if pure or not compiled_available else "c"
    assert _chosen_with(value) == expected


# Run before fastsmtp is imported: a finder that reports fastsmtp._session_c as missing, as
# in an install that has lost the file. Then a message goes through the server.
_WITHOUT_COMPILED_CORE = r"""
import importlib.abc, json, smtplib, sys

class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "fastsmtp._session_c":
            raise ModuleNotFoundError(name, name=name)
        return None

sys.meta_path.insert(0, Missing())
import fastsmtp
from fastsmtp import _session, _wire

got = []
server = fastsmtp.smtp_server(port=0, host="127.0.0.1")

@server.mail_listener
async def keep(mail):
    got.append(mail.data)

server.start()
try:
    with smtplib.SMTP("127.0.0.1", server.bound_port, timeout=10) as client:
        client.sendmail("a@example.test", ["b@example.test"], b"Subject: x\r\n\r\nbody\r\n")
finally:
    server.stop()
core = _wire.session_core(_wire.load(_wire.IMPLEMENTATION))
pure_core = core is _session.SessionCore
print(json.dumps([fastsmtp.IMPLEMENTATION, pure_core, [m.decode() for m in got]]))
"""


@pytest.mark.skipif(not CPYTHON, reason="the compiled twin is built for CPython only")
def test_compiled_wire_without_its_core_falls_back_to_pure():
    env = {k: v for k, v in os.environ.items() if k != "FASTSMTP_NO_EXTENSIONS"}
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_COMPILED_CORE],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["py", True, ["Subject: x\r\n\r\nbody\r\n"]]


def test_load_by_name():
    assert _wire.load("py").__name__ == "fastsmtp._wire_py"
    with pytest.raises(ValueError, match="'c' or 'py'"):
        _wire.load("rust")


def _public(obj: object) -> set[str]:
    return {name for name in dir(obj) if not name.startswith("_")}


def _shape(func: object) -> list[tuple[str, object, object]]:
    """Parameter names, kinds and defaults: what twins share (compiled code has no annotations)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(func).parameters.values()]


def test_twins_promise_the_same_interface(wire):
    py = _wire.load("py")
    assert sorted(wire.__all__) == sorted(py.__all__)
    assert all(hasattr(wire, name) for name in py.__all__)
    assert _public(wire.WireReader()) == _public(py.WireReader())

    for name in ("split_command", "classify_command"):
        assert _shape(getattr(wire, name)) == _shape(getattr(py, name))
    for name in _public(py.WireReader):
        member = getattr(py.WireReader, name)
        if callable(member):
            assert _shape(getattr(wire.WireReader, name)) == _shape(member), name


@pytest.mark.skipif(_wire.NO_EXTENSIONS, reason="FASTSMTP_NO_EXTENSIONS is set: pure run")
@pytest.mark.skipif(not CPYTHON, reason="the compiled twin is built for CPython only")
def test_compiled_session_core_is_typed():
    # Without its .pxd, Cython would compile _session.py into an ordinary class with a
    # __dict__: slower than the interpreter. Typed, its state lives in C fields.
    core = _wire.session_core(_wire.load("c"))
    assert core.__module__ == "fastsmtp._session_c"
    assert not hasattr(_new_core(core, _wire.load("c")), "__dict__")


def test_session_core_pairs_with_its_twin(wire):
    from fastsmtp import _session

    core = _wire.session_core(wire)
    if wire.__name__ == "fastsmtp._wire_py":
        assert core is _session.SessionCore
    else:
        assert core.__module__ == "fastsmtp._session_c"


def test_session_cores_promise_the_same_interface(wire):
    from fastsmtp import _session

    paired = _new_core(_wire.session_core(wire), wire)
    pure = _new_core(_session.SessionCore, _wire.load("py"))
    assert _public(paired) == _public(pure)

    for name in _public(_session.SessionCore):
        member = getattr(_session.SessionCore, name)
        if callable(member):
            assert _shape(getattr(type(paired), name)) == _shape(member), name


def _new_core(core: type, wire: ModuleType) -> object:
    from fastsmtp._session_config import SessionConfig
    from fastsmtp.context import Session

    return core(SessionConfig("mx.test"), wire, Session("w1", None, None))


@pytest.mark.skipif(_wire.NO_EXTENSIONS, reason="FASTSMTP_NO_EXTENSIONS is set: pure run")
@pytest.mark.skipif(not CPYTHON, reason="the compiled twin is built for CPython only")
def test_compiled_session_core_is_built_from_this_source():
    # Built from _session.py at install time: after an edit, an editable install keeps the old
    # build, and the [c] tests would run the old dialogue. The build records the source's hash.
    from fastsmtp import _session, _session_c_source

    source = Path(_session.__file__).read_bytes()
    assert re.fullmatch("[0-9a-f]{64}", _session_c_source.SHA256)
    assert _session_c_source.SHA256 == hashlib.sha256(source).hexdigest(), (
        "fastsmtp._session_c was built from another _session.py: pip install . again"
    )
