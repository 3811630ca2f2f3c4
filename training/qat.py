"""Quantization-aware fine-tuning of a Q/DQ ONNX model, starting from the bundle alone.

The student's PyTorch checkpoint does not travel with a bundle, but its ONNX
graph holds every weight (batch norm already folded into the convolutions).
``OnnxNet`` runs that graph in PyTorch: DequantizeLinear of a weight becomes a
trainable float weight fake-quantized per output channel, and each activation
QuantizeLinear -> DequantizeLinear pair a fake quantizer with the calibrated
scale (straight-through gradients). Fine-tuning matches the fp32 model's
logits on training images (self-distillation: no labels, so nothing is fitted
to the labels of any split), and ``write_back`` stores the new int8 weights,
scales and float biases in the same Q/DQ graph, so its layout (and what
TensorRT reads from it) does not change.

Covers the operators of convolutional classifiers (Conv, Clip/Relu, Pad, Add,
Mul, global average pooling, Flatten, Gemm/MatMul); any other operator is
refused by name.
"""
import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import nn

from training import engine

INT8_MIN, INT8_MAX = -128, 127


def _attrs(node):
    return dict((a.name, helper.get_attribute_value(a)) for a in node.attribute)


def fake_quant(x, scale, low=INT8_MIN, high=INT8_MAX):
    """round(x / scale) clamped to int8, times scale; the gradient passes straight through."""
    q = torch.clamp(torch.round(x / scale), low, high) * scale
    return x + (q - x).detach()


def weight_scale(w, axis=None):
    """Symmetric int8 scale of a weight: per channel along ``axis`` (shaped to broadcast), or one for all."""
    w = w.detach().abs()
    if axis is None:
        return torch.clamp(w.max(), min=1e-12) / INT8_MAX
    dims = [d for d in range(w.ndim) if d != axis]
    return torch.clamp(w.amax(dim=dims, keepdim=True), min=1e-12) / INT8_MAX


class OnnxNet(nn.Module):
    """A Q/DQ (or plain float) ONNX classifier run by PyTorch; float initializers are parameters."""

    OPS = ("Conv", "Clip", "Relu", "Pad", "Add", "Mul", "GlobalAveragePool", "ReduceMean", "Flatten", "Gemm", "MatMul",
           "QuantizeLinear", "DequantizeLinear", "Constant")

    def __init__(self, model, input_name, output_name):
        super().__init__()
        self.nodes = list(model.graph.node)
        unknown = sorted(set(n.op_type for n in self.nodes) - set(self.OPS))
        if unknown:
            raise ValueError("quantization-aware fine-tuning does not cover operator(s) {}".format(unknown))
        self.input_name, self.output_name = input_name, output_name
        self.params = nn.ParameterDict()
        self.names = {}  # initializer name -> key in self.params
        self.consts = {}
        self.weight_dq = {}  # DequantizeLinear output -> (initializer name of its trainable weight, axis or None)
        inits = dict((i.name, numpy_helper.to_array(i)) for i in model.graph.initializer)
        for node in self.nodes:
            if node.op_type == "DequantizeLinear" and node.input[0] in inits:
                q = inits[node.input[0]].astype(np.float32)
                scale = inits[node.input[1]].astype(np.float32)
                axis = _attrs(node).get("axis", 1)
                shape = [1] * q.ndim
                if scale.ndim:
                    shape[axis] = -1
                self._param(node.input[0], q * scale.reshape(shape))
                self.weight_dq[node.output[0]] = (node.input[0], axis if scale.ndim else None)
        quant_params = set(i for n in self.nodes if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                           for i in n.input[1:])  # scales and zero points: fixed, or recomputed from the weight
        for name, value in inits.items():
            if name in self.names:
                continue
            if value.dtype == np.float32 and value.ndim >= 1 and value.size > 1 and name not in quant_params:
                self._param(name, value)
            else:
                self.consts[name] = torch.from_numpy(np.array(value))
        for node in self.nodes:
            if node.op_type == "Constant":
                self.consts[node.output[0]] = torch.from_numpy(np.array(numpy_helper.to_array(_attrs(node)["value"])))

    def _param(self, name, value):
        key = "p{}".format(len(self.names))
        self.names[name] = key
        self.params[key] = nn.Parameter(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))

    def value(self, env, name):
        if name in env:
            return env[name]
        if name in self.names:
            return self.params[self.names[name]]
        return self.consts[name]

    def forward(self, x):
        env = {self.input_name: x}
        for node in self.nodes:
            if node.op_type == "Constant":
                continue
            out = self._run(node, env)
            env[node.output[0]] = out
        return env[self.output_name]

    def _run(self, node, env):
        op, a = node.op_type, _attrs(node)
        args = [self.value(env, n) if n else None for n in node.input]
        if op == "DequantizeLinear" and node.output[0] in self.weight_dq:
            return fake_quant(args[0], weight_scale(args[0], self.weight_dq[node.output[0]][1]))
        if op == "QuantizeLinear":
            return fake_quant(args[0], args[1].float())  # zero points are 0 (checked before export)
        if op == "DequantizeLinear":
            return args[0]  # already dequantized by the fake quantizer above
        return _FLOAT_OPS[op](args, a)

    def write_back(self, model):
        """A copy of ``model`` with this module's weights (re-quantized) and float parameters."""
        out = onnx.ModelProto()
        out.CopyFrom(model)
        inits = dict((i.name, i) for i in out.graph.initializer)
        scales = {}
        for node in out.graph.node:
            if node.op_type == "DequantizeLinear" and node.output[0] in self.weight_dq:
                scales[node.input[0]] = (node.input[1], self.weight_dq[node.output[0]][1])
        for name, key in self.names.items():
            w = self.params[key].detach()
            if name in scales:
                scale_name, axis = scales[name]
                scale = weight_scale(w, axis)
                q = torch.clamp(torch.round(w / scale), -INT8_MAX, INT8_MAX).to(torch.int8)
                inits[name].CopyFrom(numpy_helper.from_array(q.numpy(), name))
                flat = scale.reshape(-1) if axis is not None else scale.reshape(())
                inits[scale_name].CopyFrom(numpy_helper.from_array(flat.numpy().astype(np.float32), scale_name))
            else:
                inits[name].CopyFrom(numpy_helper.from_array(w.numpy().astype(np.float32), name))
        return out


