"""A simulated ONNX model as a trainable torch module (thesis fig. 9.2, left side).

The conversion keeps the ONNX graph as it is: nodes run in graph order on a dictionary of named
tensors, so every tensor name of the model exists in the module and write-back is by name.

* **Shadow weights.** The float initializers a layer multiplies with (the ``weight`` and ``bias``
  of the layers recorded in the model's metadata, or else the weight/bias inputs of every Conv,
  ConvTranspose, Gemm and MatMul) become ``torch.nn.Parameter``\\ s; everything else is constant.
* **Constant subgraphs** (shape arithmetic such as the ResNets' option-A shortcut pads) are
  evaluated once at conversion with onnx's reference evaluator.
* **QuantizeSim nodes** become :class:`Quantizer` modules. A quantizer whose input is a shadow
  weight rounds stochastically in training mode (``weight_rounding``; ``nearest_even`` is the
  deterministic straight-through alternative) and half-to-even in eval mode; an activation
  quantizer is the identity in training (the thesis keeps layer outputs in float while
  fine-tuning) unless ``quantize_activations``, and half-to-even otherwise. Gradients pass
  straight through both.

In eval mode the module computes the simulated model (up to the order of float32 accumulation),
which the tests check against onnxruntime. Unsupported ops are reported all at once, by name.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import ModelProto, helper, numpy_helper

from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.finetune.torch_dep import require_torch
from ristretto_onnx.finetune.ops_torch import BUILDERS, STATIC_INPUTS
from ristretto_onnx.finetune.quantizers import TorchFormat, quantize_ste
from ristretto_onnx.ops import is_quantize_sim, node_format
from ristretto_onnx.passes.graph import runtime_inputs
from ristretto_onnx.passes.transforms.set_formats import restore_skipped_relus

torch = require_torch()

MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_PASS_THROUGH = ("Identity",)


class Quantizer(torch.nn.Module):
    """One ``QuantizeSim`` node: a format, and whether it quantizes a weight or an activation."""

    def __init__(self, name: str, fmt, rounding: str, is_weight: bool, owner: "OnnxModule") -> None:
        super().__init__()
        self.node_name = name
        self.tformat = TorchFormat(fmt)
        self.rounding = rounding
        self.is_weight = is_weight
        self._owner = [owner]  # a list, so the owner is not registered as a submodule (no cycle)

    def extra_repr(self) -> str:
        return f"{self.node_name!r}, {self.tformat.format}, {'weight' if self.is_weight else 'activation'}"

    def forward(self, x):
        owner = self._owner[0]
        if self.training:
            if self.is_weight:
                return quantize_ste(x, self.tformat, owner.weight_rounding, owner.generator)
            if not owner.quantize_activations:
                return x
            return quantize_ste(x, self.tformat, "nearest_even")
        return quantize_ste(x, self.tformat, self.rounding, owner.generator)


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _constant_value(node) -> np.ndarray:
    attrs = _attrs(node)
    if "value" in attrs:
        return numpy_helper.to_array(attrs["value"])
    for key, dtype in (("value_float", np.float32), ("value_int", np.int64)):
        if key in attrs:
            return np.asarray(attrs[key], dtype)
    for key, dtype in (("value_floats", np.float32), ("value_ints", np.int64)):
        if key in attrs:
            return np.asarray(list(attrs[key]), dtype)
    raise RistrettoError(f"Constant node {node.name or node.output[0]!r}: unsupported value attribute")


def trainable_names(model: ModelProto) -> list[str]:
    """Initializers that are shadow weights: the layers' weights and biases, in graph order."""
    from ristretto_onnx.passes.slots import LAYERS_KEY, get_metadata, read_layers

    floats = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    names: list[str] = []
    if get_metadata(model, LAYERS_KEY) is not None:
        for layer in read_layers(model):
            names += [n for n in (layer.weight, layer.bias) if n]
    else:
        producer = {o: n for n in model.graph.node for o in n.output}
        for node in model.graph.node:
            if node.op_type in MAC_OPS:
                for name in node.input[1:3]:
                    while name in producer and (producer[name].op_type in _PASS_THROUGH
                                                or is_quantize_sim(producer[name])):
                        name = producer[name].input[0]
                    names.append(name)
    return [n for n in dict.fromkeys(names) if n in floats]


