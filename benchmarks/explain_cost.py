"""What does `retina-edge run --explain` cost per image? Prints its figures.

    python benchmarks/explain_cost.py                          # the shipped bundle on samples/fundus
    python benchmarks/explain_cost.py --images ../shared/data/fundus4 --count 64 --rounds 3 --threads 2

Per image, batch 1, ONNX Runtime on the CPU (the session options `retina-edge run` uses):

- network: model.onnx (logits) against model.cam.onnx asked for the logits alone and for
  logits + the feature map (what --explain runs): the extra output's cost in the network stage;
- cam: the class activation map for the decision rule's label (one product, C x h x w by C),
  on the inference thread;
- overlay: finding the disc again, mapping the map back onto the photograph at the annotated
  size and blending it (edge.explain.cam_overlay), on the output thread;
- encode: JPEG encoding of <name>.cam.jpg (what writing it adds besides the disk).

Images are decoded and preprocessed once, before timing. One warm-up pass, then ``--rounds``
timed passes interleaved across the three network runs; best and median rounds are printed
(other processes on a shared machine only ever slow a round down). Python 3.6 and 3.11 alike.
"""
import argparse
import os
import platform
import sys
import time

import cv2
import numpy as np
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from edge.backends.ort import session_options  # noqa: E402
from edge.explain import cam_overlay, class_activation_map, load_classifier  # noqa: E402
from edge.io.annotate import _scaled  # noqa: E402
from edge.io.decode import read_image  # noqa: E402
from edge.io.sources import list_images  # noqa: E402
from edge.postprocess import Rule  # noqa: E402
from edge.preprocess import preprocess  # noqa: E402
from models.bundle import default_bundle_dir, load_bundle  # noqa: E402


def spread(paths, count):
    step = max(1.0, len(paths) / float(count))
    return [paths[int(i * step)] for i in range(min(count, len(paths)))]


def timed_ms(fn, items):
    """ms per item of ``fn`` over ``items`` (one call each), and the outputs."""
    outs = []
    start = time.perf_counter()
    for item in items:
        outs.append(fn(item))
    return (time.perf_counter() - start) * 1000.0 / len(items), outs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=default_bundle_dir(), help="bundle folder with an explain entry")
    p.add_argument("--images", default=os.path.join(ROOT, "samples", "fundus"), help="folder of photographs")
    p.add_argument("--count", type=int, default=32, help="images, spread over the folder (default %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="timed passes (default %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    p.add_argument("--max-side", type=int, default=1024, help="annotated image size (default %(default)s)")
    args = p.parse_args(argv)

    bundle = load_bundle(args.model)
    if bundle.explain is None:
        sys.exit("{}: no feature-map output; add one with `retina-train explain --bundle {}`".format(
            args.model, args.model))
    paths = spread(list_images(args.images), args.count)
    photos = [read_image(path) for path in paths]
    inputs = [preprocess(rgb, bundle.preprocess) for rgb in photos]
    options = session_options("fp32", args.threads)
    plain = ort.InferenceSession(bundle.onnx_path, sess_options=options, providers=["CPUExecutionProvider"])
    cam = ort.InferenceSession(bundle.explain_path(), sess_options=options, providers=["CPUExecutionProvider"])
    feature = bundle.explain["feature_output"]
    runs = {"network: model.onnx, logits": lambda x: plain.run(["logits"], {"input": x}),
            "network: model.cam.onnx, logits": lambda x: cam.run(["logits"], {"input": x}),
            "network: model.cam.onnx, logits + features": lambda x: cam.run(["logits", feature], {"input": x})}
    rounds = dict((name, []) for name in runs)
    for r in range(args.rounds + 1):  # round 0 warms up
        for name, fn in runs.items():
            ms, outs = timed_ms(fn, inputs)
            if r:
                rounds[name].append(ms)
    logits = np.concatenate([o[0] for o in outs])
    features = [o[1][0] for o in outs]
    weight, _ = load_classifier(bundle)
    labels = Rule.from_bundle(bundle).decide(logits)
    items = list(zip(features, labels))
    maps, drawn, cam_ms, overlay_ms, encode_ms = [], [], [], [], []
    for r in range(args.rounds + 1):
        ms, maps = timed_ms(lambda fl: class_activation_map(fl[0], weight, fl[1]), items)
        bgrs = [cv2.cvtColor(_scaled(rgb, args.max_side), cv2.COLOR_RGB2BGR) for rgb in photos]
        ms2, drawn = timed_ms(lambda i: cam_overlay(bgrs[i], photos[i], maps[i], bundle.preprocess["roi"],
                                                    bundle.labels[labels[i]]), range(len(photos)))
        ms3, _ = timed_ms(lambda img: cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90]), drawn)
        if r:
            cam_ms.append(ms), overlay_ms.append(ms2), encode_ms.append(ms3)

    sizes = sorted(set("{}x{}".format(rgb.shape[1], rgb.shape[0]) for rgb in photos))
    print("explain cost per image: {} ({}), {} image(s) from {} ({}), batch 1".format(
        bundle.manifest["name"], args.model, len(photos), args.images, ", ".join(sizes[:6])
        + (", ..." if len(sizes) > 6 else "")))
    print("python {}, onnxruntime {}, numpy {}, opencv {}, {} ({} cores), threads {}".format(
        platform.python_version(), ort.__version__, np.__version__, cv2.__version__, platform.processor()
        or platform.machine(), os.cpu_count(), args.threads or "default"))
    print("feature map {} per image; annotated side {} px".format(list(features[0].shape), args.max_side))
    print("{:<46} {:>9} {:>9}".format("stage", "best ms", "median ms"))
    table = [(name, times) for name, times in rounds.items()] + [
        ("cam (NumPy, inference thread)", cam_ms), ("overlay (map back + blend, output thread)", overlay_ms),
        ("encode <name>.cam.jpg", encode_ms)]
    for name, times in table:
        print("{:<46} {:>9.3f} {:>9.3f}".format(name, min(times), float(np.median(times))))
    base = min(rounds["network: model.onnx, logits"])
    extra = min(rounds["network: model.cam.onnx, logits + features"]) - base
    print("extra network time of the feature-map output: {:+.3f} ms ({:+.1f} %); cam + overlay + encode: {:.3f} ms"
          .format(extra, 100.0 * extra / base, min(cam_ms) + min(overlay_ms) + min(encode_ms)))


if __name__ == "__main__":
    main()
