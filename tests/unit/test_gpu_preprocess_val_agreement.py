"""The shipped network gives the same answer on kernel inputs as on reference inputs: every val image.

The val split of models/default (split.csv, split == val: 339 images of all four sizes in fundus4)
is preprocessed twice, by edge/preprocess.py and by edge/gpu/preprocess.cu (host emulation, see
test_gpu_preprocess_hostemu.py), and both batches run through models/default/model.onnx with ONNX
Runtime. Required: 100 % top-1 agreement; the inputs are also required to be bit-identical, which
is the stronger claim and the reason the agreement holds.

Takes about 20 to 40 s on two shared cores (decoding, the emulated kernel and two ONNX Runtime
passes over 339 images), the slowest test of the unit suite.
"""
import collections
import csv
import os

import numpy as np
import pytest

from conftest import REPO_ROOT
from edge.gpu.preprocess import CudaPreprocessor
from edge.io.decode import read_image
from edge.preprocess import preprocess
from gpu_hostemu.emulator import HostRuntime, session_kernels
from models.bundle import load_bundle

BUNDLE_DIR = os.path.join(REPO_ROOT, "models", "default")
BATCH = 32


def val_images():
    with open(os.path.join(BUNDLE_DIR, "split.csv")) as f:
        return [row["path"] for row in csv.DictReader(f) if row["split"] == "val"]


def test_top1_agreement_on_the_val_split_is_total(tmp_path_factory, fundus_dir):
    ort = pytest.importorskip("onnxruntime")
    kernels = session_kernels(tmp_path_factory)
    bundle = load_bundle(BUNDLE_DIR)
    spec = bundle.preprocess
    session = ort.InferenceSession(bundle.model_path("fp32"), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    h, w = spec["resize"]["size"]
    runtime = HostRuntime()
    out = runtime.alloc(BATCH * 3 * h * w * 4)
    pre = CudaPreprocessor(spec, runtime, out.ptr, np.float32, BATCH, runtime.stream(), kernels=kernels,
                           max_input_bytes=400 * 400 * 3)
    paths = val_images()
    assert len(paths) == 339
    sizes = collections.Counter()
    agree = identical = 0
    for start in range(0, len(paths), BATCH):
        images = [read_image(os.path.join(fundus_dir, rel)) for rel in paths[start:start + BATCH]]
        sizes.update(image.shape[:2] for image in images)
        reference = np.concatenate([preprocess(image, spec) for image in images])
        batch = pre.collate([pre.prepare(image) for image in images])
        kernel = out.view(np.float32, (batch.n, 3, h, w)).copy()
        identical += sum(np.array_equal(k.view(np.uint32), r.view(np.uint32)) for k, r in zip(kernel, reference))
        top_reference = session.run(None, {input_name: reference})[0].argmax(axis=1)
        top_kernel = session.run(None, {input_name: kernel})[0].argmax(axis=1)
        agree += int((top_reference == top_kernel).sum())
    assert sorted(sizes) == [(256, 256), (264, 400), (266, 400), (400, 400)]   # every size in the data
    assert identical == len(paths)
    assert agree == len(paths), "top-1 agreement {}/{}".format(agree, len(paths))
