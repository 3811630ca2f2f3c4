"""Error rate and cost of edge.modality.guess_modality (fundus photograph vs OCT B-scan).

    .venv/bin/python benchmarks/modality_classifier.py                        # ../shared/data/fundus4
    .venv/bin/python benchmarks/modality_classifier.py --data DIR --seeds 20

A script that prints figures, never a test. Sets (the truth of each is its name's first word):
* fundus: every photograph under --data (recursively; all 3,406 of fundus4), as decoded (RGB).
* fundus-grey / fundus-green (hard): the same photographs converted with COLOR_RGB2GRAY, and their
  green channel alone (a red-free photograph's look), both as grey images.
* oct: tests.synthetic.bscan at 512x496, 768x496, 1024x496 and 1000x1024 (width x height), --seeds seeds
  each, 8-bit and 16-bit (12 bits used) scaled to 8 by the maximum, as a decoder would show it.
* oct-falsecolour (hard): the 8-bit B-scans through cv2.applyColorMap (JET, HOT, BONE, VIRIDIS in turn).
* oct-tilted (hard): the 8-bit B-scans turned by -10..+10 degrees (black fill), a tilted acquisition.
* oct-smoothed (hard): the 8-bit B-scans through a Gaussian blur (sigma 1.5 px), as a denoised
  (frame-averaged) or JPEG-compressed export looks: the speckle evidence is gone.
* oct-lesion: training.synthetic_oct.make_bscan (class-distinct lesions, 4 classes), when that module
  exists in this checkout; otherwise the set is reported as absent.
Each set: count, errors, error rate with a 95 % Wilson interval, the five worst cases (name, score,
reason) and the median time per guess (decoding excluded). Then the time of one guess on a fundus4
photograph enlarged to 2000x2000 (median and best of --repeats). The machine may be shared: the load
average is printed.
"""
import argparse
import glob
import math
import os
import platform
import sys
import time

import cv2
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from edge.modality import guess_modality  # noqa: E402
from tests.synthetic import bscan  # noqa: E402

SIZES = ((496, 512), (496, 768), (496, 1024), (1024, 1000))   # (rows, cols)
COLOUR_MAPS = (("jet", cv2.COLORMAP_JET), ("hot", cv2.COLORMAP_HOT), ("bone", cv2.COLORMAP_BONE),
               ("viridis", cv2.COLORMAP_VIRIDIS))
SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


def wilson(errors, n, z=1.96):
    """95 % Wilson score interval of errors / n, as percentages."""
    if n == 0:
        return float("nan"), float("nan")
    p = errors / float(n)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return 100 * max(0.0, centre - half), 100 * min(1.0, centre + half)


def fundus_sets(folder):
    """(name, rgb) of every photograph, and the grey and green versions of each."""
    paths = sorted(p for p in glob.glob(os.path.join(folder, "**", "*"), recursive=True)
                   if p.lower().endswith(SUFFIXES))
    colour, grey, green = [], [], []
    for path in paths:
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        if bgr is None:
            print("  unreadable, left out: {}".format(path))
            continue
        name = os.path.relpath(path, folder)
        rgb = np.ascontiguousarray(bgr[..., ::-1])
        colour.append((name, rgb))
        grey.append((name, cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)))
        green.append((name, np.ascontiguousarray(rgb[..., 1])))
    return colour, grey, green


def oct_sets(seeds):
    plain, false_colour, tilted, smoothed = [], [], [], []
    rng = np.random.RandomState(12345)
    for rows, cols in SIZES:
        for seed in range(seeds):
            name = "bscan {}x{} seed {}".format(cols, rows, seed)
            scan = bscan(rows, cols, seed=seed)
            plain.append((name + " 8-bit", scan))
            deep = bscan(rows, cols, seed=seed + 10000, dtype=np.uint16)
            plain.append((name + " 16-bit", np.rint(deep * (255.0 / max(1, deep.max()))).astype(np.uint8)))
            label, cmap = COLOUR_MAPS[seed % len(COLOUR_MAPS)]
            false_colour.append((name + " " + label, np.ascontiguousarray(cv2.applyColorMap(scan, cmap)[..., ::-1])))
            angle = rng.uniform(-10, 10)
            turn = cv2.getRotationMatrix2D((cols / 2.0, rows / 2.0), angle, 1.0)
            tilted.append(("{} turned {:+.1f} deg".format(name, angle), cv2.warpAffine(scan, turn, (cols, rows))))
            smoothed.append((name + " blurred", cv2.GaussianBlur(scan, (0, 0), 1.5)))
    return plain, false_colour, tilted, smoothed


