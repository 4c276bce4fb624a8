"""Packaging facts checked without a build: one version source, complete metadata.

The installed distribution's metadata is read with ``importlib.metadata``; the build settings
come from the ``pyproject.toml`` beside this directory. What only a build can show (the sdist's
file list, the wheels, the pure fallback) is checked by ``scripts/check_dist.sh``.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import fastsmtp

PROJECT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    """Return the parsed ``pyproject.toml`` of the project these tests belong to."""
    with (PROJECT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def test_version_has_one_source() -> None:
    pyproject = _pyproject()
    assert "version" not in pyproject["project"]
    assert "version" in pyproject["project"]["dynamic"]
    build = pyproject["tool"]["scikit-build"]["metadata"]["version"]
    assert build == {
        "provider": "scikit_build_core.metadata.regex",
        "input": "src/fastsmtp/_version.py",
    }

    # The installed metadata, the package and the source file all say the same version.
    source = (PROJECT / build["input"]).read_text(encoding="utf-8")
    written = re.findall(r'^__version__ = "([^"]+)"$', source, flags=re.MULTILINE)
    assert written == [fastsmtp.__version__]
    assert metadata.version("fastsmtp") == fastsmtp.__version__

    # No other module writes a version of its own.
    others = [
        path.name
        for path in (PROJECT / "src" / "fastsmtp").glob("*.py")
        if path.name != "_version.py" and "__version__ =" in path.read_text(encoding="utf-8")
    ]
    assert others == []


def test_metadata_is_complete() -> None:
    meta = metadata.metadata("fastsmtp")

    assert meta["Name"] == "fastsmtp"
    assert meta["Summary"]
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert meta["Requires-Python"] == ">=3.11"
    assert meta["Description-Content-Type"] == "text/markdown"
    assert meta.get_payload().startswith("# fastsmtp\n")
    urls = dict(entry.split(", ", 1) for entry in meta.get_all("Project-URL") or [])
    assert sorted(urls) == ["Documentation", "Homepage", "Issues", "Source"]
    assert all(url.startswith("https://") for url in urls.values())


def test_classifiers_name_the_versions_wheels_are_built_for() -> None:
    pyproject = _pyproject()
    built = {
        f"{match[0]}.{match[1:]}"
        for selector in pyproject["tool"]["cibuildwheel"]["build"]
        for match in re.findall(r"^cp(\d{3,})-", selector)
    }
    prefix = "Programming Language :: Python :: 3."
    classified = {
        classifier.removeprefix("Programming Language :: Python :: ")
        for classifier in metadata.metadata("fastsmtp").get_all("Classifier") or []
        if classifier.startswith(prefix)
    }

    assert built == classified
    minimum = min(built, key=lambda version: tuple(map(int, version.split("."))))
    assert f">={minimum}" == metadata.metadata("fastsmtp")["Requires-Python"]
