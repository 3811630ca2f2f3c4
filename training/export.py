"""Export a checkpoint to ONNX (opset 13, what TensorRT 8.2 parses), prove parity
with PyTorch through ONNX Runtime, and write a model bundle."""
import io
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import torch

from edge.io.sources import list_images
from edge.preprocess import preprocess
from models.bundle import load_bundle, write_bundle, write_explain
from training import data as datalib, modelcard
from training.inputs import channels_of
from training.provenance import command_line, git_commit, with_split_command
from training.runs import load_checkpoint, run_split

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
FEATURES_NAME = "features"


class ParityError(ValueError):
    """ONNX Runtime and PyTorch disagree by more than the tolerance (a ValueError: the CLI says it in one line)."""


def to_onnx(net, image_size, opset=13, channels=3):
    """Serialised ONNX of ``net`` (``channels`` input channels: 3, or 1 for GREY) with a dynamic batch axis."""
    net = net.eval().to(memory_format=torch.contiguous_format)
    dummy = torch.zeros(1, channels, image_size, image_size)
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(net, dummy, buf, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}},
                          do_constant_folding=True, dynamo=False)
    model = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(model)
    return buf.getvalue()


def parity(net, onnx_bytes, batch):
    """(max |logit difference| between PyTorch and ONNX Runtime (CPU) on ``batch``, max |logit|)."""
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = net(torch.from_numpy(batch)).numpy()
    got = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
    return float(np.abs(expected - got).max()), float(np.abs(expected).max())


def parity_images(folder, samples, spec, count=32):
    """Real images for the parity check: a folder given by the user, else the run's test split."""
    if folder:
        paths = list_images(folder)[:count]
    else:
        paths = [s.path for s in samples if s.split == "test"][:count] or [s.path for s in samples][:count]
    if not paths:
        raise ValueError("no images for the parity check; pass --parity-images FOLDER")
    return np.concatenate([preprocess(datalib.read_sample(p), spec) for p in paths])


def write_split_listing(samples, bundle_dir):
    """Copy the run's split into the bundle as split.csv, paths relative to the image root.

    With it anyone holding the same data can rerun the held-out evaluation the
    manifest's metrics come from.
    """
    if not samples:
        return None
    root = os.path.commonpath([os.path.abspath(s.path) for s in samples])
    out = os.path.join(bundle_dir, "split.csv")
    datalib.write_manifest(samples, out, relative_to=root)
    return out


def modality_of(ckpt):
    """The run's modality; checkpoints from before retina-train recorded one are fundus runs."""
    return ckpt.get("modality") or ckpt.get("config", {}).get("modality") or "fundus"


def default_name(ckpt):
    """fundus4-<architecture> for fundus runs (the data set they were made on), oct-<architecture> for OCT."""
    return "{}-{}".format("fundus4" if modality_of(ckpt) == "fundus" else "oct", ckpt["arch"])


def build_manifest(name, ckpt, max_abs_diff, n_parity, opset, n_params):
    spec = ckpt["spec"]
    size = spec["resize"]["size"]
    metrics = {k: v for k, v in ckpt["metrics"].items()}
    metrics["onnx_parity"] = {"max_abs_logit_diff": max_abs_diff, "images": n_parity, "runtime": "onnxruntime "
                              + ort.__version__ + " CPU", "precision": "fp32"}
    return {
        "name": name,
        "task": "classification",
        # what the run trained on (retina-train --modality, or decided from the data); edge skips other modalities
        "modality": modality_of(ckpt),
        "labels": list(ckpt["labels"]),
        "model": {"opset": opset, "architecture": ckpt["arch"], "parameters": n_params},
        "input": {"name": INPUT_NAME, "shape": [1, channels_of(spec), size[0], size[1]], "dtype": "float32",
                  "layout": "NCHW", "dynamic_batch": True},
        "outputs": [{"name": OUTPUT_NAME, "shape": ["N", len(ckpt["labels"])], "kind": "logits"}],
        "preprocess": spec,
        "postprocess": {"activation": "softmax", "temperature": 1.0},
        "provenance": {"commands": with_split_command(ckpt["commands"], ckpt["config"]["data"]) + [command_line()],
                       "data": ckpt["data"],
                       "commit": git_commit(), "weights": ckpt.get("weights", "")},
        "metrics": metrics,
    }


