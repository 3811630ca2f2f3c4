"""Small ONNX graph tools behind `retina-train quantize`: fold shape arithmetic, pick nodes, make FP16,
and check a Q/DQ model against what TensorRT's explicit quantization accepts.

Workstation side (onnx, onnxruntime); the device never imports this.
"""
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

# TensorRT 8.2 (JetPack 4.6) parses ONNX opsets up to 13; Q/DQ with a per-channel axis needs 13.
OPSET = 13
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _initializer_names(model):
    return set(i.name for i in model.graph.initializer)


def prune(model):
    """Drop nodes and initializers nothing downstream of the graph outputs uses (in place)."""
    needed = set(o.name for o in model.graph.output)
    keep = []
    for node in reversed(model.graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
    del model.graph.node[:]
    model.graph.node.extend(reversed(keep))
    inits = [i for i in model.graph.initializer if i.name in needed]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    return model


def topological_sort(model):
    """Order the nodes so every input is made before it is used (the ONNX rule; TensorRT's parser reads in order)."""
    ready = set(i.name for i in model.graph.input) | _initializer_names(model) | set([""])
    pending, ordered = list(model.graph.node), []
    while pending:
        progress = [n for n in pending if all(i in ready for i in n.input)]
        if not progress:
            raise ValueError("graph has a cycle or an undefined input near node {!r}".format(pending[0].name))
        for node in progress:
            ready.update(node.output)
        ordered += progress
        done = set(id(n) for n in progress)
        pending = [n for n in pending if id(n) not in done]
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    return model


def fold_static_pads(model, input_name, input_shape):
    """Replace Pad amounts computed from the input's shape by constants; returns a new model.

    timm's TF-"same" padding makes the exporter compute each stride-2 Pad from
    Shape -> Gather -> Ceil -> ... at run time. Height and width are fixed by
    the bundle, so those amounts are constants: evaluated here at batch 1 and 3
    (they must agree, or the amounts stay computed) and stored as
    initializers; a zero constant_value is dropped. The quantizer and
    TensorRT then see Pad with constant amounts only.
    """
    folded = _drop_zero_pad_values(model)
    inits = _initializer_names(folded)
    targets = sorted(set(n.input[1] for n in folded.graph.node
                         if n.op_type == "Pad" and len(n.input) > 1 and n.input[1] and n.input[1] not in inits))
    if not targets:
        return folded
    probe = onnx.ModelProto()
    probe.CopyFrom(folded)
    for name in targets:
        probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.INT64, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    values = None
    for batch in (1, 3):
        x = np.zeros((batch,) + tuple(input_shape[1:]), dtype=np.float32)
        got = dict(zip(targets, session.run(targets, {input_name: x})))
        if values is not None and any(not np.array_equal(values[t], got[t]) for t in targets):
            return folded  # the padding depends on the batch: leave the graph alone
        values = got
    producers = set(targets)
    nodes = [n for n in folded.graph.node if not any(o in producers for o in n.output)]
    del folded.graph.node[:]
    folded.graph.node.extend(nodes)
    folded.graph.initializer.extend(numpy_helper.from_array(values[t], t) for t in targets)
    return prune(folded)


def _drop_zero_pad_values(model):
    """A copy without Pad's optional constant_value input where it is a constant 0 (the default anyway).

    Left in, the quantizer wraps that scalar in Q/DQ, and TensorRT's ONNX
    parser needs constant_value to be an initializer.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    constants = dict((i.name, numpy_helper.to_array(i)) for i in out.graph.initializer)
    for node in out.graph.node:
        if node.op_type == "Constant" and _attribute(node, "value") is not None:
            constants[node.output[0]] = numpy_helper.to_array(_attribute(node, "value"))
    for node in out.graph.node:
        if node.op_type == "Pad" and len(node.input) == 3 and node.input[2] in constants \
                and not np.any(constants[node.input[2]]):
            del node.input[2]
    return prune(out)


def _is_depthwise(node):
    return node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute)


def select_nodes(model, spec):
    """Names of the nodes a --keep-fp32 ``spec`` picks (a comma-separated list of rules).

    ``convs:N``   the first N convolutions in graph order and every node before the last of them
    ``head``      the last weighted node (the classifier that writes the logits)
    ``depthwise`` every grouped convolution
    any other     node names that start with it (names carry the PyTorch module path, e.g. /blocks/blocks.1/)
    """
    nodes = list(model.graph.node)
    chosen = []
    for rule in [r.strip() for r in (spec or "").split(",") if r.strip()]:
        if rule.startswith("convs:"):
            count = int(rule.split(":", 1)[1])
            convs = [i for i, n in enumerate(nodes) if n.op_type == "Conv"]
            if count > len(convs):
                raise ValueError("--keep-fp32 {}: the model has only {} convolutions".format(rule, len(convs)))
            chosen += [n.name for n in nodes[:convs[count - 1] + 1]] if count > 0 else []
        elif rule == "head":
            chosen += [n.name for n in nodes if n.op_type in WEIGHTED_OPS][-1:]
        elif rule == "depthwise":
            chosen += [n.name for n in nodes if _is_depthwise(n)]
        else:
            hits = [n.name for n in nodes if n.name.startswith(rule)]
            if not hits:
                raise ValueError("--keep-fp32 {!r} matches no node of the model".format(rule))
            chosen += hits
    return sorted(set(chosen), key=[n.name for n in nodes].index)


def to_fp16(model):
    """The model computing in float16 inside, with float32 input and output (Cast nodes at both ends).

    Float32 I/O keeps one bundle contract (``input.dtype`` float32) and lets one
    preprocessed input buffer feed the fp32, int8 and fp16 engines; the two
    casts cost one pass over 150k input values and 4 logits.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16
    half = topological_sort(convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False))
    onnx.checker.check_model(half)
    return half


