"""Format plans: which number format each group of a model gets.

A plan maps group ids (``conv1/weights``) to a :data:`~ristretto_onnx.formats.Format`, or to
``None`` for "keep this group in float". Groups missing from a plan are float too. The plan is
the whole interface between whoever chooses formats (a scheme, the search, a user's JSON file)
and :func:`~ristretto_onnx.passes.transforms.set_formats.set_formats`, which applies it to an annotated
model without re-inserting anything.

Values are looked up through :func:`format_of` and written through :func:`format_to_json`; a
per-output-channel :class:`~ristretto_onnx.formats.PerChannel` format is a value like any other
(its string form carries the axis: ``fixed:8:5,7,6@0``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.formats import Fixed, Format, Minifloat, PerChannel, Pow2, parse_format

#: A group's format: a scalar or per-channel format, or ``None`` for float.
GroupFormat = Optional[Format]
#: group id -> format (``None`` = float). Any mapping works; functions here return plain dicts.
FormatPlan = Mapping[str, GroupFormat]


def format_of(value) -> GroupFormat:
    """Normalize one plan value: a Format, a format string, or ``None``/``"float"``."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("float", "none", "")):
        return None
    if isinstance(value, (Fixed, Minifloat, Pow2, PerChannel, str)):
        return parse_format(value)
    raise RistrettoError(f"cannot use {value!r} as a group format: expected a format string "
                         "like fixed:8:4 or null")


def format_to_json(fmt: GroupFormat) -> str | None:
    return None if fmt is None else str(fmt)


def normalize_plan(plan: Mapping[str, object]) -> dict[str, GroupFormat]:
    return {str(gid): format_of(v) for gid, v in plan.items()}


def plan_to_dict(plan: FormatPlan) -> dict[str, str | None]:
    """JSON-ready form: ``{"conv1/weights": "fixed:8:7", "conv1/bias": null}``."""
    return {gid: format_to_json(fmt) for gid, fmt in plan.items()}


def plan_from_dict(d: Mapping[str, object]) -> dict[str, GroupFormat]:
    if not isinstance(d, Mapping):
        raise RistrettoError("a format plan must be a JSON object mapping group ids to formats")
    return normalize_plan(d)


def plan_to_json(plan: FormatPlan, indent: int | None = 2) -> str:
    return json.dumps(plan_to_dict(plan), indent=indent)


def plan_from_json(text: str) -> dict[str, GroupFormat]:
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise RistrettoError(f"format plan is not valid JSON: {e}") from None
    if isinstance(d, Mapping) and "formats" in d and isinstance(d["formats"], Mapping):
        d = d["formats"]  # a quantize sidecar works as a plan too
    return plan_from_dict(d)


def load_plan(path: str | Path) -> dict[str, GroupFormat]:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise RistrettoError(f"cannot read format plan {path}: {e.strerror}") from None
    return plan_from_json(text)