def lesion_set(seeds):
    try:
        from training.synthetic_oct import CLASSES, make_bscan
    except ImportError as exc:
        return None, "training.synthetic_oct is not in this checkout ({})".format(exc)
    items = []
    for rows, cols in SIZES:
        for seed in range(seeds):
            label = CLASSES[seed % len(CLASSES)]
            items.append(("synthetic_oct {} {}x{} seed {}".format(label, cols, rows, seed),
                          make_bscan(label, seed, rows=rows, cols=cols)))
    return items, ""


def evaluate(title, truth, items, worst=5):
    times_ms, reasons = [], []
    for _, image in items:
        start = time.perf_counter()
        guess = guess_modality(image)
        times_ms.append(1000 * (time.perf_counter() - start))
        reasons.append(guess)
    wrong = [i for i, g in enumerate(reasons) if g.modality != truth]
    low, high = wilson(len(wrong), len(items))
    weak = sum(abs(g.score) < 0.5 for g in reasons)
    print("{:<16} n={:<5} errors={:<4} error {:6.2f} % (95 % CI {:.2f}-{:.2f} %)  weak(|score|<0.5)={:<4}"
          " median {:.3f} ms/guess".format(title, len(items), len(wrong), 100.0 * len(wrong) / max(1, len(items)),
                                            low, high, weak, float(np.median(times_ms)) if times_ms else 0.0))
    direction = -1 if truth == "oct" else 1        # worst = most OCT-like fundus, least OCT-like OCT
    order = sorted(range(len(items)), key=lambda i: -direction * reasons[i].score)
    for i in order[:worst]:
        print("    {} {:<40} {}".format("WRONG" if reasons[i].modality != truth else "ok   ", items[i][0],
                                       reasons[i].reason))
    return len(wrong), len(items)


def time_large(rgb, repeats):
    big = cv2.resize(rgb, (2000, 2000), interpolation=cv2.INTER_LINEAR)
    for _ in range(3):
        guess_modality(big)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        guess_modality(big)
        samples.append(1000 * (time.perf_counter() - start))
    return float(np.median(samples)), float(np.min(samples))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data", "fundus4"),
                        help="folder of colour fundus photographs (searched recursively)")
    parser.add_argument("--seeds", type=int, default=25, help="synthetic B-scans per size (default 25)")
    parser.add_argument("--repeats", type=int, default=200, help="timed guesses on the 2000x2000 photograph")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    print("Python {}, OpenCV {} (1 thread), NumPy {}; {} cores, load average {}".format(
        platform.python_version(), cv2.__version__, np.__version__, os.cpu_count(),
        " ".join("{:.2f}".format(v) for v in load)))
    if not os.path.isdir(args.data):
        print("no fundus folder at {} (pass --data)".format(args.data))
        return 2
    print("fundus photographs: {}".format(os.path.abspath(args.data)))
    colour, grey, green = fundus_sets(args.data)
    plain, false_colour, tilted, smoothed = oct_sets(args.seeds)
    lesions, why = lesion_set(args.seeds)
    totals = {"fundus": [0, 0], "oct": [0, 0]}
    for title, truth, items in (("fundus", "fundus", colour), ("fundus-grey", "fundus", grey),
                                ("fundus-green", "fundus", green), ("oct", "oct", plain),
                                ("oct-falsecolour", "oct", false_colour), ("oct-tilted", "oct", tilted),
                                ("oct-smoothed", "oct", smoothed),
                                ("oct-lesion", "oct", lesions)):
        if items is None:
            print("{:<16} absent: {}".format(title, why))
            continue
        wrong, n = evaluate(title, truth, items)
        totals[truth][0] += wrong
        totals[truth][1] += n
    for truth, (wrong, n) in sorted(totals.items()):
        low, high = wilson(wrong, n)
        print("all {:<12} n={:<6} errors={:<4} error {:.2f} % (95 % CI {:.2f}-{:.2f} %)".format(
            truth, n, wrong, 100.0 * wrong / max(1, n), low, high))
    if colour:
        median_ms, best_ms = time_large(colour[0][1], args.repeats)
        print("one guess on {} enlarged to 2000x2000: median {:.3f} ms, best {:.3f} ms ({} repeats)".format(
            colour[0][0], median_ms, best_ms, args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
