"""Choose the twin of the byte-level hot path, once, at import time; and the session core.

The compiled twin ``fastsmtp._wire_c`` is used on CPython when it imports; the pure-Python
twin ``fastsmtp._wire_py`` otherwise, or when ``FASTSMTP_NO_EXTENSIONS`` is set to a true
value. True is what the build (scikit-build-core) also takes for true: any value but empty,
"0", "false", "f", "no", "n" or "off", in any case. Type checkers always read the Python twin.
``IMPLEMENTATION`` tells which one was chosen: ``"c"`` or ``"py"``.

The session core has twins too, with one source: ``fastsmtp._session_c`` is
``fastsmtp._session`` compiled (see ``fastsmtp_ext/_session_c.pxd``). ``session_core()``
pairs each wire twin with its own. The compiled twins are chosen together or not at all.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType
from typing import TYPE_CHECKING

__all__ = [
    "CTRL",
    "DEFAULT_MAX_LINE_LENGTH",
    "EIGHT_BIT",
    "IMPLEMENTATION",
    "NO_EXTENSIONS",
    "LineTooLong",
    "WireReader",
    "classify_command",
    "load",
    "plain_path",
    "session_core",
    "split_command",
]

# The same false values as scikit-build-core's ``if.env`` test, so build and import agree.
_FALSE_VALUES = frozenset({"", "0", "false", "f", "no", "n", "off"})

#: True when ``FASTSMTP_NO_EXTENSIONS`` asks for the pure-Python twin.
NO_EXTENSIONS: bool = (
    os.environ.get("FASTSMTP_NO_EXTENSIONS", "").strip().lower() not in _FALSE_VALUES
)

if TYPE_CHECKING:
    from ._session import SessionCore
    from ._wire_py import (
        CTRL,
        DEFAULT_MAX_LINE_LENGTH,
        EIGHT_BIT,
        LineTooLong,
        WireReader,
        classify_command,
        plain_path,
        split_command,
    )

    IMPLEMENTATION: str = "py"
elif NO_EXTENSIONS or sys.implementation.name != "cpython":
    from ._wire_py import (
        CTRL,
        DEFAULT_MAX_LINE_LENGTH,
        EIGHT_BIT,
        LineTooLong,
        WireReader,
        classify_command,
        plain_path,
        split_command,
    )

    IMPLEMENTATION = "py"
else:
    try:
        from ._wire_c import (
            CTRL,
            DEFAULT_MAX_LINE_LENGTH,
            EIGHT_BIT,
            LineTooLong,
            WireReader,
            classify_command,
            plain_path,
            split_command,
        )

        # Built together, so one without the other is a broken install; a compiled wire twin
        # without its core could not serve at all. (Not imported: the core imports this module.)
        if importlib.util.find_spec("fastsmtp._session_c") is None:
            raise ImportError("fastsmtp._session_c is not installed")
        IMPLEMENTATION = "c"
    except ImportError:
        # Installed without a compiler: the pure twin gives the same results, only slower.
        # tests/test_wire_loaded.py fails in that case unless the flag says it is deliberate.
        from ._wire_py import (
            CTRL,
            DEFAULT_MAX_LINE_LENGTH,
            EIGHT_BIT,
            LineTooLong,
            WireReader,
            classify_command,
            plain_path,
            split_command,
        )

        IMPLEMENTATION = "py"


def load(name: str) -> ModuleType:
    """Return one twin by name, whatever this module chose: ``"c"`` or ``"py"``.

    Tests and benchmarks use it to run the same checks on both twins.

    Raises:
        ImportError: ``"c"`` was asked for and the compiled twin is not installed.
        ValueError: ``name`` is neither ``"c"`` nor ``"py"``.
    """
    if name == "py":
        return importlib.import_module("fastsmtp._wire_py")
    if name == "c":
        return importlib.import_module("fastsmtp._wire_c")
    raise ValueError(f"wire implementation must be 'c' or 'py', got {name!r}")


def session_core(wire: ModuleType) -> type[SessionCore]:
    """Return the session core that goes with the twin ``wire``: compiled, or pure Python.

    Raises:
        ImportError: ``wire`` is the compiled twin and the compiled core is not installed.
    """
    # Imported here: the session imports this module (through _commands).
    name = "fastsmtp._session_c" if wire.__name__ == "fastsmtp._wire_c" else "fastsmtp._session"
    core: type[SessionCore] = importlib.import_module(name).SessionCore
    return core
