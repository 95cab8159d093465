"""Where zoo files live: the search path, sha256 verification, and optional download.

Zoo data is never part of the repository. A file named ``models/lenet-mnist.onnx`` is looked up
under every folder of ``RISTRETTO_ZOO`` (colon-separated, each laid out like the shared zoo;
relative folders resolve against the current directory, so CI can say ``../shared/zoo``), then
in the user cache (``$XDG_CACHE_HOME/ristretto-onnx`` or ``~/.cache/ristretto-onnx``), where
downloads land. Files shipped inside the package (the embedded digits model) are found next to
this module.

Every file is checked against the sha256 recorded in the registry before use, so a stale or
truncated copy fails loudly instead of giving wrong accuracies. Hashing a 30 MB dataset on every
call would be slow, so digests are cached by ``(path, size, mtime)`` in memory and in the cache
folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ristretto_onnx.errors import RistrettoError

ENV_VAR = "RISTRETTO_ZOO"
_HASH_CACHE_NAME = "sha256-cache.json"


@dataclass(frozen=True)
class ZooFile:
    """One file (or folder, path ending in ``/``) of a zoo entry, as MANIFEST.json records it.

    ``sha256`` of a folder is the tree digest of MANIFEST.json: sha256 over the lines
    ``"<relative path> <sha256 of file>\\n"`` in sorted path order.
    """

    path: str
    sha256: str | None
    size: int | None = None
    url: str | None = None
    embedded: bool = False

    @property
    def is_folder(self) -> bool:
        return self.path.endswith("/")

    @property
    def display(self) -> str:
        return f"zoo/{self.path}" if self.embedded else self.path


# --------------------------------------------------------------------------------------------
# Search path


def package_dir() -> Path:
    """The folder of this package, where embedded files (the digits model) are shipped."""
    return Path(__file__).resolve().parent


def cache_dir() -> Path:
    """The per-user cache: downloads and the sha256 cache."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "ristretto-onnx"


def search_path() -> list[Path]:
    """``RISTRETTO_ZOO`` folders (relative ones against the current directory), then the cache."""
    folders = []
    for part in os.environ.get(ENV_VAR, "").split(os.pathsep):
        if part.strip():
            folder = Path(part.strip()).expanduser()
            folders.append(folder if folder.is_absolute() else Path.cwd() / folder)
    folders.append(cache_dir())
    return folders


def find(file: ZooFile) -> Path | None:
    """The first existing copy of ``file`` on the search path (no verification), or ``None``."""
    if file.embedded:
        path = package_dir() / file.path
        return path if path.exists() else None
    for folder in search_path():
        path = folder / file.path
        if path.is_dir() if file.is_folder else path.is_file():
            return path
    return None


def _not_found(file: ZooFile, fetch_error: str | None) -> RistrettoError:
    if file.embedded:
        return RistrettoError(f"embedded zoo file {file.display} is missing from {package_dir()}; "
                              "rebuild it with: python -m ristretto_onnx.zoo.digits")
    env = os.environ.get(ENV_VAR, "")
    where = f"{ENV_VAR}={env}" if env.strip() else f"{ENV_VAR} (not set)"
    if any(not Path(part).expanduser().is_absolute() for part in env.split(os.pathsep) if part):
        where += f" (from {Path.cwd()})"
    fetched = f"; download failed: {fetch_error}" if fetch_error else ""
    return RistrettoError(f"zoo file {file.path} not found in {where} or {cache_dir()}{fetched}; "
                          f"set {ENV_VAR}=/path/to/zoo (a folder laid out like the shared zoo, "
                          "e.g. ../shared/zoo)")


def locate(file: ZooFile, *, verify: bool = True, fetch: bool = True) -> Path:
    """Path of ``file``: found on the search path (or downloaded), sha256-checked."""
    path = find(file)
    fetch_error = None
    if path is None and fetch and file.url:
        try:
            path = download(file)
        except RistrettoError as e:
            fetch_error = str(e)
    if path is None:
        raise _not_found(file, fetch_error)
    if verify:
        check(file, path)
    return path


