"""`retina-edge selftest`: what a user on a real Jetson runs first.

It reports the platform (edge.device_info), then runs checks in order; each
ends as PASS, FAIL or SKIP with one line of detail and its figures. A check
that cannot run here (no TensorRT, no GPU) is SKIP with the reason, never a
PASS. The run fails (non-zero exit) when any check FAILs.

Checks are a table of small functions ``check(ctx) -> Check``; ``ctx`` is a
SelfTest holding what earlier checks built (the bundle, the sample images,
ONNX Runtime's fp32 probabilities that later checks compare against).
"""
import os
from typing import NamedTuple

import numpy as np

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"

# a variant or another runtime "agrees" with fp32 ONNX Runtime on the samples when
# no more than this fraction of them change their top-1 label (one image in 12 would
# be 8 %: on a dozen samples a single flip fails, as it should be looked at)
MAX_TOP1_DISAGREEMENT = 0.0


class Check(NamedTuple):
    name: str
    status: str
    detail: str
    data: dict


class SelfTest(object):
    def __init__(self, bundle_dir, samples_dir, backend_options=None, log=None):
        self.bundle_dir = bundle_dir
        self.samples_dir = samples_dir
        self.backend_options = dict(backend_options or {})
        self.log = log or (lambda line: None)
        self.bundle = None
        self.images = []      # (relative name, RGB uint8) of the sample images
        self.reference = {}   # precision -> N x classes probabilities from ONNX Runtime

    def run(self, checks=None):
        results = []
        for check in (checks or CHECKS):
            try:
                result = check(self)
            except Exception as exc:  # a crashing check is a FAIL that names itself, not a traceback
                result = Check(check.__name__.replace("check_", ""), FAIL,
                               "crashed: {}: {}".format(type(exc).__name__, exc), {})
            self.log("{:<4} {:<22} {}".format(result.status, result.name, result.detail))
            results.append(result)
        return results


def check_bundle(t):
    from models.bundle import BundleError, load_bundle
    try:
        t.bundle = load_bundle(t.bundle_dir)
    except BundleError as exc:
        return Check("bundle", FAIL, str(exc), {})
    m = t.bundle.manifest
    return Check("bundle", PASS, "{} ({}; sha256 verified for {})".format(
        m["name"], t.bundle.root, ", ".join(t.bundle.precisions)),
        {"name": m["name"], "sha256": m["model"]["sha256"], "precisions": t.bundle.precisions})


def check_samples(t):
    from edge.io.decode import ImageError, read_image
    from edge.io.sources import list_images
    if not t.samples_dir or not os.path.isdir(t.samples_dir):
        return Check("sample images", FAIL, "no sample folder at {} (give --samples DIR)".format(t.samples_dir), {})
    paths = list_images(t.samples_dir)
    try:
        t.images = [(os.path.relpath(p, t.samples_dir), read_image(p)) for p in paths]
    except ImageError as exc:
        return Check("sample images", FAIL, str(exc), {})
    if not t.images:
        return Check("sample images", FAIL, "{}: no images".format(t.samples_dir), {})
    return Check("sample images", PASS, "{} images from {}".format(len(t.images), t.samples_dir),
                 {"images": len(t.images), "folder": t.samples_dir})


def probabilities(backend, preprocessor, images, bundle):
    from edge.postprocess import softmax
    logits = [backend.infer(preprocessor.collate([preprocessor.prepare(rgb)])) for _, rgb in images]
    return softmax(np.concatenate(logits), bundle.temperature)


def compare(probs, reference):
    """Top-1 agreement and max |delta prob| of ``probs`` against ``reference`` (both N x classes)."""
    agree = float(np.mean(probs.argmax(1) == reference.argmax(1)))
    return {"top1_agreement": agree, "max_abs_prob_diff": float(np.abs(probs - reference).max()),
            "images": int(len(probs))}


def check_onnxruntime(t):
    """fp32 and every variant the bundle carries, through ONNX Runtime; variants compared with fp32."""
    if t.bundle is None or not t.images:
        return Check("onnxruntime", SKIP, "needs the bundle and the sample images", {})
    from edge.backends import BackendError, create_backend
    figures, problems = {}, []
    for precision in t.bundle.precisions:
        try:
            backend = create_backend("onnxruntime", t.bundle, precision=precision,
                                     threads=t.backend_options.get("threads", 0))
        except BackendError as exc:
            problems.append("{}: {}".format(precision, exc))
            continue
        try:
            t.reference[precision] = probabilities(backend, backend.make_preprocessor(), t.images, t.bundle)
        finally:
            backend.close()
        if precision != "fp32" and "fp32" in t.reference:
            figures[precision] = compare(t.reference[precision], t.reference["fp32"])
            if 1.0 - figures[precision]["top1_agreement"] > MAX_TOP1_DISAGREEMENT:
                problems.append("{} changes the top-1 label of {:.0%} of the samples".format(
                    precision, 1.0 - figures[precision]["top1_agreement"]))
    if "fp32" not in t.reference:
        return Check("onnxruntime", FAIL, "; ".join(problems), figures)
    detail = ", ".join(["fp32 ran on {} images".format(len(t.images))] + [
        "{} top-1 agreement {:.0%}, max |dprob| {:.3f}".format(p, f["top1_agreement"], f["max_abs_prob_diff"])
        for p, f in sorted(figures.items())])
    return Check("onnxruntime", FAIL if problems else PASS, "; ".join([detail] + problems), figures)


