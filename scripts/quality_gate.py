"""Measure the quality gate (edge/quality.py) on a folder of fundus photographs; print everything.

    python scripts/quality_gate.py                      # ../shared/data/fundus4, the shipped thresholds
    python scripts/quality_gate.py DIR --csv out.csv    # another folder; per-image measures to a CSV
    python scripts/quality_gate.py --min-bright 30 --min-detail 0.5   # what other thresholds would reject

Prints: the distribution of both measures, every image the gate rejects (with
its reason), the rejection rate on degraded copies of a fixed sample (dimmed,
blurred, featureless discs: what the gate is for), and the gate's cost per image
at the folder's size and at a camera's 3000x3000. The thresholds' provenance in
edge/quality.py comes from this script. Timings are wall clock on whatever
else the machine is doing: rerun on a quiet machine for figures to quote.
"""
import argparse
import csv
import os
import sys
import time

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from edge.io.decode import ImageError, read_image  # noqa: E402
from edge.io.sources import list_images  # noqa: E402
from edge.quality import MIN_BRIGHT, MIN_DETAIL, assess, working_copy  # noqa: E402

DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "fundus4")
PERCENTILES = (0, 0.1, 1, 5, 50, 95, 100)


def degradations(rng):
    """name -> function(rgb at working size) -> degraded rgb."""
    def dim(factor):
        return lambda img: (img.astype(np.float32) * factor).astype(np.uint8)

    def blur(sigma):
        return lambda img: cv2.GaussianBlur(img, (0, 0), sigma)

    def featureless(img):
        mask = img.max(axis=2) > 10
        out = np.zeros_like(img)
        out[mask] = img[mask].mean(axis=0).astype(np.uint8)
        return out

    def featureless_noisy(img):
        noisy = featureless(img).astype(np.float32) + rng.normal(0, 1.5, img.shape)
        return np.clip(noisy, 0, 255).astype(np.uint8) * (img.max(axis=2, keepdims=True) > 10)

    return [("dimmed x0.10", dim(0.10)), ("dimmed x0.15", dim(0.15)), ("dimmed x0.25", dim(0.25)),
            ("blurred sigma 3 px", blur(3)), ("blurred sigma 8 px", blur(8)),
            ("blurred sigma 16 px", blur(16)), ("featureless disc", featureless),
            ("featureless disc + noise", featureless_noisy)]


def describe(values):
    return "  ".join("p{:g}={:.2f}".format(p, v) for p, v in zip(PERCENTILES, np.percentile(values, PERCENTILES)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="?", default=DEFAULT_DATA, help="folder of fundus photographs (default fundus4)")
    p.add_argument("--min-bright", type=float, default=MIN_BRIGHT)
    p.add_argument("--min-detail", type=float, default=MIN_DETAIL)
    p.add_argument("--sample", type=int, default=200, help="images degraded per kind (default 200)")
    p.add_argument("--csv", default=None, help="write per-image measures here")
    args = p.parse_args(argv)
    limits = dict(min_bright=args.min_bright, min_detail=args.min_detail)

    paths = list_images(args.data)
    print("data: {} ({} files); thresholds: min_bright {:g}, min_detail {:g}".format(
        os.path.abspath(args.data), len(paths), args.min_bright, args.min_detail))
    rows, rejected, assess_s, images = [], [], 0.0, []
    for path in paths:
        try:
            rgb = read_image(path)
        except ImageError as exc:
            print("unreadable: {}".format(exc))
            continue
        start = time.perf_counter()
        q = assess(rgb, **limits)
        assess_s += time.perf_counter() - start
        rel = os.path.relpath(path, args.data)
        rows.append((rel, rgb.shape[1], rgb.shape[0], q.brightness, q.detail, q.reason))
        if q.reason:
            rejected.append((rel, q))
    measured = [r for r in rows if r[3] is not None]
    print("brightness (p99 luma in the disc): " + describe([r[3] for r in measured]))
    print("detail (smoothed Laplacian std):   " + describe([r[4] for r in measured]))
    for name, column in (("brightness", 3), ("detail", 4)):
        lowest = sorted(measured, key=lambda r: r[column])[:5]
        print("lowest {}: {}".format(name, ", ".join("{} {:.2f}".format(r[0], r[column]) for r in lowest)))
    print("\nrejected: {} of {} ({:.2%})".format(len(rejected), len(rows), len(rejected) / max(1, len(rows))))
    for rel, q in rejected:
        print("  ungradable {}: {}".format(rel, q.reason))
    print("gate cost: {:.2f} ms per image at this folder's sizes (mean of {})".format(
        1000.0 * assess_s / max(1, len(rows)), len(rows)))

    rng = np.random.RandomState(0)
    sample = [paths[i] for i in sorted(rng.choice(len(paths), min(args.sample, len(paths)), replace=False))]
    print("\ndegraded copies of {} images (made at the working size, {} px):".format(len(sample), 256))
    smalls = [working_copy(read_image(path)) for path in sample]
    for name, degrade in degradations(rng):
        hits = sum(1 for img in smalls if assess(degrade(img), **limits).reason)
        print("  {:<26} rejected {:>4} of {} ({:.0%})".format(name, hits, len(smalls), hits / float(len(smalls))))

    big = cv2.resize(read_image(sample[0]), (3000, 3000), interpolation=cv2.INTER_CUBIC)
    start = time.perf_counter()
    for _ in range(20):
        assess(big, **limits)
    print("\ngate cost on a 3000x3000 image: {:.2f} ms (mean of 20; mostly the downscale)".format(
        1000.0 * (time.perf_counter() - start) / 20))

    if args.csv:
        with open(args.csv, "w") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "width", "height", "brightness", "detail", "reason"])
            writer.writerows(rows)
        print("per-image measures: {}".format(args.csv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
