"""Every bad input of issue 10 (Deliver 4), one row each: exit code, one-line message, no output.

The same table is docs/ERRORS.md; ``test_the_docs_table_lists_every_case`` keeps the two in step.
Each case runs ``compress`` or ``quantize`` (or ``eval``) on the embedded digits CNN and its data,
changed in one way; the command must exit with the code of the row (2: fix the command line, 1:
fix the files), print exactly one ``ristretto-onnx: error:`` line containing the row's words,
write nothing, and leave its inputs unchanged.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from ristretto_onnx.cli import main
from ristretto_onnx.zoo.store import package_dir

REPO = Path(__file__).resolve().parents[2]
PKG = package_dir()


def _model(edit=None):
    m = onnx.load(str(PKG / "digits-cnn.onnx"))
    if edit is not None:
        edit(m)
    return m.SerializeToString()


def _data(images=None, labels=None, n=64):
    with np.load(PKG / "digits-test.npz") as d:
        x, y = d["images"][:n], d["labels"][:n]
    return {"images": x if images is None else images(x), **({"labels": y} if labels is None else labels(y))}


def _set_op(op):
    return lambda m: setattr(m.graph.node[0], "op_type", op)


def _flip_dtype(m):
    m.graph.initializer[0].data_type = onnx.TensorProto.DOUBLE


def _no_layers(m):
    x = m.graph.input[0]
    del m.graph.node[:]
    del m.graph.initializer[:]
    m.graph.node.append(helper.make_node("Relu", [x.name], ["y"]))
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 1, 8, 8]))


def _external(keep: int | None):
    """The digits CNN with its weights in ``in.onnx.data``: (model bytes, the first ``keep`` bytes of
    the data file, or ``None`` for a missing data file)."""
    import tempfile

    from onnx import external_data_helper

    m = onnx.load(str(PKG / "digits-cnn.onnx"))
    external_data_helper.convert_model_to_external_data(m, location="in.onnx.data", size_threshold=0)
    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(m, str(Path(tmp) / "in.onnx"))
        blob = (Path(tmp) / "in.onnx.data").read_bytes()
        return (Path(tmp) / "in.onnx").read_bytes(), (None if keep is None else blob[:keep])


EXTERNAL = {"missing external-data file": _external(None), "truncated external-data file": _external(1000)}


def _opset(v):
    return lambda m: setattr(m.opset_import[0], "version", v)


def _fixed_batch(m):
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 3


def _foreign_domain(m):
    m.graph.node[1].domain = "com.example"


# id: (command argv with IN/DATA/OUT placeholders, model bytes or None, data dict or raw bytes, code, words)
C = ["compress", "IN", "OUT", "--data", "DATA", "--calib-size", "32", "-q"]
Q = ["quantize", "IN", "OUT", "--scheme", "dfp", "--bits", "8", "--calib", "DATA"]
CASES = {
    "non-ONNX file": (C, b"just some text\n", None, 1, "cannot read ONNX model"),
    "truncated protobuf": (C, _model()[:1000], None, 1, "cannot read ONNX model"),
    "corrupted protobuf": (Q, _model(_flip_dtype), None, 1, "the model file is corrupt"),
    "fails onnx.checker": (C, _model(lambda m: m.graph.node[0].input.append("x")), None, 1, "not valid ONNX"),
    "unknown op": (C, _model(_set_op("FooBar")), None, 1, "not valid ONNX"),
    "unknown operator domain": (Q, _model(_foreign_domain), None, 1, "only standard ONNX operators"),
    "no quantizable layer": (C, _model(_no_layers), None, 1, "no Conv, ConvTranspose, Gemm or MatMul"),
    "unsupported opset": (C, _model(_opset(99)), None, 1, "supported are opsets 11 to 21"),
    "opset too old to convert": (C, _model(_opset(5)), None, 1, "supported are opsets 11 to 21"),
    "fixed batch dimension": (C, _model(_fixed_batch), None, 1, "has a fixed batch dimension of 3"),
    "missing external-data file": (C, EXTERNAL["missing external-data file"][0], None, 1,
                                   "should be stored in in.onnx.data"),
    "truncated external-data file": (C, EXTERNAL["truncated external-data file"][0], None, 1,
                                     "the data file is corrupt or truncated"),
    "missing data": (C, None, "MISSING", 1, "dataset not found"),
    "unreadable data": (C, None, b"PK\x03\x04 not a zip", 1, "cannot read"),
    "wrong shape": (C, None, _data(images=lambda x: np.zeros((64, 9, 9), np.uint8)), 1,
                    "takes (N,C,H,W) = (N,1,8,8) but the data gives items of shape (1,9,9)"),
    "wrong dtype": (C, None, _data(images=lambda x: x.astype(np.int32)), 1, "images must be uint8"),
    "wrong layout": (C, None, _data(images=lambda x: np.zeros((64, 8, 8, 3), np.uint8)), 1,
                     "data gives items of shape (3,8,8)"),
    "labels out of range": (C, None, _data(labels=lambda y: {"labels": y + 5}), 1, "labels go up to"),
    "labels missing for top1": (C, None, _data(labels=lambda y: {}), 1, "needs labels"),
    "empty data": (C, None, _data(images=lambda x: x[:0], labels=lambda y: {"labels": y[:0]}), 1, "is empty"),
    "NaN/Inf in data": (C, None, _data(images=lambda x: np.full((64, 1, 8, 8), np.nan, np.float32)), 1,
                        "NaN or Inf"),
    "nonsense format": (["quantize", "IN", "OUT", "--format", "fixed:8:x"], None, None, 2, "cannot parse format"),
    "nonsense scheme": ([*C, "--scheme", "int4"], None, None, 2, "unknown scheme"),
    "nonsense tolerance": ([*C, "--tolerance", "-1"], None, None, 2, "--tolerance must be in [0, 1)"),
    "nonsense option value": ([*C, "--calib-size", "many"], None, None, 2, "Input should be a valid integer"),
    "label offset below class 0": ([*C, "--label-offset", "-1"], None, None, 2,
                                   "--label-offset -1 makes label 0 of"),
    "wrong argument count": (["compress", "IN"], None, None, 2, "Missing argument 'OUT.onnx'"),
    "output = input": (["compress", "IN", "IN", "--data", "DATA"], None, None, 2, "refusing to overwrite an input"),
    "output = data": ([*C, "--report", "DATA"], None, None, 2, "refusing to overwrite an input"),
    "missing output folder": (["compress", "IN", "nowhere/out.onnx", "--data", "DATA"], None, None, 1,
                              "output folder nowhere does not exist"),
    "unwritable output folder": (["compress", "IN", "/proc/out.onnx", "--data", "DATA"], None, None, 1,
                                 "output folder /proc is not writable"),
    "existing output without --force": (C, None, None, 2, "exists; pass --force to overwrite it"),
}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clean_line(case, tmp_path, monkeypatch, capsys):
    argv, model, data, code, words = CASES[case]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.onnx").write_bytes(model if model is not None else _model())
    if isinstance(data, bytes):
        (tmp_path / "data.npz").write_bytes(data)
    elif data != "MISSING":
        np.savez(tmp_path / "data.npz", **(data or _data()))
    if case in EXTERNAL and EXTERNAL[case][1] is not None:
        (tmp_path / "in.onnx.data").write_bytes(EXTERNAL[case][1])
    if case == "existing output without --force":
        (tmp_path / "out.onnx").write_bytes(b"the user's file")
    subs = {"IN": "in.onnx", "OUT": "out.onnx", "DATA": "data.npz"}
    before = {p.name: _sha(p) for p in tmp_path.iterdir()}
    assert main([subs.get(a, a) for a in argv]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ristretto-onnx: error: "), err
    assert words in err and "Traceback" not in err and "--debug" not in err, err
    assert {p.name: _sha(p) for p in tmp_path.iterdir()} == before  # nothing written or changed


def test_debug_shows_the_traceback(tmp_path, capsys):
    (tmp_path / "in.onnx").write_bytes(b"garbage")
    np.savez(tmp_path / "d.npz", **_data())
    with pytest.raises(Exception, match="cannot read ONNX model"):
        main(["--debug", "compress", str(tmp_path / "in.onnx"), str(tmp_path / "o.onnx"), "--data",
              str(tmp_path / "d.npz")])


def test_the_docs_table_lists_every_case():
    text = (REPO / "docs" / "ERRORS.md").read_text()
    rows = {m.group(1): int(m.group(2)) for m in re.finditer(r"^\| ([^|]+?) \| (\d) \|", text, re.M)}
    assert rows == {case: CASES[case][3] for case in CASES}
