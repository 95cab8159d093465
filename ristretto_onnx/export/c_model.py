"""``--to c``: the C99 golden model of a dynamic fixed point network (thesis 9.7.3).

The thesis plans "automatic generation of the C-code of a condensed network ... as well as a dump
of the extracted low-precision parameters" for HLS flows that start from a C implementation.
This renders the integer program of :mod:`.int_program` (the same one the ONNX integer model
renders, so both compute identical integers) as:

* ``ristretto_model.h``: sizes, the prototype, and under ``RISTRETTO_MODEL_DATA`` every layer's
  integer weights (int8 up to 8 bits, int16 up to 16), biases in the accumulator's fixed point,
  the re-quantization factors (``L``, ``D``: shifts) and the fractional lengths as comments;
* ``ristretto_model.c``: the integer kernels (``c_templates/ristretto_kernels.c``) and
  ``ristretto_forward``, one kernel call per step on static buffers sized at export time;
* ``main.c``: ``ristretto_model IN.bin OUT.bin`` over N little-endian float32 samples;
* ``Makefile``: ``make -C OUTDIR`` with ``gcc -std=c99 -O2 -Wall -Wextra -Werror``.

Supported: one float input and output; conv (grouped, depthwise), fc, relu, relu6 (clip), max,
average and global pools, residual add, concat, flatten/reshape, slice and zero pad. Anything
the integer program keeps in float is an error here.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np
import onnx

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.export.int_lower import lower
from ristretto_onnx.export.int_program import Program, Step, Tensor

_INT32 = (-(2**31), 2**31 - 1)
_TEMPLATES = ("ristretto_kernels.c", "main.c", "Makefile")


def _template(name: str) -> str:
    return resources.files("ristretto_onnx.export").joinpath("c_templates", name).read_text()


def _c_array(ctype: str, name: str, values, comment: str = "") -> str:
    flat = np.asarray(values).reshape(-1)
    if ctype == "double":
        items = [float(v).hex() for v in flat]
    else:
        items = [str(int(v)) + ("LL" if ctype == "int64_t" else "") for v in flat]
    lines = [", ".join(items[i:i + 16]) for i in range(0, len(items), 16)]
    body = ",\n    ".join(lines)
    note = f"/* {comment} */\n" if comment else ""
    return f"{note}static const {ctype} {name}[{max(len(items), 1)}] = {{\n    {body or '0'}\n}};\n"


class _CGen:
    def __init__(self, program: Program) -> None:
        self.p = program
        self.data: list[str] = []
        self.buffers: list[str] = []
        self.code: list[str] = []
        self.cname: dict[str, str] = {}
        self.types: dict[str, str] = {}
        self.scratch = 0  # the int32 accumulator plane of the largest convolution output
        self._n = 0

    def ident(self, stem: str) -> str:
        self._n += 1
        return f"rm_{re.sub(r'[^0-9A-Za-z]+', '_', stem).strip('_')[:40]}_{self._n}"

    def buf(self, t: Tensor) -> str:
        if t.name not in self.cname:
            ctype = "int64_t" if t.acc or not t.fits(*_INT32) else "int32_t"
            name = self.ident("t")
            self.buffers.append(f"static {ctype} {name}[{max(t.size, 1)}]; /* {t.name}: FL {_frac(t)} */")
            self.cname[t.name], self.types[t.name] = name, ctype
        return self.cname[t.name]

    def const(self, ctype: str, stem: str, values, comment: str = "") -> str:
        name = self.ident(stem)
        self.data.append(_c_array(ctype, name, values, comment))
        return name

    def int32_input(self, s: Step, t: Tensor) -> str:
        name = self.buf(t)
        if self.types[t.name] != "int32_t":
            raise RistrettoError(f"C golden model: node {s.node!r} ({s.kind}) reads a 64-bit "
                                 "accumulator; quantize the layer's outputs first")
        return name

    def out32(self, s: Step, t: Tensor) -> str:
        if not t.fits(*_INT32) or t.acc:
            raise RistrettoError(f"C golden model: node {s.node!r} ({s.kind}) needs more than 32 bits")
        return self.buf(t)


def _frac(t: Tensor) -> str:
    f = np.unique(t.frac)
    return str(int(f[0])) if len(f) == 1 else "per channel " + ",".join(str(int(v)) for v in t.frac)


def _chan(t: Tensor, arr) -> tuple[int, int]:
    """``(inner, nch)`` for a per-channel array along per-sample axis 0."""
    n = int(np.asarray(arr).size)
    inner = t.size // t.shape[0] if t.shape and n > 1 else 1
    return inner, (n if n > 1 else 1)


def _dims3(shape) -> list[int]:
    return [1] * (3 - len(shape)) + list(shape)


def _emit(g: _CGen, s: Step) -> None:
    t = g.p.tensors
    x = t.get(s.inputs[0]) if s.inputs else None
    out = t.get(s.output)
    a = s.attrs
    label = s.node or s.kind
    if s.kind == "quantize":
        g.code.append(f"rm_quantize(in, {g.out32(s, out)}, {out.size}, {a['frac']}, {a['lo']}, {a['hi']});")
    elif s.kind in ("conv", "fc"):
        xin = g.int32_input(s, x)
        w = a["w"]
        wt = "int8_t" if w.min() >= -128 and w.max() <= 127 else "int16_t"
        suf = "w8" if wt == "int8_t" else "w16"
        wn = g.const(wt, f"w_{label}", w, f"{label}: weights {w.shape} ({a['w_bits']} bits)")
        bn = g.const("int64_t", f"b_{label}", a["bias"], f"{label}: bias at FL {_frac(out)} "
                     f"(guard bits {a['guard']})")
        y = g.buf(out)
        if s.kind == "conv":
            c, h, wd = x.shape
            m, oh, ow = out.shape
            k, st, p, d = a["kernel"], a["strides"], a["pads"], a["dilations"]
            g.code.append(f"rm_conv_{suf}({xin}, {c}, {h}, {wd}, {wn}, {m}, {k[0]}, {k[1]}, {st[0]}, {st[1]}, "
                          f"{p[0]}, {p[1]}, {d[0]}, {d[1]}, {a['group']}, {oh}, {ow}, {bn}, {a['guard']}, rm_acc, {y});")
            g.scratch = max(g.scratch, oh * ow)
        else:
            g.code.append(f"rm_fc_{suf}({xin}, {x.shape[0]}, {wn}, {out.shape[0]}, {bn}, {a['guard']}, {y});")
    elif s.kind == "requant":
        xin = g.buf(x)
        inner, nch = _chan(x, a["L"])
        shifts = np.log2(a["D"].astype(np.float64)) - np.log2(a["L"].astype(np.float64))
        ln = g.const("int64_t", f"L_{label}", a["L"], f"{label}: FL {_frac(x)} -> {_frac(out)}")
        dn = g.const("int64_t", f"D_{label}", a["D"], "right shifts " + ",".join(f"{v:g}" for v in np.ravel(shifts)))
        suf = "_64" if g.types[x.name] == "int64_t" else "_32"
        g.code.append(f"rm_requant{suf}({xin}, {g.out32(s, out)}, {x.size}, {inner}, {nch}, {ln}, {dn}, "
                      f"{a['lo']}, {a['hi']});")
    elif s.kind == "relu":
        g.code.append(f"rm_relu({g.int32_input(s, x)}, {g.out32(s, out)}, {x.size});")
    elif s.kind == "clip":
        g.code.append(f"rm_clip({g.int32_input(s, x)}, {g.out32(s, out)}, {x.size}, {a['lo']}, {a['hi']});")
    elif s.kind in ("maxpool", "sumpool"):
        c, h, w = x.shape
        _, oh, ow = out.shape
        k, st, p = a["kernel"], a["strides"], a["pads"]
        g.code.append(f"rm_pool({g.int32_input(s, x)}, {g.out32(s, out)}, {c}, {h}, {w}, {k[0]}, {k[1]}, "
                      f"{st[0]}, {st[1]}, {p[0]}, {p[1]}, {oh}, {ow}, {int(s.kind == 'maxpool')});")
    elif s.kind == "add":
        b = t[s.inputs[1]]
        g.code.append(f"rm_add({g.int32_input(s, x)}, {a['la']}, {g.int32_input(s, b)}, {a['lb']}, "
                      f"{g.out32(s, out)}, {out.size});")
    elif s.kind == "addconst":
        xin = g.buf(x)
        y = g.buf(out)
        if g.types[x.name] != g.types[out.name]:
            raise RistrettoError(f"C golden model: node {s.node!r}: the constant add changes the width")
        inner, nch = _chan(x, a["c"])
        kn = g.const("int64_t", f"k_{label}", a["c"], f"{label}: constant at FL {_frac(x)}")
        suf = "_64" if g.types[x.name] == "int64_t" else "_32"
        g.code.append(f"rm_addconst{suf}({xin}, {y}, {x.size}, {inner}, {nch}, {kn});")
    elif s.kind == "concat":
        y = g.out32(s, out)
        axis = a["axis"]
        outer = int(np.prod(out.shape[:axis], dtype=np.int64))
        stride = int(np.prod(out.shape[axis:], dtype=np.int64))
        g.code.append("{")
        g.code.append(f"    int32_t *dst = {y};")
        for name, mult in zip(s.inputs, a["mults"]):
            xi = t[name]
            chunk = int(np.prod(xi.shape[axis:], dtype=np.int64))
            g.code.append(f"    dst = rm_concat_part({g.int32_input(s, xi)}, {mult}, {outer}, {chunk}, dst, {stride});")
        g.code.append("}")
    elif s.kind == "reshape":
        g.buf(x)
        g.cname[out.name], g.types[out.name] = g.cname[x.name], g.types[x.name]
    elif s.kind == "slice":
        d, o = _dims3(x.shape), _dims3(out.shape)
        st = [0] * (3 - len(x.shape)) + list(a["start"])
        sp = [1] * (3 - len(x.shape)) + list(a["step"])
        g.code.append(f"rm_slice({g.int32_input(s, x)}, {d[1]}, {d[2]}, {g.out32(s, out)}, {o[0]}, {o[1]}, {o[2]}, "
                      f"{st[0]}, {st[1]}, {st[2]}, {sp[0]}, {sp[1]}, {sp[2]});")
    elif s.kind == "pad":
        d, o = _dims3(x.shape), _dims3(out.shape)
        b = [0] * (3 - len(x.shape)) + list(a["begin"])
        g.code.append(f"rm_pad({g.int32_input(s, x)}, {d[0]}, {d[1]}, {d[2]}, {g.out32(s, out)}, {o[0]}, {o[1]}, "
                      f"{o[2]}, {b[0]}, {b[1]}, {b[2]});")
    elif s.kind == "dequantize":
        xin = g.buf(x)
        inner, nch = _chan(x, a["scale"])
        sn = g.const("double", f"scale_{label}", a["scale"], f"output: 2^-FL ({_frac(x)})")
        suf = "_64" if g.types[x.name] == "int64_t" else "_32"
        g.code.append(f"rm_dequantize{suf}({xin}, out, {x.size}, {inner}, {nch}, {sn}, {float(a['div']).hex()});")
    else:
        raise RistrettoError(f"C golden model: node {s.node!r} ({s.kind}) has no integer form in C; "
                             "supported: conv, fc, relu, clip, pools, add, concat, reshape, slice, pad")


def render_c(program: Program, source: str = "model") -> dict[str, str]:
    """The four files of the golden model as text, by file name."""
    if len(program.output_names) != 1:
        raise RistrettoError(f"C golden model: the model has {len(program.output_names)} outputs; one is supported")
    if program.input_shape is None:
        raise RistrettoError("C golden model: the input's per-sample shape is not static")
    dq = [s for s in program.steps if s.kind == "dequantize"]
    if len(dq) != 1 or dq[0].output != program.output_names[0] or program.steps[-1] is not dq[0]:
        bad = next((s for s in program.steps if s.kind == "float"), None)
        where = f" (node {bad.node!r} stays in float)" if bad else ""
        raise RistrettoError(f"C golden model: the output must come from the integer data path{where}")
    g = _CGen(program)
    for s in program.steps:
        _emit(g, s)
    in_size = int(np.prod(program.input_shape, dtype=np.int64))
    out_size = program.tensors[dq[0].inputs[0]].size
    guard = "RISTRETTO_MODEL_H"
    header = "\n".join([
        f"/* Golden model of {source}: integer weights and shifts (generated by ristretto-onnx). */",
        f"#ifndef {guard}", f"#define {guard}", "", "#include <stdint.h>", "",
        f"#define RM_INPUT_SIZE {in_size} /* per sample: {' x '.join(map(str, program.input_shape))} float32 */",
        f"#define RM_OUTPUT_SIZE {out_size}", "",
        "/* one sample: RM_INPUT_SIZE floats in the ONNX input layout -> RM_OUTPUT_SIZE floats */",
        "void ristretto_forward(const float *in, float *out);", "",
        "#ifdef RISTRETTO_MODEL_DATA", *g.data, "#endif /* RISTRETTO_MODEL_DATA */", "",
        f"#endif /* {guard} */", ""])
    model_c = "\n".join([
        f"/* Golden model of {source} (generated by ristretto-onnx): the integer data path. */",
        "#define RISTRETTO_MODEL_DATA", '#include "ristretto_model.h"', "",
        _template("ristretto_kernels.c"), "/* activations and accumulators: static, sized at export time */",
        *g.buffers, *([f"static int32_t rm_acc[{g.scratch}]; /* a convolution's int32 accumulators */"]
                      if g.scratch else []),
        "", "void ristretto_forward(const float *in, float *out)", "{",
        *("    " + line for line in g.code), "}", ""])
    return {"ristretto_model.h": header, "ristretto_model.c": model_c,
            "main.c": _template("main.c"), "Makefile": _template("Makefile")}


def export_c(sim: onnx.ModelProto, outdir: Path, *, exact_bias: bool = True) -> None:
    """Write the golden model of ``sim`` into ``outdir``.

    A new folder appears complete (written next to it, then renamed); in an existing folder the
    four files are replaced one by one, each atomically.
    """
    files = render_c(lower(sim, exact_bias=exact_bias), sim.graph.name or "model")
    outdir = Path(outdir)
    try:
        if outdir.exists():
            for name, text in files.items():
                _write_atomic(outdir, name, text)
            return
        tmp = Path(tempfile.mkdtemp(dir=outdir.parent, prefix=f".{outdir.name}.", suffix=".tmp"))
        try:
            for name, text in files.items():
                (tmp / name).write_text(text)
            tmp.chmod(0o777 & ~_umask())
            os.rename(tmp, outdir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except OSError as e:
        raise RistrettoError(f"cannot write the C model to {outdir}: {e.strerror or e}") from None


def _write_atomic(folder: Path, name: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, folder / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
