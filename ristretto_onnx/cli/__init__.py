"""Command-line interface: ``ristretto-onnx COMMAND ...``.

Each command lives in its own module and registers itself on :data:`app`. :func:`main` turns every
error into one line on stderr: exit code 2 for usage errors, 1 for failures. ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import importlib
import sys

import typer

from ristretto_onnx import __version__
from ristretto_onnx.cli.app import app, state
from ristretto_onnx.errors import RistrettoError

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
    "zoo_cmd",
    "finetune_cmd",
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


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns (and exits with) the process exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in args
    try:
        rv = app(args=args, prog_name="ristretto-onnx", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except _EXIT as e:
        code = e.exit_code
    except _ABORT:
        code = _fail("aborted", 1)
    except _USAGE as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # bare command group: show its help
            print(e.format_message())
            return _exit(0, argv)
        if debug:
            raise
        hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
        code = _fail(f"{e.format_message()}{hint}", 2)
    except _CLICK as e:
        if debug:
            raise
        code = _fail(e.format_message(), e.exit_code or 1)
    except RistrettoError as e:
        if debug:
            raise
        code = _fail(str(e), 1)
    except KeyboardInterrupt:
        code = _fail("interrupted", 130)
    except Exception as e:  # noqa: BLE001 - the CLI contract is "never a traceback"
        if debug:
            raise
        code = _fail(f"{type(e).__name__}: {e} (rerun with --debug for the traceback)", 1)
    return _exit(code, argv)


def _exit(code: int, argv: list[str] | None) -> int:
    if argv is None:
        sys.exit(code)
    return code
