"""Export a checkpoint to ONNX (opset 13, what TensorRT 8.2 parses), prove parity
with PyTorch through ONNX Runtime, and write a model bundle."""
import io
import os

import numpy as np
import onnx
import onnxruntime as ort
import torch

from edge.io.decode import read_image
from edge.io.sources import list_images
from edge.preprocess import preprocess
from models.bundle import write_bundle
from training import data as datalib, modelcard
from training.recipe import command_line, git_commit, load_checkpoint, run_split, with_split_command

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class ParityError(AssertionError):
    """ONNX Runtime and PyTorch disagree by more than the tolerance."""


def to_onnx(net, image_size, opset=13):
    """Serialised ONNX of ``net`` with a dynamic batch axis."""
    net = net.eval().to(memory_format=torch.contiguous_format)
    dummy = torch.zeros(1, 3, image_size, image_size)
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(net, dummy, buf, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}},
                          do_constant_folding=True, dynamo=False)
    model = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(model)
    return buf.getvalue()


def parity(net, onnx_bytes, batch):
    """Max |logit difference| between PyTorch and ONNX Runtime (CPU) on ``batch``."""
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = net(torch.from_numpy(batch)).numpy()
    got = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
    return float(np.abs(expected - got).max())


def parity_images(folder, samples, spec, count=32):
    """Real images for the parity check: a folder given by the user, else the run's test split."""
    if folder:
        paths = list_images(folder)[:count]
    else:
        paths = [s.path for s in samples if s.split == "test"][:count] or [s.path for s in samples][:count]
    if not paths:
        raise ValueError("no images for the parity check; pass --parity-images FOLDER")
    return np.concatenate([preprocess(read_image(p), spec) for p in paths])


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


def build_manifest(name, ckpt, max_abs_diff, n_parity, opset, n_params):
    spec = ckpt["spec"]
    size = spec["resize"]["size"]
    metrics = {k: v for k, v in ckpt["metrics"].items()}
    metrics["onnx_parity"] = {"max_abs_logit_diff": max_abs_diff, "images": n_parity, "runtime": "onnxruntime "
                              + ort.__version__ + " CPU", "precision": "fp32"}
    return {
        "name": name,
        "task": "classification",
        "modality": "fundus",  # colour fundus photographs; edge skips other modalities (models/bundle.py)
        "labels": list(ckpt["labels"]),
        "model": {"opset": opset, "architecture": ckpt["arch"], "parameters": n_params},
        "input": {"name": INPUT_NAME, "shape": [1, 3, size[0], size[1]], "dtype": "float32",
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
    onnx_bytes = to_onnx(net, size, args.opset)
    samples = run_split(args.checkpoint)
    batch = parity_images(args.parity_images, samples, ckpt["spec"])
    max_diff = parity(net, onnx_bytes, batch)
    log("parity on {} real images: max |delta logit| = {:.3g} (tolerance {:g})".format(len(batch), max_diff,
                                                                                     args.tolerance))
    if not max_diff <= args.tolerance:
        raise ParityError("ONNX Runtime differs from PyTorch by {:.3g} > {:g}; bundle not written".format(
            max_diff, args.tolerance))
    name = args.name or "fundus4-{}".format(ckpt["arch"])
    n_params = int(sum(p.numel() for p in net.parameters()))
    manifest = build_manifest(name, ckpt, max_diff, len(batch), args.opset, n_params)
    bundle = write_bundle(args.out, onnx_bytes, manifest)
    write_split_listing(samples, args.out)
    modelcard.write(args.out, bundle.manifest)
    log("wrote bundle {} ({:.1f} MB, sha256 {})".format(args.out, len(onnx_bytes) / 1e6,
                                                        bundle.manifest["model"]["sha256"][:16]))
    return bundle
