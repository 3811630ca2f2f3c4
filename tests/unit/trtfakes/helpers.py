"""Helpers for tests of the TensorRT backend over the fakes: bundles with variants, a backend factory."""
import hashlib
import json
import os

from trtfakes.cuda_fake import FakeCudaRuntime
from trtfakes.tensorrt_fake import make_tensorrt

NANO = ("NVIDIA Tegra X1", (5, 3))
ORIN = ("Orin", (8, 7))


def add_variant(bundle, precision, marker, agreement=None):
    """Give ``bundle`` a variant file (the fp32 ONNX bytes + ``marker``: b"QDQ" or b"FP16TYPED") in its manifest,
    with ``agreement`` (top-1 agreement with fp32 on val) recorded as `retina-train quantize` records it."""
    from models.bundle import load_bundle
    with open(bundle.onnx_path, "rb") as f:
        data = f.read() + marker
    name = "model.{}.onnx".format(precision)
    with open(os.path.join(bundle.root, name), "wb") as f:
        f.write(data)
    manifest_path = os.path.join(bundle.root, "bundle.json")
    with open(manifest_path) as f:
        manifest = json.load(f)
    manifest.setdefault("variants", {})[precision] = {"file": name, "sha256": hashlib.sha256(data).hexdigest(),
                                                           "kind": "qdq-int8" if precision == "int8" else "fp16"}
    if agreement is not None:
        manifest["variants"][precision]["agreement"] = {"split": "val", "top1_agreement": agreement}
    with open(manifest_path, "w") as f:
        json.dump(manifest, f)
    return load_bundle(bundle.root)


class Lines(object):
    """A ``log`` callable that keeps the lines."""

    def __init__(self):
        self.lines = []

    def __call__(self, line):
        self.lines.append(line)

    def having(self, text):
        return [line for line in self.lines if text in line]


def fakes(version="8.2.1.8", gpu=NANO, network=None):
    cuda = FakeCudaRuntime(gpu=gpu[0], compute_capability=gpu[1])
    trt = make_tensorrt(version, memory=cuda.memory, network=network,
                        platform_fast=(True, tuple(gpu[1]) >= (6, 1)))
    return trt, cuda


def make_backend(bundle, cache_dir, version="8.2.1.8", gpu=NANO, precision="fp32", batch=1, log=None,
                 network=None, trt=None, cuda=None, **options):
    from edge.backends.tensorrt import TensorRTBackend
    if trt is None:
        trt, cuda = fakes(version, gpu, network)
    log = log if log is not None else Lines()
    backend = TensorRTBackend(bundle, precision=precision, cache_dir=str(cache_dir), batch=batch, log=log,
                              trt=trt, runtime=cuda, **options)
    return backend, trt, cuda, log
