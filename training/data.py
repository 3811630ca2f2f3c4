"""Datasets: class folders or a CSV manifest, with the grouping rules of fundus4.

A sample is (path, label, group). Images in one group (a patient's two eyes,
augmented copies of one source image) are inseparable when splitting.
"""
import csv
import hashlib
import os
import re
from typing import NamedTuple

import numpy as np

from edge.io.decode import IMAGE_SUFFIXES, ImageError, read_image
from edge.preprocess import prepare


class Sample(NamedTuple):
    path: str
    label: str
    group: str
    split: str = ""


# fundus4 README: NNNN_left/right = one patient, both eyes (the number may recur
# across classes); _N_XXXXXXX = augmented copies of one source image N.
_PATIENT = re.compile(r"^(\d+)_(left|right)$", re.IGNORECASE)
_AUGMENTED = re.compile(r"^_(\d+)_\d+$")


def group_of(path, label):
    """The group key of an image from its file name, following the data README."""
    stem = os.path.splitext(os.path.basename(path))[0]
    match = _PATIENT.match(stem)
    if match:
        return "patient:" + match.group(1)
    match = _AUGMENTED.match(stem)
    if match:
        return "source:" + match.group(1)
    return "image:{}/{}".format(label, stem)


def scan_folder(root):
    """Samples from class folders (ImageFolder layout), sorted for reproducibility."""
    if not os.path.isdir(root):
        raise FileNotFoundError("{}: data folder not found".format(root))
    samples = []
    for label in sorted(os.listdir(root)):
        class_dir = os.path.join(root, label)
        if not os.path.isdir(class_dir) or label.startswith("."):
            continue
        for dirpath, _, files in os.walk(class_dir):
            for name in sorted(files):
                if name.lower().endswith(IMAGE_SUFFIXES):
                    path = os.path.join(dirpath, name)
                    samples.append(Sample(path, label, group_of(path, label)))
    if not samples:
        raise ValueError("{}: no images found in class folders".format(root))
    return sorted(samples)


def read_manifest(csv_path):
    """Samples from a CSV with columns path, label and optionally group, split.

    Relative paths are taken relative to the CSV's folder. A missing group
    falls back to the file-name grouping rules.
    """
    base = os.path.dirname(os.path.abspath(csv_path))
    samples = []
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"path", "label"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError("{}: missing column(s) {}".format(csv_path, sorted(missing)))
        for line, row in enumerate(reader, start=2):
            if not row["path"] or not row["label"]:
                raise ValueError("{}:{}: empty path or label".format(csv_path, line))
            path = row["path"] if os.path.isabs(row["path"]) else os.path.join(base, row["path"])
            group = row.get("group") or group_of(path, row["label"])
            samples.append(Sample(path, row["label"], group, row.get("split") or ""))
    if not samples:
        raise ValueError("{}: no rows".format(csv_path))
    return samples


def write_manifest(samples, csv_path, relative_to=None, side_column="split"):
    """path,label,group,<side_column> rows, paths relative to the CSV's folder (a split, or CV folds)."""
    base = os.path.abspath(relative_to or os.path.dirname(os.path.abspath(csv_path)))
    os.makedirs(os.path.dirname(os.path.abspath(csv_path)), exist_ok=True)
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "group", side_column])
        for s in samples:
            writer.writerow([os.path.relpath(os.path.abspath(s.path), base), s.label, s.group, s.split])


def split_sha256(samples):
    """sha256 of the sorted "file name,label,split" lines: names a split independently of where the images live."""
    listing = "\n".join("{},{},{}".format(os.path.basename(s.path), s.label, s.split) for s in sorted(samples))
    return hashlib.sha256(listing.encode()).hexdigest()


def load_samples(source):
    """A folder of class folders or a CSV manifest."""
    return read_manifest(source) if str(source).lower().endswith(".csv") else scan_folder(source)


def cache_key(samples, spec):
    digest = hashlib.sha256(repr(sorted((s.path, os.path.getsize(s.path)) for s in samples)).encode())
    # only the steps that shape the pixels: mean/std are applied later, per network
    digest.update(repr((sorted(spec["roi"].items()), spec["resize"])).encode())
    return digest.hexdigest()[:16]


def prepare_images(samples, spec, cache_dir=None, log=print):
    """Decode and apply the device's ROI + resize to every sample: N x H x W x 3 uint8.

    The result is cached in ``cache_dir`` keyed by the files and the spec, so
    later runs skip the decoding. A file that cannot be decoded is an error
    naming the file: training data must be clean.
    """
    path = None
    if cache_dir:
        path = os.path.join(cache_dir, "prepared-{}.npy".format(cache_key(samples, spec)))
        if os.path.isfile(path):
            return np.load(path)
    h, w = spec["resize"]["size"]
    out = np.empty((len(samples), h, w, 3), dtype=np.uint8)
    for i, s in enumerate(samples):
        try:
            out[i] = prepare(read_image(s.path), spec)
        except ImageError as exc:
            raise ImageError("while preparing training data: {}".format(exc))
        if log and (i + 1) % 500 == 0:
            log("prepared {}/{} images".format(i + 1, len(samples)))
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        np.save(path + ".tmp.npy", out)
        os.replace(path + ".tmp.npy", path)
    return out