# TensorRT against ONNX Runtime fp32 on the samples: the top-1 label must not change; max |delta prob|
# above these is a FAIL too. fp32 allows for TF32 on Ampere (Orin) and for kernel choice; fp16 and
# int8 are first estimates from the size of their usual deviations, to be revised with device figures.
TRT_MAX_PROB_DIFF = {"fp32": 5e-3, "fp16": 3e-2, "int8": 1e-1}


def check_tensorrt(t):
    """Build (or load) an engine per precision and compare it with fp32 ONNX Runtime on the samples."""
    from edge.backends import BackendError, availability, create_backend
    from edge.preprocess import HostPreprocessor
    ok, reason = availability("tensorrt")
    if not ok:
        return Check("tensorrt", SKIP, reason, {})
    if "fp32" not in t.reference:
        return Check("tensorrt", SKIP, "needs ONNX Runtime's fp32 probabilities (the onnxruntime check)", {})
    figures, problems = {}, []
    for precision in t.backend_options.get("precisions") or ("fp32", "fp16", "best"):
        try:
            backend = create_backend("tensorrt", t.bundle, precision=precision, log=t.log,
                                     cache_dir=t.backend_options.get("cache_dir"))
        except BackendError as exc:
            problems.append("{}: {}".format(precision, exc))
            continue
        try:
            # the host reference feeds the engine here, so the engine alone is compared (the kernel has its check)
            preprocessor = HostPreprocessor(t.bundle.preprocess, dtype=backend.input_dtype)
            probs = probabilities(backend, preprocessor, t.images, t.bundle)
            figures[precision] = dict(compare(probs, t.reference["fp32"]), built=backend.precision,
                                      engine=backend.describe())
        finally:
            backend.close()
        f = figures[precision]
        limit = TRT_MAX_PROB_DIFF.get(f["built"], TRT_MAX_PROB_DIFF["int8"])
        if f["top1_agreement"] < 1.0 or f["max_abs_prob_diff"] > limit:
            problems.append("{} (built {}): top-1 agreement {:.0%}, max |dprob| {:.4f} (limit {})".format(
                precision, f["built"], f["top1_agreement"], f["max_abs_prob_diff"], limit))
    detail = ", ".join("{} as {}: agreement {:.0%}, max |dprob| {:.4f}".format(
        p, f["built"], f["top1_agreement"], f["max_abs_prob_diff"]) for p, f in figures.items())
    return Check("tensorrt", FAIL if problems else PASS, "; ".join([d for d in [detail] if d] + problems), figures)


def _one_level(spec):
    """One uint8 step of the resized image in normalised units, per channel (the kernel's tolerance on a board
    whose OpenCV may fuse multiply-adds or resize through ARM's carotene: the kernel matches x86 OpenCV bit for
    bit, but that board's own reference may differ from it by a level in a few pixels)."""
    return float(spec["scale"]) / float(min(spec["std"]))


def check_cuda_kernel(t, runtime=None, kernels=None):
    """The CUDA preprocessing kernel against the OpenCV reference on the samples: inputs and the labels they give."""
    if t.bundle is None or not t.images or "fp32" not in t.reference:
        return Check("cuda kernel", SKIP, "needs the bundle, the samples and ONNX Runtime's fp32 probabilities", {})
    from edge.gpu.cuda import GpuError, load_runtime, probe
    from edge.gpu.preprocess import CudaPreprocessor
    from edge.preprocess import preprocess
    if runtime is None:
        ok, reason = probe()
        if not ok:
            return Check("cuda kernel", SKIP, reason, {})
        try:
            runtime = load_runtime()
        except GpuError as exc:
            return Check("cuda kernel", SKIP, str(exc), {})
    spec, shape = t.bundle.preprocess, (1,) + tuple(t.bundle.input_shape[1:])
    out, inputs = runtime.alloc(int(np.prod(shape)) * 4), []
    try:
        stream = runtime.stream()
        pre = CudaPreprocessor(spec, runtime, out.ptr, np.float32, 1, stream, kernels=kernels, log=t.log)
        host = runtime.pinned(shape, np.float32)
        worst = 0.0
        for _, rgb in t.images:
            pre.collate([pre.prepare(rgb)])
            runtime.dtoh(host, out.ptr, stream)
            stream.synchronize()
            worst = max(worst, float(np.abs(host - preprocess(rgb, spec)).max()))
            inputs.append(np.array(host))
    finally:
        out.free()
        if hasattr(runtime, "close"):
            runtime.close()
    from edge.backends import create_backend
    backend = create_backend("onnxruntime", t.bundle)
    try:
        from edge.postprocess import softmax
        probs = softmax(np.concatenate([backend.infer(x) for x in inputs]), t.bundle.temperature)
    finally:
        backend.close()
    figures = dict(compare(probs, t.reference["fp32"]), max_abs_input_diff=worst, tolerance=_one_level(spec))
    bad = figures["top1_agreement"] < 1.0 or worst > figures["tolerance"] + 1e-6
    return Check("cuda kernel", FAIL if bad else PASS,
                 "{} images: max |input - reference| {:.2g} (tolerance one uint8 level, {:.3g}), top-1 agreement "
                 "{:.0%}".format(len(inputs), worst, figures["tolerance"], figures["top1_agreement"]), figures)


CHECKS = [check_bundle, check_samples, check_onnxruntime, check_tensorrt, check_cuda_kernel]


def summary(results):
    """(exit ok, one-line verdict)."""
    failed = [r.name for r in results if r.status == FAIL]
    skipped = [r.name for r in results if r.status == SKIP]
    verdict = "selftest {}: {} passed, {} failed{}, {} skipped".format(
        "FAILED" if failed else "passed", sum(r.status == PASS for r in results), len(failed),
        " ({})".format(", ".join(failed)) if failed else "", len(skipped))
    return not failed, verdict