def _attribute(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def check_explicit_int8(model):
    """Raise ValueError unless ``model`` is Q/DQ the way TensorRT's explicit quantization reads it.

    Every QuantizeLinear/DequantizeLinear is int8 with zero points 0 (symmetric);
    weights are dequantized per output channel (axis 0 for Conv); no int32 bias
    Q/DQ (TensorRT takes float biases); Pad amounts and Clip bounds constant;
    opset at most 13. Returns a summary dict.
    """
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset > OPSET:
        raise ValueError("opset {} > {}: TensorRT 8.2 cannot parse it".format(opset, OPSET))
    inits = dict((i.name, numpy_helper.to_array(i)) for i in model.graph.initializer)
    consumers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    counts = {"QuantizeLinear": 0, "DequantizeLinear": 0, "per_channel_weights": 0}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        counts[node.op_type] += 1
        if len(node.input) < 3 or node.input[2] not in inits:
            raise ValueError("{}: no constant zero point".format(node.name))
        zero = inits[node.input[2]]
        if zero.dtype != np.int8 or np.any(zero != 0):
            raise ValueError("{}: zero point must be int8 0, is {} {}".format(node.name, zero.dtype, zero.ravel()[:4]))
        scale = inits.get(node.input[1])
        if scale is None or np.any(scale <= 0):
            raise ValueError("{}: scale must be a positive constant".format(node.name))
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            weight = inits[node.input[0]]
            if weight.dtype != np.int8:
                raise ValueError("{}: weight stored as {}, TensorRT needs int8".format(node.name, weight.dtype))
            users = consumers.get(node.output[0], [])
            if any(u.op_type == "Conv" for u in users):
                if scale.size != weight.shape[0] or _attribute(node, "axis", 1) != 0:
                    raise ValueError("{}: Conv weights must be per output channel (axis 0)".format(node.name))
                counts["per_channel_weights"] += 1
    made_by = dict((o, n.op_type) for n in model.graph.node for o in n.output)
    for node in model.graph.node:
        if node.op_type in ("Pad", "Clip") and any(made_by.get(i) == "DequantizeLinear" for i in node.input[1:]):
            raise ValueError("{}: {} parameters come through Q/DQ; TensorRT needs them constant".format(
                node.name, node.op_type))
    if not counts["DequantizeLinear"]:
        raise ValueError("no Q/DQ nodes: the model is not quantized")
    return counts
