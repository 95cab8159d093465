"""Format plans: normalization and JSON round trips."""

from __future__ import annotations

import json

import pytest

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.formats import Fixed, Minifloat, PerChannel, Pow2
from ristretto_onnx.passes.plan import (format_of, load_plan, plan_from_json, plan_to_dict,
                                        plan_to_json)


def test_values_normalize():
    assert format_of(None) is None and format_of("float") is None and format_of("") is None
    assert format_of("fixed:8:4") == Fixed(8, 4)
    assert format_of(Minifloat(8, 4)) == Minifloat(8, 4)
    assert format_of("fixed:8:5,7@0") == PerChannel((Fixed(8, 5), Fixed(8, 7)), 0)
    with pytest.raises(RistrettoError, match="cannot use 3"):
        format_of(3)


def test_json_round_trip_and_sidecars_work_as_plans(tmp_path):
    plan = {"conv1/weights": Fixed(8, 7), "conv1/bias": None, "fc/weights": Pow2(-8, -1),
            "fc/inputs": PerChannel((Fixed(8, 5), Fixed(8, 6)), -1)}
    text = plan_to_json(plan)
    assert json.loads(text)["conv1/bias"] is None
    assert plan_from_json(text) == plan
    (tmp_path / "side.json").write_text(json.dumps({"formats": plan_to_dict(plan), "other": 1}))
    assert load_plan(tmp_path / "side.json") == plan
    with pytest.raises(RistrettoError, match="not valid JSON"):
        plan_from_json("{")
    with pytest.raises(RistrettoError, match="cannot read format plan"):
        load_plan(tmp_path / "missing.json")
    with pytest.raises(RistrettoError, match="JSON object"):
        plan_from_json("[1]")
