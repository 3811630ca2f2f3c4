"""The CUDA preprocessing kernel against the OpenCV reference on one CPU core.

    .venv/bin/python benchmarks/preprocess_kernel.py                  # 640x480 ... 4000x3000
    .venv/bin/python benchmarks/preprocess_kernel.py --repeats 50 --sizes 2000x2000

A script that prints figures, never a test. For each size (width x height):
* CPU: edge.preprocess.preprocess (ROI + square + INTER_AREA + normalise), the shipped bundle's rule,
  with cv2.setNumThreads(1): one core, as the issue's target is stated. Median and best of the repeats.
* GPU (when CuPy and a CUDA GPU are present): the same rule through edge.gpu.preprocess.CudaPreprocessor
  and CuPy's RawModule, timed by the preprocessor's own CUDA events: "kernel" = the three kernels and the
  counter reset (CUDA events around them), "+ copy" = the host-to-device upload from pinned memory added,
  "wall" = collate() to a synchronised stream as the host sees it (staging copy, launches, waits).
  Each output is also checked bit for bit against the reference.
Target: kernel >= 20x the one-core CPU reference at 2000x2000.

Images are synthetic, fundus-like: a black frame with a centred disc (a reddish radial gradient, dark
vessel-like lines and sensor noise) covering about 85 % of the shorter side, so the region of interest
and the resize work as on a real photograph. The machine may be shared: the load average is printed.
"""
import argparse
import json
import os
import platform
import sys
import time

import cv2
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from edge.preprocess import preprocess  # noqa: E402

SIZES = ((640, 480), (1920, 1080), (2000, 2000), (4000, 3000))
TARGET_SIZE, TARGET_SPEEDUP = (2000, 2000), 20.0


def fundus_like(width, height, seed=0):
    """A synthetic fundus photograph: black border, textured reddish disc, RGB uint8."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cx, cy, radius = width / 2.0, height / 2.0, 0.425 * min(width, height)
    r = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / radius
    shade = np.clip(1.0 - 0.45 * r ** 2, 0, 1)
    img = np.stack([200 * shade + 20, 95 * shade + 10, 40 * shade + 5], axis=-1)
    for _ in range(12):                      # vessels: dark lines from the optic disc
        angle = rng.uniform(0, 2 * np.pi)
        end = (int(cx + np.cos(angle) * radius), int(cy + np.sin(angle) * radius))
        cv2.line(img, (int(cx * 1.2), int(cy)), end, (90, 30, 15), max(1, int(radius / 90)))
    img += rng.normal(0, 4, img.shape)
    img[r > 1.0] = rng.randint(0, 6, (int((r > 1.0).sum()), 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def median_best(samples):
    return float(np.median(samples)), float(np.min(samples))


def time_cpu(image, spec, repeats):
    preprocess(image, spec)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        preprocess(image, spec)
        samples.append(1000.0 * (time.perf_counter() - start))
    return median_best(samples)


def gpu_setup():
    """(runtime, kernels) through CuPy, or (None, reason)."""
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None, "CuPy sees no CUDA GPU"
    except ImportError as exc:
        return None, "CuPy is not installed ({}; pip install cupy-cuda12x)".format(exc)
    except Exception as exc:  # no driver
        return None, "no CUDA GPU ({})".format(" ".join(str(exc).split()))
    from edge.gpu.cuda_cupy import CupyRuntime
    from edge.gpu.kernel import CupyKernels
    return (CupyRuntime(), CupyKernels()), ""


def time_gpu(gpu, image, spec, repeats):
    from edge.gpu.preprocess import CudaPreprocessor
    runtime, kernels = gpu
    h, w = spec["resize"]["size"]
    out = runtime.alloc(3 * h * w * 4)
    stream = runtime.stream()
    pre = CudaPreprocessor(spec, runtime, out.ptr, np.float32, 1, stream, kernels=kernels)
    prepared = pre.prepare(image)
    for _ in range(3):                       # warm-up: module load, caches, clocks
        pre.collate([prepared])
        pre.last_times_ms()
    kernel, copy, wall = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        pre.collate([prepared])
        times = pre.last_times_ms()          # waits for the stream
        wall.append(1000.0 * (time.perf_counter() - start))
        kernel.append(times["pre-process"])
        copy.append(times["pre-process"] + times["host-to-device"])
    host = np.empty((1, 3, h, w), np.float32)
    runtime.dtoh(host, out.ptr, stream)
    stream.synchronize()
    exact = bool(np.array_equal(host.view(np.uint32), preprocess(image, spec).view(np.uint32)))
    pre.close()
    out.free()
    return median_best(kernel), median_best(copy), median_best(wall), exact


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except IOError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    return cpu, os.cpu_count(), load


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per size and side (default 20)")
    parser.add_argument("--sizes", default=",".join("{}x{}".format(w, h) for w, h in SIZES),
                        help="comma-separated WIDTHxHEIGHT list")
    parser.add_argument("--bundle", default=os.path.join(REPO, "models", "default", "bundle.json"))
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
    with open(args.bundle) as f:
        spec = json.load(f)["preprocess"]
    cv2.setNumThreads(1)
    cpu, cores, load = machine()
    print("CPU: {} ({} cores), load average {}; Python {}, OpenCV {} (1 thread), NumPy {}".format(
        cpu, cores, " ".join(str(round(v, 2)) for v in load), platform.python_version(), cv2.__version__,
        np.__version__))
    print("rule: {}; images: synthetic fundus-like discs".format(json.dumps(spec, sort_keys=True)))
    gpu, reason = gpu_setup()
    if gpu is None:
        print("GPU: none — no GPU present here ({}); only the CPU reference is measured".format(reason))
    else:
        print("GPU: {} (sm_{}{}), kernels via {}".format(gpu[0].device_name(), *gpu[0].compute_capability(),
                                                       gpu[1].backend))
    print("{:>10} | {:>19} | {:>19} | {:>19} | {:>19} | {:>8} | {}".format(
        "size", "CPU ms median/best", "kernel ms", "+ copy ms", "wall ms", "speedup", "bit-exact"))
    for width, height in sizes:
        image = fundus_like(width, height)
        repeats = max(3, args.repeats // (2 if width * height > 4e6 else 1))
        cpu_ms = time_cpu(image, spec, repeats)
        row = ["{}x{}".format(width, height), "{:8.2f} / {:8.2f}".format(*cpu_ms)]
        if gpu is None:
            row += ["-", "-", "-", "-", "-"]
        else:
            kernel, copy, wall, exact = time_gpu(gpu, image, spec, repeats)
            speedup = cpu_ms[0] / kernel[0]
            flag = ""
            if (width, height) == TARGET_SIZE:
                flag = " (target {:.0f}x: {})".format(TARGET_SPEEDUP, "met" if speedup >= TARGET_SPEEDUP else "MISSED")
            row += ["{:8.3f} / {:8.3f}".format(*kernel), "{:8.3f} / {:8.3f}".format(*copy),
                    "{:8.3f} / {:8.3f}".format(*wall), "{:7.1f}x{}".format(speedup, flag), "yes" if exact else "NO"]
        print("{:>10} | {:>19} | {:>19} | {:>19} | {:>19} | {:>8} | {}".format(*row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
