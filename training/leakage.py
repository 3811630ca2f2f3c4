"""Leakage checks, run before any training: the same picture must not be on two sides of a split.

Three checks over samples that carry a side (a split name, or a CV fold):

    groups      no group (patient, source image) on two sides (training.splits.check_no_leak)
    exact       no two files with the same bytes (sha256 of the file) or the same decoded pixels
                (sha256 of the RGB array) on two sides: a failure, with the pairs listed
    near        pairs on two sides whose perceptual hashes are within a Hamming threshold: re-saved,
                resized or re-encoded copies. Reported with counts per class pair and per source kind.

The perceptual hash is a 64-bit DCT hash (pHash) of the disc-cropped (the device's fundus_disc region of
interest), grey, 32x32 image: the 8x8 lowest frequencies but the DC term, each bit = coefficient above
their median. Cropping the disc first makes a copy with a different black border or canvas size hash
the same. ``measure_threshold`` prints the distance distribution the threshold is chosen from.

NumPy + OpenCV only (no torch), so the check is cheap to run before a training run.
"""
import hashlib
import os
from collections import Counter, defaultdict
from typing import NamedTuple

import cv2
import numpy as np

from edge.io.decode import ImageError, read_image
from edge.preprocess import region_of_interest
from training.sources import source_kind
from training.splits import LeakError, check_no_leak

HASH_BITS = 63
# Chosen from the distance distribution that `retina-train leakage --measure` prints on fundus4
# (measure_distances): of the 368 pairs of known augmented copies (_N_* of one N in one class folder),
# 45 % are within 4 bits, and 0.044 % of the 5.8 million pairs of images of different groups are (2,524
# pairs; the ones looked at were featureless, blurred cataract photographs, and real copies: an ODIR
# NNNN_left image and an augmented _N_ copy of it, which the file-name groups do not link).
# 2 bits catches 26 % of the copies, 6 bits 61 % with 4 times the different-group pairs. Fundus
# photographs look alike at 8x8 DCT resolution, so this hash finds close copies, not every augmented one.
NEAR_THRESHOLD = 4
_ROI = {"kind": "fundus_disc", "threshold": 10, "pad": "square"}
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


class Fingerprint(NamedTuple):
    file_sha256: str
    pixel_sha256: str
    phash: tuple  # 8 x 63-bit ints, one per orientation


