"""Does the bundle's INT8 or FP16 variant run faster than fp32 on this CPU? Prints its figures.

    python benchmarks/variants_cpu.py                      # the shipped bundle, samples/fundus + 52 val images
    python benchmarks/variants_cpu.py --model models/default --images 64 --rounds 3 --threads 2

All precisions run in one process on the same preprocessed images (network
time only: decoding and preprocessing are done once, before timing), batch 1,
one warm-up pass each, then ``--rounds`` timed passes, interleaved across the
precisions; best and median rounds are printed (other processes on a shared
machine only ever slow a round down). The
INT8 variant runs twice: as `retina-edge run --precision int8` runs it (Q/DQ
evaluated in float, session.disable_quant_qdq) and with ONNX Runtime's fused
int8 kernels, whose agreement with fp32 is printed too (on x86 without VNNI
they saturate). Python 3.6 (onnxruntime 1.10) and 3.11 alike.
"""
import argparse
import csv
import os
import platform
import sys
import time

import numpy as np
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from edge.backends.ort import session_options  # noqa: E402
from edge.io.decode import read_image  # noqa: E402
from edge.io.sources import list_images  # noqa: E402
from edge.preprocess import preprocess  # noqa: E402
from models.bundle import default_bundle_dir, load_bundle  # noqa: E402

DATA = os.path.join(ROOT, "..", "shared", "data", "fundus4")


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pick_images(bundle, count):
    """samples/fundus, then val images of the bundle's split (never its training images)."""
    paths = list_images(os.path.join(ROOT, "samples", "fundus"))
    listing = os.path.join(bundle.root, "split.csv")
    if os.path.isdir(DATA) and os.path.isfile(listing):
        with open(listing) as f:
            paths += [os.path.join(DATA, r["path"]) for r in csv.DictReader(f) if r["split"] == "val"]
    return paths[:count]


def open_session(bundle, precision, threads, fused=False):
    options = session_options(precision, threads, fused_int8=fused)
    return ort.InferenceSession(bundle.model_path(precision), options, providers=["CPUExecutionProvider"])


def one_pass(session, bundle, batch):
    """Seconds for one pass over ``batch`` (one image per call), and the logits."""
    name, out = bundle.input_name, bundle.output_names[0]
    start = time.perf_counter()
    logits = [session.run([out], {name: x})[0] for x in batch]
    return time.perf_counter() - start, np.concatenate(logits)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=default_bundle_dir(), help="bundle folder (default: the shipped one)")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its choice)")
    args = p.parse_args(argv)
    bundle = load_bundle(args.model)
    paths = pick_images(bundle, args.images)
    batch = [preprocess(read_image(path), bundle.preprocess) for path in paths]
    print("machine: {}, {} logical CPUs; python {}; onnxruntime {}; bundle {}".format(
        cpu_name(), os.cpu_count(), platform.python_version(), ort.__version__, bundle.root))
    print("{} images, batch 1, {} rounds, threads {}".format(len(batch), args.rounds, args.threads or "auto"))
    runs = [("fp32", "fp32", False)] + [(p, p, False) for p in ("fp16", "int8") if p in bundle.precisions]
    if "int8" in bundle.precisions:
        runs.append(("int8 (fused int8 kernels)", "int8", True))
    sessions, answers, seconds = {}, {}, {}
    for label, precision, fused in runs:
        try:
            sessions[label] = open_session(bundle, precision, args.threads, fused)
            answers[label] = one_pass(sessions[label], bundle, batch)[1]  # warm-up, and the answers
        except Exception as exc:  # ONNX Runtime raises its own types; say what failed and go on
            print("{:<28} failed: {}".format(label, str(exc).splitlines()[0][:200]))
        seconds[label] = []
    for _ in range(args.rounds):  # interleaved, so a busy spell on a shared machine hits every precision
        for label in sessions:
            seconds[label].append(one_pass(sessions[label], bundle, batch)[0])
    reference = answers.get("fp32")
    print("{:<28} {:>14} {:>16} {:>16} {:>14}".format("precision", "images/s best", "images/s median",
                                                       "top-1 vs fp32", "max |d logit|"))
    for label in sessions:
        times = sorted(seconds[label])
        same = int(np.sum(reference.argmax(1) == answers[label].argmax(1)))
        print("{:<28} {:>14.1f} {:>16.1f} {:>10d}/{:<5d} {:>14.4f}".format(
            label, len(batch) / times[0], len(batch) / times[len(times) // 2], same, len(batch),
            float(np.abs(answers[label] - reference).max())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
