"""Shared fixtures: where the real zoo (../shared/zoo) is, and an isolated zoo environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def shared_zoo() -> Path:
    """The shared zoo folder: ``RISTRETTO_ZOO`` if set, else ``<repo>/../shared/zoo``.

    Skips (with the reason) only when no such folder exists, e.g. on a machine without the data.
    """
    env = os.environ.get("RISTRETTO_ZOO", "")
    candidates = [Path(p).expanduser() for p in env.split(os.pathsep) if p.strip()] if env else []
    candidates.append(REPO.parent / "shared" / "zoo")
    for folder in candidates:
        if (folder / "MANIFEST.json").is_file():
            return folder.resolve()
    pytest.skip(f"shared zoo not found (RISTRETTO_ZOO={env or 'unset'}, "
                f"{REPO.parent / 'shared' / 'zoo'}): set RISTRETTO_ZOO=/path/to/shared/zoo")


@pytest.fixture(scope="session")
def _zoo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("xdg-cache")


@pytest.fixture
def zoo_env(shared_zoo: Path, _zoo_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``zoo:`` names resolve to the shared zoo; the user cache is a temporary folder."""
    monkeypatch.setenv("RISTRETTO_ZOO", str(shared_zoo))
    monkeypatch.setenv("XDG_CACHE_HOME", str(_zoo_cache))
    return shared_zoo


@pytest.fixture
def empty_zoo_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A search path with nothing on it (embedded files are still found)."""
    (tmp_path / "zoo").mkdir()
    monkeypatch.setenv("RISTRETTO_ZOO", str(tmp_path / "zoo"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "zoo"