def phash(rgb):
    """The 63-bit DCT hashes of the disc-cropped grey image under the 8 rotations/mirrorings, as ints.

    Augmented copies in fundus4 are flipped and rotated as well as re-coloured: the distance between two
    images is the smallest over the 8 orientations of one of them (``hamming_matrix``).
    """
    square, _ = region_of_interest(rgb, _ROI)
    grey = cv2.cvtColor(square, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    out = []
    for k in range(4):
        for view in (np.rot90(small, k), np.rot90(small, k)[:, ::-1]):
            low = cv2.dct(np.ascontiguousarray(view))[:8, :8].flatten()[1:]  # 63 coefficients, DC dropped
            out.append(int("".join("1" if b else "0" for b in low > np.median(low)), 2))
    return tuple(out)


def fingerprint(path):
    with open(path, "rb") as f:
        data = f.read()
    rgb = read_image(path)
    pixels = hashlib.sha256(repr(rgb.shape).encode() + np.ascontiguousarray(rgb).tobytes()).hexdigest()
    return Fingerprint(hashlib.sha256(data).hexdigest(), pixels, phash(rgb))


def fingerprints(samples, log=print):
    """path -> Fingerprint for every sample; a file that cannot be decoded is an error naming it."""
    out = {}
    for i, s in enumerate(samples):
        try:
            out[s.path] = fingerprint(s.path)
        except ImageError as exc:
            raise ImageError("while checking for leakage: {}".format(exc))
        if log and (i + 1) % 1000 == 0:
            log("hashed {}/{} images".format(i + 1, len(samples)))
    return out


def _bytes(hashes):
    return np.array(hashes, dtype=np.uint64).view(np.uint8).reshape(len(hashes), -1, 8)


def hamming_matrix(hashes_a, hashes_b):
    """Distances between two lists of phash tuples: len(a) x len(b) uint8, the smallest Hamming distance
    between one image's upright hash and any orientation of the other, both ways round (the median
    threshold makes a turned image's bits not quite a permutation of the upright ones: this keeps the
    distance symmetric)."""
    a, b = _bytes(hashes_a), _bytes(hashes_b)
    out = np.full((len(a), len(b)), 255, dtype=np.uint8)
    for v in range(b.shape[1]):
        for left, right in ((a[:, 0, None], b[None, :, v]), (a[:, v, None], b[None, :, 0])):
            d = np.zeros((len(a), len(b)), dtype=np.uint8)
            for k in range(8):
                d += _POPCOUNT[left[..., k] ^ right[..., k]]
            np.minimum(out, d, out=out)
    return out


def near_pairs(samples, prints, threshold):
    """(i, j, distance) for i < j with Hamming distance <= threshold, any side; chunked over rows."""
    hashes = [prints[s.path].phash for s in samples]
    pairs = []
    for start in range(0, len(samples), 512):
        d = hamming_matrix(hashes[start:start + 512], hashes)
        rows, cols = np.nonzero(d <= threshold)
        for r, c in zip(rows.tolist(), cols.tolist()):
            i = start + r
            if i < c:
                pairs.append((i, c, int(d[r, c])))
    return pairs


def exact_pairs(samples, prints):
    """(i, j, how) for i < j whose file bytes or decoded pixels are identical."""
    pairs = []
    for how, key in (("file", lambda f: f.file_sha256), ("pixels", lambda f: f.pixel_sha256)):
        by_hash = defaultdict(list)
        for i, s in enumerate(samples):
            by_hash[key(prints[s.path])].append(i)
        for members in by_hash.values():
            pairs += [(i, j, how) for n, i in enumerate(members) for j in members[n + 1:]]
    return pairs


class LeakReport(NamedTuple):
    images: int
    exact: list  # (sample a, sample b, "file"|"pixels"), on two sides
    near: list  # (sample a, sample b, distance), on two sides, not exact
    near_same_side: int
    threshold: int

    def near_by_class_pair(self):
        return Counter(tuple(sorted((a.label, b.label))) for a, b, _ in self.near)

    def near_by_source_kind(self):
        return Counter(tuple(sorted((source_kind(a.path), source_kind(b.path)))) for a, b, _ in self.near)


def check(samples, prints=None, threshold=NEAR_THRESHOLD, log=print):
    """Run the three checks on samples whose ``split`` names their side; returns a LeakReport.

    Raises LeakError for a group on two sides (before hashing anything). Exact duplicates are
    returned, not raised: ``require_clean`` raises on them after they are printed.
    """
    check_no_leak(samples)
    prints = prints if prints is not None else fingerprints(samples, log)
    exact = [(samples[i], samples[j], how) for i, j, how in exact_pairs(samples, prints)
             if samples[i].split != samples[j].split]
    exact_keys = {(a.path, b.path) for a, b, _ in exact}
    near, same = [], 0
    for i, j, d in near_pairs(samples, prints, threshold):
        a, b = samples[i], samples[j]
        if a.split == b.split:
            same += 1
        elif (a.path, b.path) not in exact_keys:
            near.append((a, b, d))
    return LeakReport(len(samples), _unique(exact), near, same, threshold)


def _unique(exact):
    """One line per pair: a pair identical in bytes is identical in pixels too."""
    seen, out = set(), []
    for a, b, how in exact:
        if (a.path, b.path) not in seen:
            seen.add((a.path, b.path))
            out.append((a, b, how))
    return out


def format_report(report, root=None, limit=20):
    def name(s):
        return os.path.relpath(s.path, root) if root else s.path
    lines = ["leakage: {} images; groups on two sides: none".format(report.images),
             "exact duplicates on two sides (file bytes or decoded pixels): {}".format(len(report.exact))]
    lines += ["  {} ({}) == {} ({}) [{}]".format(name(a), a.split, name(b), b.split, how)
              for a, b, how in report.exact[:limit]]
    lines.append("near-duplicates on two sides (pHash Hamming distance <= {} of {} bits): {} pairs; "
                 "{} more within one side".format(report.threshold, HASH_BITS, len(report.near),
                                                  report.near_same_side))
    for (x, y), n in sorted(report.near_by_class_pair().items()):
        lines.append("  classes {} / {}: {}".format(x, y, n))
    for (x, y), n in sorted(report.near_by_source_kind().items()):
        lines.append("  source kinds {} / {}: {}".format(x, y, n))
    lines += ["  d={:2d}  {} ({}) ~ {} ({})".format(d, name(a), a.split, name(b), b.split)
              for a, b, d in sorted(report.near, key=lambda t: t[2])[:limit]]
    return "\n".join(lines)


def require_clean(report):
    if report.exact:
        raise LeakError("{} exact duplicate pair(s) on two sides, e.g. {} and {}: remove one copy or put "
                        "them in one group".format(len(report.exact), report.exact[0][0].path,
                                                   report.exact[0][1].path))


def measure_distances(samples, prints):
    """Hash distances of three kinds of pairs: name -> uint8 array.

    known copies      two _N_* images of one N in one class folder (augmented copies of one image)
    patient eyes      NNNN_left vs NNNN_right of one patient (different eyes: not copies)
    different groups  every pair of images of different groups
    """
    hashes = [prints[s.path].phash for s in samples]
    groups = np.array([s.group for s in samples])
    labels = np.array([s.label for s in samples])
    kinds = np.array([source_kind(s.path) for s in samples])
    out = {"known copies": [], "patient eyes": [], "different groups": []}
    for start in range(0, len(samples), 512):
        d = hamming_matrix(hashes[start:start + 512], hashes)
        rows = np.arange(start, min(start + 512, len(samples)))
        upper = rows[:, None] < np.arange(len(samples))[None, :]
        same = groups[rows, None] == groups[None, :]
        copy = same & (labels[rows, None] == labels[None, :]) & (kinds[rows, None] == "augmented")
        eyes = same & (kinds[rows, None] == "patient")
        out["known copies"].append(d[upper & copy])
        out["patient eyes"].append(d[upper & eyes])
        out["different groups"].append(d[upper & ~same])
    return {k: np.concatenate(v) for k, v in out.items()}


def format_distances(distances, thresholds=(0, 2, 4, 6, 8, 10)):
    lines = ["pHash distance (bits of {}, smallest over 8 orientations) by kind of pair:".format(HASH_BITS)]
    for name, d in distances.items():
        q = np.percentile(d, [0, 5, 25, 50, 75, 95, 100]) if len(d) else [float("nan")] * 7
        lines.append("  {:<17} n={:8d}  min/5/25/50/75/95/max % = {}".format(
            name, len(d), "/".join("{:.0f}".format(v) for v in q)))
    lines.append("  threshold  known copies within   different-group pairs within")
    copies, others = distances["known copies"], distances["different groups"]
    for t in thresholds:
        lines.append("  {:9d}  {:6.1f} % ({:4d})        {:8.4f} % ({:d})".format(
            t, 100.0 * (copies <= t).mean() if len(copies) else 0, int((copies <= t).sum()),
            100.0 * (others <= t).mean() if len(others) else 0, int((others <= t).sum())))
    return "\n".join(lines)


def load_sides(args):
    """Samples with their side: a folds CSV (side = fold), a split CSV (side = split) or --data split here.

    A CSV's relative paths that do not exist beside it are looked up under --data (a bundle's split.csv
    names images relative to the data root).
    """
    from training import cv, data as datalib
    if args.folds:
        samples = cv.read_folds(args.folds)
        csv_path = args.folds
    elif args.split:
        samples = datalib.read_manifest(args.split)
        csv_path = args.split
        if not all(s.split for s in samples):
            raise ValueError("{}: rows without a split".format(args.split))
    else:
        samples = cv.assign_folds(datalib.load_samples(args.data), 5)
        return samples, "5 grouped folds made from {} (seed 0)".format(args.data)
    base = os.path.dirname(os.path.abspath(csv_path))
    moved = [s._replace(path=os.path.join(args.data, os.path.relpath(s.path, base)))
             if not os.path.isfile(s.path) else s for s in samples]
    missing = [s.path for s in moved if not os.path.isfile(s.path)]
    if missing:
        raise FileNotFoundError("{}: {} image(s) not found beside it or under {}, e.g. {}".format(
            csv_path, len(missing), args.data, missing[0]))
    return moved, csv_path


def main(args, log=print):
    """retina-train leakage: exit 0 clean, 1 on a group or an exact duplicate on two sides."""
    samples, what = load_sides(args)
    log("checking {} ({} images, sides {})".format(what, len(samples), sorted({s.split for s in samples})))
    prints = fingerprints(samples, log)
    if args.measure:
        log(format_distances(measure_distances(samples, prints)))
    try:
        report = check(samples, prints, threshold=args.threshold, log=log)
        log(format_report(report, root=args.data))
        if args.shortcut:
            from training import shortcut
            sides = sorted({s.split for s in samples})
            log(shortcut.format_result(shortcut.cross_validate(samples, [sides.index(s.split) for s in samples])))
        require_clean(report)
    except LeakError as exc:
        log("retina-train leakage: LEAK: {}".format(exc))
        return 1
    log("no group and no exact duplicate on two sides")
    return 0


def add_arguments(p):
    p.add_argument("--data", required=True, help="the image folder (class folders) (required)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--split", default=None, help="a split CSV path,label,group,split to check "
                                                     "(default %(default)s)")
    which.add_argument("--folds", default=None, help="a folds CSV path,label,group,fold to check, as written by "
                                                     "retina-train cv (default %(default)s; with neither, 5 "
                                                     "grouped folds are made from --data)")
    p.add_argument("--threshold", type=int, default=NEAR_THRESHOLD,
                   help="largest pHash Hamming distance counted as a near-duplicate (default %(default)s)")
    p.add_argument("--measure", action="store_true",
                   help="print the hash distance distribution of known copies vs different groups first")
    p.add_argument("--shortcut", action="store_true",
                   help="also score a source-only classifier (size, suffix, JPEG quality, file size) with "
                        "the sides as folds")
