"""Command-line interface: ``ristretto-onnx COMMAND ...``.

Each command lives in its own module and registers itself on :data:`app`. :func:`main` turns every
error into one line on stderr: exit code 2 for usage errors, 1 for failures, 130/143 for SIGINT and
SIGTERM (the line says what was interrupted; outputs are written atomically, so none is left
half-written). ``--debug`` shows the traceback instead. The table of bad inputs and their
messages is docs/ERRORS.md.
"""

from __future__ import annotations

import importlib
import signal
import sys

import typer

from ristretto_onnx import __version__
from ristretto_onnx.cli.app import app, state
from ristretto_onnx import events
from ristretto_onnx.errors import Interrupted, RistrettoError

try:  # recent typer carries its own copy of click (and does not install click itself)
    from typer._click import exceptions as _click_exceptions
except ImportError:  # pragma: no cover - older typer is built on click
    from click import exceptions as _click_exceptions

_EXIT = (typer.Exit,)
_ABORT = (typer.Abort,)
_USAGE = (_click_exceptions.UsageError,)
_CLICK = (_click_exceptions.ClickException,)


#: Command modules, imported for their registration side effect (in --help order).
COMMAND_MODULES = [
    "compress_cmd",
    "quantize_cmd",
    "analyze_cmd",
    "eval_cmd",
    "formats_cmd",
    "export_cmd",
    "report_cmd",
    "zoo_cmd",
    "finetune_cmd",
    "kernels_cmd",
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ristretto-onnx {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show Python tracebacks on errors."),
) -> None:
    """Hardware-oriented approximation of CNNs in ONNX."""
    state["debug"] = debug


for _name in COMMAND_MODULES:
    importlib.import_module(f"ristretto_onnx.cli.{_name}")


def _fail(message: str, code: int) -> int:
    message = " ".join(str(message).split())  # one line, whatever the exception said
    print(f"ristretto-onnx: error: {message}", file=sys.stderr)
    return code


def _raise_interrupted(signum, frame) -> None:
    raise Interrupted(signum)


def _interrupted_line(signum: int, command: str) -> str:
    name = signal.Signals(signum).name
    doing = f" ({events.last.describe()})" if events.last is not None else ""
    return f"interrupted by {name} during {command or 'ristretto-onnx'}{doing}; no output was written"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns (and exits with) the process exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in args
    command = next((a for a in args if not a.startswith("-")), "")
    events.last = None
    previous = {}
    # Ctrl-C and SIGTERM (docker stop, a CI timeout) raise Interrupted, which click does not turn
    # into a silent exit; finally blocks on the way out remove temporary files.
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, _raise_interrupted)
        except ValueError:  # not the main thread (an embedding application): leave signals alone
            pass
    try:
        code = _run(args, debug, command)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return _exit(code, argv)


def _run(args: list[str], debug: bool, command: str) -> int:
    try:
        rv = app(args=args, prog_name="ristretto-onnx", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except _EXIT as e:
        return e.exit_code
    except _ABORT:  # click turns a KeyboardInterrupt during a prompt into Abort
        return _fail(_interrupted_line(signal.SIGINT, command), 130)
    except _USAGE as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # bare command group: show its help
            print(e.format_message())
            return 0
        if debug:
            raise
        hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
        return _fail(f"{e.format_message()}{hint}", 2)
    except _CLICK as e:
        if debug:
            raise
        return _fail(e.format_message(), e.exit_code or 1)
    except RistrettoError as e:
        if debug:
            raise
        return _fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        return _fail(_interrupted_line(signal.SIGINT, command), 130)
    except Interrupted as e:
        return _fail(_interrupted_line(e.signum, command), e.exit_code)
    except Exception as e:  # noqa: BLE001 - the CLI contract is "never a traceback"
        if debug:
            raise
        if _from_onnxruntime(e):  # the model passed our checks but onnxruntime refuses it
            return _fail(f"onnxruntime cannot run this model: {_first_line(e)}", 1)
        return _fail(f"{type(e).__name__}: {e} (rerun with --debug for the traceback)", 1)


def _from_onnxruntime(e: BaseException) -> bool:
    return type(e).__module__.startswith("onnxruntime")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return next((line.strip() for line in text.splitlines() if line.strip()), type(e).__name__)[:300]


def _exit(code: int, argv: list[str] | None) -> int:
    if argv is None:
        sys.exit(code)
    return code