def export_bundle(args, log=print):
    net, ckpt = load_checkpoint(args.checkpoint)
    size = ckpt["spec"]["resize"]["size"][0]
    onnx_bytes = to_onnx(net, size, args.opset, channels_of(ckpt["spec"]))
    samples = run_split(args.checkpoint)
    batch = parity_images(args.parity_images, samples, ckpt["spec"])
    max_diff, max_logit = parity(net, onnx_bytes, batch)
    # float32 rounding grows with the logits' size: a network with logits near 20 (a short run on easy data)
    # differs by ~1e-3 between two correct runtimes, so the tolerance scales with max(1, max |logit|)
    allowed = args.tolerance * max(1.0, max_logit)
    log("parity on {} real images: max |delta logit| = {:.3g} (allowed {:.3g}: tolerance {:g} x max(1, max "
        "|logit| {:.3g}))".format(len(batch), max_diff, allowed, args.tolerance, max_logit))
    if not max_diff <= allowed:
        raise ParityError("ONNX Runtime differs from PyTorch by {:.3g} > {:.3g}; bundle not written".format(
            max_diff, allowed))
    name = args.name or default_name(ckpt)
    n_params = int(sum(p.numel() for p in net.parameters()))
    manifest = build_manifest(name, ckpt, max_diff, len(batch), args.opset, n_params)
    bundle = write_bundle(args.out, onnx_bytes, manifest)
    write_split_listing(samples, args.out)
    modelcard.write(args.out, bundle.manifest)
    log("wrote bundle {} ({}, {:.1f} MB, sha256 {})".format(args.out, bundle.manifest["modality"],
                                                            len(onnx_bytes) / 1e6,
                                                            bundle.manifest["model"]["sha256"][:16]))
    precisions = [p.strip() for p in getattr(args, "variants", "").split(",") if p.strip()]
    if precisions:
        from training import quantize
        bundle = quantize.quantize_bundle(args.out, samples, precisions=precisions, log=log)
    return bundle


# -- the device's explanation model: model.onnx with its last feature map as a second output --------------

class FeatureMapError(ValueError):
    """The graph does not end in global average pooling -> linear, so it has no class activation map."""


def _attributes(node):
    return dict((a.name, onnx.helper.get_attribute_value(a)) for a in node.attribute)


def _pooled_input(node, rank4):
    """The tensor a global-average-pool node averages, or None if ``node`` is not one."""
    if node.op_type == "GlobalAveragePool":
        return node.input[0]
    axes = _attributes(node).get("axes")  # an attribute up to opset 17 (what we export: 13)
    if node.op_type == "ReduceMean" and axes is not None and sorted(a % rank4 for a in axes) == [2, 3]:
        return node.input[0]
    return None


def feature_map_model(model):
    """(model with a second output ``features``, weight [classes, C], bias [classes]) for a classifier ONNX.

    The graph must end in global average pooling (GlobalAveragePool or ReduceMean over H, W), an
    optional Flatten, and a Gemm giving the logits: then logits = W . mean_hw(F) + b, so the class
    activation map W[k] . F is what the network averages into logit k. The new output is an Identity
    of the pooled tensor; nothing else in the graph changes, so the logits do not either.
    """
    graph = model.graph
    logits = graph.output[0].name
    producers = dict((out, n) for n in graph.node for out in n.output)
    gemm = producers.get(logits)
    attrs = _attributes(gemm) if gemm is not None else {}
    if gemm is None or gemm.op_type != "Gemm" or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 \
            or attrs.get("beta", 1.0) != 1.0:
        raise FeatureMapError("output {!r} is not made by a plain Gemm (got {}); no class activation map".format(
            logits, gemm.op_type if gemm is not None else "a graph input"))
    node = producers.get(gemm.input[0])
    if node is not None and node.op_type == "Flatten":
        node = producers.get(node.input[0])
    feature = _pooled_input(node, 4) if node is not None else None
    if feature is None:
        raise FeatureMapError("the classifier's input is not a global average pool (got {}); no class "
                              "activation map".format(node.op_type if node is not None else "a graph input"))
    inits = dict((i.name, onnx.numpy_helper.to_array(i)) for i in graph.initializer)
    if gemm.input[1] not in inits:
        raise FeatureMapError("the classifier's weight {!r} is not a constant".format(gemm.input[1]))
    weight = inits[gemm.input[1]].astype(np.float32)
    weight = weight if attrs.get("transB", 0) else weight.T
    bias = (inits[gemm.input[2]] if len(gemm.input) > 2 and gemm.input[2] else np.zeros(weight.shape[0]))
    bias = np.broadcast_to(np.asarray(bias, np.float32).reshape(-1), (weight.shape[0],)).copy()
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.node.append(onnx.helper.make_node("Identity", [feature], [FEATURES_NAME], name="features_output"))
    shape = _inferred_shape(model, feature) or [0, int(weight.shape[1]), 0, 0]
    dims = ["N"] + [d if isinstance(d, int) and d > 0 else name for d, name in zip(shape[1:], "Chw")]
    out.graph.output.append(onnx.helper.make_tensor_value_info(FEATURES_NAME, onnx.TensorProto.FLOAT, dims))
    onnx.checker.check_model(out)
    return out, weight, bias


