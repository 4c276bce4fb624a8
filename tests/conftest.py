"""Shared fixtures. Tests run against the installed package, not against src/."""

from __future__ import annotations

from types import ModuleType

import pytest

from fastsmtp import _wire


@pytest.fixture(params=["c", "py"])
def wire(request: pytest.FixtureRequest) -> ModuleType:
    """Yield one twin of the wire module; a missing compiled twin is an error, not a skip."""
    if request.param == "c" and _wire.NO_EXTENSIONS:
        pytest.skip("FASTSMTP_NO_EXTENSIONS is set: the compiled twin is not expected")
    return _wire.load(request.param)
