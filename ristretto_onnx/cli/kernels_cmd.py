"""``ristretto-onnx kernels``: the QuantizeSim kernel library the sessions use (issue 14)."""

from __future__ import annotations

import typer

from ristretto_onnx.cli.app import app
from ristretto_onnx.errors import RistrettoError


@app.command("kernels")
def kernels_command(
    path: bool = typer.Option(False, "--path", help="Print only the library's path (exit 1 when none)."),
    build: bool = typer.Option(False, "--build", help="Build the library from kernels/ first (CUDA too when nvcc is found)."),
    cuda: bool = typer.Option(None, "--cuda/--no-cuda", help="With --build: require / skip the CUDA library.",
                              show_default=False),
) -> None:
    """Show the kernel library (path, CPU/CUDA kernels), onnxruntime's version and GPU visibility."""
    import onnxruntime as ort

    from ristretto_onnx.runtime.kernels import ENV, library_path, library_providers, stale_libraries
    from ristretto_onnx.runtime.session import gpu_available

    if build:
        from ristretto_onnx.runtime.kernels_build import build as build_library

        result = build_library(cuda=cuda)
        if not path:
            typer.echo(f"built {result.cpu}" + (f" and {result.cuda}" if result.cuda else "")
                       + f" (headers {result.include_dir})")
    lib = library_path()
    if path:
        if lib is None:
            raise RistrettoError("no kernel library: build it with `ristretto-onnx kernels --build` "
                                 f"or point {ENV} at it")
        typer.echo(str(lib))
        return
    kinds = library_providers(str(lib)) if lib else ()
    typer.echo(f"library:      {lib or f'none (ristretto-onnx kernels --build, or set {ENV})'}")
    for old in stale_libraries():
        typer.echo(f"stale:        {old} is built from older kernel sources and is not used "
                   "(rebuild: ristretto-onnx kernels --build)")
    typer.echo(f"kernels:      CPU {'yes' if 'cpu' in kinds else 'no'}, CUDA {'yes' if 'cuda' in kinds else 'no'}")
    typer.echo(f"onnxruntime:  {ort.__version__} ({', '.join(ort.get_available_providers())})")
    typer.echo(f"GPU visible:  {'yes' if gpu_available() else 'no'}")
    typer.echo("sessions:     " + ("QuantizeSim runs in the library's kernels" if lib else
                                   "QuantizeSim runs as standard-op function bodies"))