class OnnxModule(torch.nn.Module):
    """The model's graph as a torch module; see the module docstring.

    ``forward(x)`` returns the first graph output (``logits=True``: the input of a final
    Softmax, for a cross-entropy loss). ``shadow_weights()`` returns the parameters by
    initializer name.
    """

    def __init__(self, model: ModelProto, *, quantize_activations: bool = False,
                 weight_rounding: str = "stochastic") -> None:
        super().__init__()
        # activation quantizers pass values through in training: the ReLUs a plan skipped matter
        model = restore_skipped_relus(model)
        self.quantize_activations = quantize_activations
        self.weight_rounding = weight_rounding
        self.generator = None  # a seeded CPU torch.Generator for stochastic rounding
        graph = model.graph
        inits = {t.name: t for t in graph.initializer}
        self.input_names = runtime_inputs(model)
        self.output_names = [o.name for o in graph.output]
        if not self.output_names:
            raise RistrettoError("the model has no outputs")

        self.param_names = trainable_names(model)
        self.params = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.from_numpy(numpy_helper.to_array(inits[n]).astype(np.float32).copy()))
             for n in self.param_names])
        trainable = set(self.param_names)
        static: dict[str, np.ndarray] = {n: numpy_helper.to_array(t) for n, t in inits.items()
                                         if n not in trainable}
        from_weight = set(trainable)  # tensors computed from shadow weights only
        unsupported: dict[str, int] = {}
        self.quantizers = torch.nn.ModuleList()
        nodes: list[tuple] = []
        for node in graph.node:
            if node.op_type == "Constant" and not node.domain:
                static[node.output[0]] = _constant_value(node)
                continue
            inputs = [i for i in node.input if i]
            if is_quantize_sim(node):
                fmt, rounding = node_format(node)
                source = node.input[0]
                if source in static:
                    static[node.output[0]] = TorchFormat(fmt).quantize(torch.from_numpy(
                        np.asarray(static[source], np.float32))).numpy()
                    continue
                q = Quantizer(node.name or node.output[0], fmt, rounding, source in from_weight, self)
                self.quantizers.append(q)
                if q.is_weight:
                    from_weight.add(node.output[0])
                nodes.append((q, list(node.input[:1]), list(node.output[:1])))
                continue
            if node.domain not in ("", "ai.onnx"):
                unsupported[f"{node.domain}.{node.op_type}"] = 1
                continue
            if inputs and all(i in static for i in inputs):
                self._fold(node, static)
                continue
            builder = BUILDERS.get(node.op_type)
            if builder is None:
                unsupported[node.op_type] = 1
                continue
            fn = builder(node, _attrs(node), static)
            skip = STATIC_INPUTS.get(node.op_type, ())
            ins = [("" if k in skip else i) for k, i in enumerate(node.input)]
            if node.op_type in _PASS_THROUGH and node.input[0] in from_weight:
                from_weight.add(node.output[0])
            nodes.append((fn, ins, list(node.output[:1])))
        if unsupported:
            raise RistrettoError(f"cannot fine-tune: unsupported op(s) {', '.join(sorted(unsupported))} "
                                 f"(supported: {', '.join(sorted(BUILDERS))}, QuantizeSim)")
        self._nodes = nodes
        self._param_index = {n: i for i, n in enumerate(self.param_names)}
        # Constants read at run time become buffers (they follow the module to its device).
        needed = {i for _, ins, _ in nodes for i in ins if i and i in static}
        self._buffer_names: dict[str, str] = {}
        for k, name in enumerate(sorted(needed)):
            value = np.asarray(static[name])
            tensor = torch.from_numpy(value.astype(np.float32) if value.dtype == np.float64 else value.copy())
            self.register_buffer(f"const{k}", tensor, persistent=False)
            self._buffer_names[name] = f"const{k}"
        self._static_outputs = {o: static[o] for o in self.output_names if o in static}
        produced = {o for _, _, outs in nodes for o in outs}
        self._softmax_input = None
        last = next((n for n in graph.node if self.output_names[0] in n.output), None)
        if last is not None and last.op_type == "Softmax" and last.input[0] in produced | set(self.input_names):
            self._softmax_input = last.input[0]

    def _fold(self, node, static) -> None:
        from onnx.reference import ReferenceEvaluator

        try:
            outs = ReferenceEvaluator(node).run(None, {i: static[i] for i in node.input if i})
        except Exception as e:  # noqa: BLE001 - the reference evaluator raises many types
            raise RistrettoError(f"cannot evaluate constant {node.op_type} node "
                                 f"{node.name or node.output[0]!r}: {e}") from None
        for name, value in zip(node.output, outs):
            static[name] = np.asarray(value)

    # ---- running

    def forward(self, *inputs, logits: bool = False):
        if len(inputs) != len(self.input_names):
            raise RistrettoError(f"the model takes {len(self.input_names)} input(s), got {len(inputs)}")
        env = dict(zip(self.input_names, inputs))
        for name, i in self._param_index.items():
            env[name] = self.params[i]
        for name, buf in self._buffer_names.items():
            env[name] = getattr(self, buf)
        want = self._softmax_input if logits and self._softmax_input else self.output_names[0]
        for fn, ins, outs in self._nodes:
            env[outs[0]] = fn(*[env[i] if i else None for i in ins])
            if outs[0] == want:
                return env[want]
        if want in env:
            return env[want]
        return torch.as_tensor(self._static_outputs[want])

    # ---- weights

    def shadow_weights(self) -> dict[str, np.ndarray]:
        """The shadow weights by initializer name, as float32 numpy arrays (copies)."""
        return {n: self.params[i].detach().to("cpu", torch.float32).numpy().copy()
                for n, i in self._param_index.items()}

    def load_shadow_weights(self, weights: dict[str, np.ndarray]) -> None:
        with torch.no_grad():
            for name, value in weights.items():
                p = self.params[self._param_index[name]]
                p.copy_(torch.as_tensor(value, dtype=p.dtype))


def convert(model: ModelProto | str | os.PathLike, *, quantize_activations: bool = False,
            weight_rounding: str = "stochastic") -> OnnxModule:
    """The trainable module of a (simulated) ONNX model; see the module docstring."""
    from ristretto_onnx.runtime.simulator import load_model

    return OnnxModule(load_model(model), quantize_activations=quantize_activations,
                      weight_rounding=weight_rounding)