def _conv(args, a):
    x, w = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    pads = a.get("pads", [0] * 2 * (w.ndim - 2))
    half = len(pads) // 2
    if list(pads[:half]) != list(pads[half:]):
        x = F.pad(x, [p for i in reversed(range(half)) for p in (pads[i], pads[i + half])])
        pads = [0] * len(pads)
    return F.conv2d(x, w, bias, stride=a.get("strides", 1), padding=list(pads[:half]),
                    dilation=a.get("dilations", 1), groups=a.get("group", 1))


def _pad(args, a):
    pads = [int(p) for p in args[1]]
    half = len(pads) // 2
    if a.get("mode", b"constant") not in (b"constant", "constant"):
        raise ValueError("only constant padding is covered")
    value = float(args[2]) if len(args) > 2 and args[2] is not None else 0.0
    return F.pad(args[0], [p for i in reversed(range(half)) for p in (pads[i], pads[i + half])], value=value)


def _gemm(args, a):
    x, w = args[0], args[1]
    w = w.t() if a.get("transB", 0) else w
    y = a.get("alpha", 1.0) * (x.t() if a.get("transA", 0) else x) @ w
    return y + a.get("beta", 1.0) * args[2] if len(args) > 2 and args[2] is not None else y


_FLOAT_OPS = {
    "Conv": _conv,
    "Clip": lambda args, a: torch.clamp(args[0], float(args[1]) if len(args) > 1 and args[1] is not None else None,
                                        float(args[2]) if len(args) > 2 and args[2] is not None else None),
    "Relu": lambda args, a: F.relu(args[0]),
    "Pad": _pad,
    "Add": lambda args, a: args[0] + args[1],
    "Mul": lambda args, a: args[0] * args[1],
    "GlobalAveragePool": lambda args, a: args[0].mean(dim=(2, 3), keepdim=True),
    "ReduceMean": lambda args, a: args[0].mean(dim=tuple(a["axes"]), keepdim=bool(a.get("keepdims", 1))),
    "Flatten": lambda args, a: torch.flatten(args[0], a.get("axis", 1)),
    "Gemm": _gemm,
    "MatMul": lambda args, a: args[0] @ args[1],
}


class MatchLogits(nn.Module):
    """The fine-tuning task: the Q/DQ network's logits should equal the frozen fp32 network's."""

    def __init__(self, student, teacher, mean, std):
        super().__init__()
        self.net, self.teacher, self.norm = student, teacher, engine.Normalize(mean, std)
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def forward(self, views, y):
        x = self.norm(views)
        with torch.no_grad():
            target = self.teacher(x)
        logits = self.net(x)
        loss = F.mse_loss(logits, target)
        return {"loss": loss, "logits": logits.detach()}


def finetune(qdq_model, fp32_model, input_name, output_name, images, spec, epochs=1, lr=1e-5, batch_size=32,
             seed=0, log=print):
    """Fine-tune the Q/DQ model's weights to match fp32 on ``images`` (prepared uint8); returns the new model."""
    torch.manual_seed(seed)
    student = OnnxNet(qdq_model, input_name, output_name)
    teacher = OnnxNet(fp32_model, input_name, output_name).eval()
    task = MatchLogits(student, teacher, spec["mean"], spec["std"])
    engine.fit(task, images, np.zeros(len(images), dtype=np.int64), epochs, batch_size=batch_size, lr=lr,
               weight_decay=0.0, seed=seed, log=log)
    return student.write_back(qdq_model)