def _inferred_shape(model, name):
    inferred = onnx.shape_inference.infer_shapes(model)
    for info in list(inferred.graph.value_info) + list(inferred.graph.output):
        if info.name == name:
            dims = info.type.tensor_type.shape.dim
            return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
    return None


def classifier_json(weight, bias, labels):
    """The classifier weights as JSON bytes (float32 values written exactly); a JSON file because the device
    has no onnx package to read them from the model's initializers, and the package ships default/*.json."""
    record = {"labels": list(labels), "layout": "weight [classes, C], bias [classes]",
              "weight": [[float(v) for v in row] for row in weight.astype(np.float32)],
              "bias": [float(v) for v in bias.astype(np.float32)]}
    return (json.dumps(record) + "\n").encode("utf-8")


def spread(paths, count):
    """``count`` paths spread evenly over ``paths`` (a folder of class folders lists one class first)."""
    if len(paths) <= count:
        return list(paths)
    step = len(paths) / float(count)
    return [paths[int(i * step)] for i in range(count)]


def explain_parity(model_path, cam_bytes, weight, bias, batch):
    """Max |logit difference| of the feature-map model against model.onnx, and of W . mean(F) + b against
    its own logits (the classifier file is the one the network uses)."""
    plain = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    cam = ort.InferenceSession(cam_bytes, providers=["CPUExecutionProvider"])
    expected = plain.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
    logits, features = cam.run([OUTPUT_NAME, FEATURES_NAME], {INPUT_NAME: batch})
    pooled = features.astype(np.float64).mean(axis=(2, 3))
    rebuilt = pooled @ weight.astype(np.float64).T + bias
    return float(np.abs(expected - logits).max()), float(np.abs(rebuilt - logits).max()), list(features.shape[1:])


def add_explain(bundle_dir, parity_folder, count=64, tolerance=1e-5, log=print):
    """Write model.cam.onnx and classifier.json into the bundle and its ``explain`` entry; model.onnx, the
    variants and the calibration fields are left as they are. Refuses if the logits moved by > tolerance."""
    bundle = load_bundle(bundle_dir)
    if bundle.output_names[0] != OUTPUT_NAME or bundle.input_name != INPUT_NAME:
        raise FeatureMapError("{}: expected input {!r} and output {!r}".format(bundle_dir, INPUT_NAME, OUTPUT_NAME))
    model, weight, bias = feature_map_model(onnx.load(bundle.onnx_path))
    cam_bytes = model.SerializeToString()
    paths = spread(list_images(parity_folder), count)
    if not paths:
        raise ValueError("{}: no images for the parity check".format(parity_folder))
    batch = np.concatenate([preprocess(datalib.read_sample(p), bundle.preprocess) for p in paths])
    logit_diff, classifier_diff, feature_shape = explain_parity(bundle.onnx_path, cam_bytes, weight, bias, batch)
    log("feature-map model on {} real images: max |delta logit| = {:.3g} against model.onnx, {:.3g} for "
        "W . mean(F) + b (tolerance {:g})".format(len(batch), logit_diff, classifier_diff, tolerance))
    if not (logit_diff <= tolerance and classifier_diff <= 1e-3):
        raise ParityError("the feature-map model changes the logits (or the classifier weights do not "
                          "rebuild them); bundle not changed")
    entry = {"method": "cam", "feature_output": FEATURES_NAME, "feature_shape": ["N"] + feature_shape,
             "classifier": {"shape": list(weight.shape), "layout": "weight [classes, C], bias [classes]"},
             "command": command_line(),
             "parity": {"images": len(batch), "max_abs_logit_diff": logit_diff,
                        "classifier_max_abs_logit_diff": classifier_diff,
                        "runtime": "onnxruntime " + ort.__version__ + " CPU", "source": parity_folder}}
    bundle = write_explain(bundle_dir, cam_bytes, classifier_json(weight, bias, bundle.labels), entry)
    log("wrote {} ({:.1f} MB) and {} into {}".format(bundle.explain["file"], len(cam_bytes) / 1e6,
                                                    bundle.explain["classifier"]["file"], bundle_dir))
    return bundle