# --------------------------------------------------------------------------------------------
# Verification


class _DigestCache:
    """sha256 digests keyed by (resolved path, size, mtime_ns), in memory and in a JSON file."""

    def __init__(self) -> None:
        self._memory: dict[str, str] = {}
        self._loaded: set[Path] = set()

    @staticmethod
    def _key(path: Path) -> str:
        st = path.stat()
        return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"

    def _disk_file(self) -> Path:
        return cache_dir() / _HASH_CACHE_NAME

    def _load(self) -> None:
        disk = self._disk_file()
        if disk in self._loaded:
            return
        self._loaded.add(disk)
        try:
            stored = json.loads(disk.read_text())
            if isinstance(stored, dict):
                self._memory.update({k: v for k, v in stored.items() if isinstance(v, str)})
        except (OSError, ValueError):
            pass

    def digests(self, paths: list[Path]) -> list[str]:
        """The sha256 of each path, hashing only files not seen with this size and mtime."""
        self._load()
        keys = [self._key(p) for p in paths]
        fresh = False
        for key, path in zip(keys, paths):
            if key not in self._memory:
                self._memory[key] = _hash_file(path)
                fresh = True
        if fresh:
            self._save()
        return [self._memory[k] for k in keys]

    def _save(self) -> None:
        disk = self._disk_file()
        try:
            disk.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=disk.parent, delete=False,
                                             suffix=".tmp") as tmp:
                json.dump(self._memory, tmp, sort_keys=True)
            os.replace(tmp.name, disk)
        except OSError:
            pass  # a read-only cache only costs re-hashing next time


_DIGESTS = _DigestCache()


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256(path: Path) -> str:
    """sha256 of a file, or the tree digest of a folder (cached by size and mtime)."""
    path = Path(path)
    if not path.is_dir():
        return _DIGESTS.digests([path])[0]
    files = sorted((p for p in path.rglob("*") if p.is_file()),
                   key=lambda p: p.relative_to(path).as_posix())
    digests = _DIGESTS.digests(files)
    lines = "".join(f"{p.relative_to(path).as_posix()} {d}\n" for p, d in zip(files, digests))
    return hashlib.sha256(lines.encode()).hexdigest()


def check(file: ZooFile, path: Path) -> None:
    """Raise if ``path`` does not hold the bytes the registry expects for ``file``."""
    if file.sha256 is None:
        return
    actual = sha256(path)
    if actual != file.sha256:
        raise RistrettoError(f"zoo file {file.path} at {path} has sha256 {actual[:12]}…, expected "
                             f"{file.sha256[:12]}…: it is damaged or a different version; "
                             "replace it with the published copy")


# --------------------------------------------------------------------------------------------
# Download


def download(file: ZooFile, timeout: float = 60.0) -> Path:
    """Fetch ``file.url`` into the cache, verifying sha256 before it becomes visible."""
    if not file.url or file.is_folder:
        raise RistrettoError(f"zoo file {file.path} has no download address")
    target = cache_dir() / file.path
    partial: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with urllib.request.urlopen(file.url, timeout=timeout) as response, \
                tempfile.NamedTemporaryFile("wb", dir=target.parent, delete=False,
                                            suffix=".part") as tmp:
            partial = Path(tmp.name)
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
                tmp.write(block)
        if file.sha256 is not None and digest.hexdigest() != file.sha256:
            raise RistrettoError(f"{file.url} gave sha256 {digest.hexdigest()[:12]}…, expected "
                                 f"{file.sha256[:12]}…")
        os.replace(partial, target)
        partial = None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise RistrettoError(f"{file.url}: {getattr(e, 'reason', e)}") from None
    finally:
        if partial is not None:
            partial.unlink(missing_ok=True)
    return target
