"""The scale-out flags of ``compress``, ``quantize`` and ``eval``, declared once (issue 16).

``backend: BackendOption = "local"``, ``ray_address: RayAddressOption = None`` and
``workers: WorkersOption = 2`` in a command's signature; :func:`backend_from_flags` checks them
(a usage error, exit 2) and, for ``ray``, that Ray is installed before any work starts.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ristretto_onnx.cli.outputs import usage_errors
from ristretto_onnx.options import Backend

BackendOption = Annotated[str, typer.Option(
    "--backend", help="local (this process) or ray (data shards on Ray actors, each reading its own; "
                      "same result; needs ristretto-onnx[ray]).")]
RayAddressOption = Annotated[Optional[str], typer.Option(
    "--ray-address", help="--backend ray: the cluster, e.g. HOST:6379 (default: start a local one).")]
WorkersOption = Annotated[int, typer.Option("--workers", help="--backend ray: actors, each with a shard of the data.")]


def backend_from_flags(kind: str, address: str | None, workers: int) -> Backend:
    """The :class:`Backend` of the flags; with ``ray``, a one-line error when Ray is missing."""
    with usage_errors():
        where = Backend(kind, address, workers)
    if where.kind == "ray":
        from ristretto_onnx.runtime.cluster import import_ray

        import_ray()  # says how to install it, before any work
    return where
