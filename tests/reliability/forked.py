"""Run a CLI command in a forked child: isolated (a crash cannot kill pytest), time-bounded, cheap.

The parent imports ristretto_onnx, onnx and onnxruntime once; each case forks, so a case costs
the command's own work rather than a Python start-up (about 1 s with onnxruntime). The parent
must not have created an onnxruntime session (its thread pools do not survive ``fork``).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# Import everything a command imports lazily, once, in the parent (children inherit it).
import onnxruntime  # noqa: F401,E402
import rich.console  # noqa: F401,E402
import rich.live  # noqa: F401,E402
import rich.table  # noqa: F401,E402

import ristretto_onnx.analyze  # noqa: F401,E402
import ristretto_onnx.cli  # noqa: F401,E402
import ristretto_onnx.compress  # noqa: F401,E402
import ristretto_onnx.passes.save  # noqa: F401,E402
import ristretto_onnx.quantize  # noqa: F401,E402
import ristretto_onnx.runtime.evaluate  # noqa: F401,E402
import ristretto_onnx.runtime.metrics  # noqa: F401,E402


@dataclass(frozen=True)
class Outcome:
    code: int | None  # exit status, or None when killed by a signal
    signal: int | None  # the signal that ended the child (a crash: SIGSEGV, SIGABRT ...)
    timed_out: bool
    stdout: str
    stderr: str
    seconds: float


def run_forked(argv: list[str], folder: Path, timeout: float) -> Outcome:
    """``ristretto_onnx.cli.main(argv)`` in a child process; its stdout/stderr in ``folder``."""
    out_file, err_file = folder / ".stdout", folder / ".stderr"
    start = time.perf_counter()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 70
        try:
            fd_out = os.open(out_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            fd_err = os.open(err_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd_out, 1)
            os.dup2(fd_err, 2)
            sys.stdout = open(1, "w", closefd=False)
            sys.stderr = open(2, "w", closefd=False)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            from ristretto_onnx.cli import main

            code = main(argv)
        except BaseException:  # noqa: BLE001 - report anything as a harness failure (exit 70)
            import traceback

            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code if isinstance(code, int) else 70)
    deadline = start + timeout
    timed_out = False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.perf_counter() > deadline:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            timed_out = True
            break
        time.sleep(0.005)
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    text = lambda p: p.read_text(errors="replace") if p.exists() else ""  # noqa: E731
    outcome = Outcome(code, None if timed_out else sig, timed_out, text(out_file), text(err_file),
                      time.perf_counter() - start)
    out_file.unlink(missing_ok=True)
    err_file.unlink(missing_ok=True)
    return outcome


def warm_up(folder: Path) -> None:
    """Run a failing command in the parent, so children inherit every lazy import of a first call.

    The command fails while reading the model, before any onnxruntime session exists.
    """
    import contextlib
    import io

    from ristretto_onnx.cli import main

    bad = folder / "warm-up.onnx"
    bad.write_bytes(b"not a model")
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        for command in (["compress", str(bad), str(folder / "w1.onnx"), "--data", str(bad)],
                        ["quantize", str(bad), str(folder / "w2.onnx"), "--scheme", "dfp", "--bits", "8"]):
            main(command)
    bad.unlink()
