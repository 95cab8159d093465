"""The rules for what a command writes, the same in every command (issue 10, Deliver 1 and 3).

* An output is never one of the inputs (model, data, reference): exit 2, nothing written.
* An existing output is overwritten only with ``--force``: exit 2 otherwise, the file untouched.
* The output folder must exist and be writable (no command creates folders): exit 1.
* Outputs appear atomically with open()'s permissions (:mod:`ristretto_onnx.passes.save`).

All checks run before any work starts, so a long job never fails at its very end on a path.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

from ristretto_onnx.errors import RistrettoError, UsageError


def _same(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_outputs(outputs: Iterable[Path | str | None], inputs: Iterable[Path | str | None] = (), *,
                  force: bool = False) -> None:
    """Raise before any work if writing ``outputs`` would break a rule of the module docstring."""
    outs = [Path(o) for o in outputs if o is not None]
    ins = [Path(i) for i in inputs if i is not None and not str(i).startswith("zoo:")]
    for i, out in enumerate(outs):
        for other in outs[:i]:
            if _same(out, other):
                raise UsageError(f"{out} is given as two different outputs")
        for inp in ins:
            if _same(out, inp):
                raise UsageError(f"{out} is an input of this command: refusing to overwrite an input")
        if out.is_dir():
            raise UsageError(f"{out} is a folder; give a file name")
        for existing in (out, out.with_name(out.name + ".data")) if out.suffix == ".onnx" else (out,):
            if (existing.exists() or existing.is_symlink()) and not force:  # .data: external weights
                raise UsageError(f"{existing} exists; pass --force to overwrite it")
        folder = out.parent if str(out.parent) else Path(".")
        if not folder.is_dir():
            raise RistrettoError(f"output folder {folder} does not exist (create it first)")
        try:  # really try: root ignores permission bits, read-only mounts ignore os.access
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as e:
            raise RistrettoError(f"output folder {folder} is not writable ({e.strerror or e})") from None


def onnx_output(path: Path | str) -> Path:
    """``OUT.onnx``: the suffix is required so that the report (``OUT.json``) cannot clash."""
    path = Path(path)
    if path.suffix != ".onnx":
        raise UsageError(f"the output path must end in .onnx: {path}")
    return path


@contextmanager
def usage_errors():
    """Errors raised while reading option values are usage errors (exit 2), whatever their type."""
    try:
        yield
    except UsageError:
        raise
    except RistrettoError as e:
        raise UsageError(str(e)) from None
