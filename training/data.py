"""Datasets: class folders or a CSV manifest of fundus photographs or OCT B-scans, with their grouping rules.

A sample is (path, label, group). Images in one group (a patient's two eyes,
augmented copies of one source image, the B-scans of one OCT patient or
volume) are inseparable when splitting.

Files: JPEG, PNG, BMP, TIFF (8 or 16 bit, grey or colour) read by
``edge.io.decode``, and DICOM (``.dcm``/``.dicom``, OP or OPT) read by
``edge.io.dicom``. A multi-frame DICOM is one sample per frame, written
``path#frame=N`` (N from 0, the number ``retina-edge`` shows as ``path#N``
and the ledger's frame_index); a DICOM path without ``#frame=`` in a folder
or a CSV stands for all its frames. A CSV may also name one frame that way.

Grouping rules, by file name (fundus4 README, OCT2017) or DICOM header:

    NNNN_left / NNNN_right        patient:NNNN   (fundus4: one patient, both eyes; any class)
    _N_XXXXXXX                    source:N       (fundus4: augmented copies of one source image N)
    CLASS-PATIENT-N (OCT2017)     patient:PATIENT (Kermany et al.: the B-scans of one patient; any class)
    DICOM with PatientID          patient:<PatientID> (both eyes, every study and series of the patient)
    DICOM, no PatientID           study:<StudyInstanceUID>, else series:<SeriesInstanceUID>
    DICOM with none of these      file:<path>, with a warning (its frames still stay together)
    anything else                 image:<label>/<stem>

A CSV's ``group`` column, where given, is taken as is; ``training.splits.check_no_leak`` still
refuses a split that puts frames of one DICOM file, or B-scans of one OCT2017 patient, on two sides.
"""
import csv
import functools
import hashlib
import os
import re
import sys
from typing import NamedTuple

import numpy as np

from edge.io.decode import DICOM_SUFFIXES, IMAGE_SUFFIXES, ImageError, read_image
from edge.io.dicom import Volume, import_pydicom
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
# OCT2017 (Kermany et al. 2018): CLASS-PATIENT-N, e.g. CNV-1016042-1.jpeg; a patient may appear in several classes
_OCT2017 = re.compile(r"^([A-Za-z]+)-([A-Za-z0-9]+)-(\d+)$")
FRAME_MARK = "#frame="


def warn(message):
    print("warning: " + message, file=sys.stderr)


def split_frame(path):
    """(file, frame index or None) of a sample path; ``a.dcm#frame=3`` -> ("a.dcm", 3)."""
    file, mark, index = str(path).rpartition(FRAME_MARK)
    if mark and index.isdigit():
        return file, int(index)
    return str(path), None


def frame_path(file, index):
    return "{}{}{}".format(file, FRAME_MARK, index)


def is_dicom(path):
    return split_frame(path)[0].lower().endswith(DICOM_SUFFIXES)


def oct2017_patient(path):
    """PATIENT of an OCT2017-style name CLASS-PATIENT-N, else None."""
    match = _OCT2017.match(os.path.splitext(os.path.basename(split_frame(path)[0]))[0])
    return match.group(2) if match else None


class DicomTags(NamedTuple):
    modality: str  # the DICOM Modality code (OP, OPT, ...) or ""
    patient: str
    study: str
    series: str
    frames: int


@functools.lru_cache(maxsize=None)
def dicom_tags(file):
    """The header facts of a DICOM file that the grouping and modality rules need (pixels not read)."""
    try:
        pydicom = import_pydicom()
    except ImportError as exc:
        raise ImageError("{}: {}".format(file, exc))
    try:
        ds = pydicom.dcmread(file, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many types for broken files
        raise ImageError("{}: not a readable DICOM file ({}: {})".format(file, type(exc).__name__, exc))
    text = lambda key: str(ds.get(key, "") or "").strip()  # noqa: E731
    return DicomTags(text("Modality").upper(), text("PatientID"), text("StudyInstanceUID"),
                     text("SeriesInstanceUID"), int(ds.get("NumberOfFrames", 1) or 1))


def dicom_group(file, log=warn):
    """patient:<PatientID>, else study:<uid>, else series:<uid>, else file:<path> with a warning."""
    tags = dicom_tags(file)
    for prefix, value in (("patient", tags.patient), ("study", tags.study), ("series", tags.series)):
        if value:
            return "{}:{}".format(prefix, value)
    if log:
        log("{}: DICOM without PatientID, StudyInstanceUID or SeriesInstanceUID: it is a group of its own, so "
            "other files of the same patient may land on the other side of the split".format(file))
    return "file:" + os.path.abspath(file)


def group_of(path, label, log=warn):
    """The group key of an image (or a DICOM frame) from its file name or DICOM header (module docstring)."""
    file = split_frame(path)[0]
    if is_dicom(file):
        return dicom_group(file, log)
    stem = os.path.splitext(os.path.basename(file))[0]
    match = _PATIENT.match(stem)
    if match:
        return "patient:" + match.group(1)
    match = _AUGMENTED.match(stem)
    if match:
        return "source:" + match.group(1)
    patient = oct2017_patient(file)
    if patient:
        return "patient:" + patient
    return "image:{}/{}".format(label, stem)


def bound_keys(path):
    """Keys that must stay on one side whatever group a CSV gives: the DICOM file of a frame (and its
    patient), an OCT2017 patient."""
    file = split_frame(path)[0]
    keys = []
    if is_dicom(file):
        keys.append("file:" + os.path.abspath(file))
        if dicom_tags(file).patient:
            keys.append("patient:" + dicom_tags(file).patient)
    elif oct2017_patient(file):
        keys.append("patient:" + oct2017_patient(file))
    return keys


def expand(path, label, group=None, split="", log=warn):
    """Samples of one file: a DICOM without a frame mark is one sample per frame, all in one group."""
    file, index = split_frame(path)
    group = group or group_of(file, label, log)
    if not is_dicom(file) or index is not None:
        return [Sample(path, label, group, split)]
    frames = dicom_tags(file).frames
    if frames == 1:
        return [Sample(file, label, group, split)]
    return [Sample(frame_path(file, i), label, group, split) for i in range(frames)]


def scan_folder(root, log=warn):
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
                if name.lower().endswith(IMAGE_SUFFIXES + DICOM_SUFFIXES) and not name.startswith("."):
                    samples += expand(os.path.join(dirpath, name), label, log=log)
    if not samples:
        raise ValueError("{}: no images found in class folders".format(root))
    return sorted(samples)


def read_manifest(csv_path, log=warn):
    """Samples from a CSV with columns path, label and optionally group, split.

    Relative paths are taken relative to the CSV's folder. A missing group
    falls back to the grouping rules; a DICOM path without ``#frame=N`` is all its frames.
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
            try:
                samples += expand(path, row["label"], row.get("group") or None, row.get("split") or "", log)
            except ImageError as exc:
                raise ValueError("{}:{}: {}".format(csv_path, line, exc))
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


def load_samples(source, log=warn):
    """A folder of class folders or a CSV manifest."""
    return read_manifest(source, log) if str(source).lower().endswith(".csv") else scan_folder(source, log)


def cache_key(samples, spec):
    digest = hashlib.sha256(repr(sorted((s.path, os.path.getsize(split_frame(s.path)[0])) for s in samples)).encode())
    # only the steps that shape the pixels: mean/std are applied later, per network; GREY keeps one channel
    digest.update(repr((sorted(spec["roi"].items()), spec["resize"])).encode())
    if spec["colour_order"] == "GREY":
        digest.update(b"GREY")
    return digest.hexdigest()[:16]


class SampleReader(object):
    """Reads sample paths to HxWx3 uint8 RGB with edge's decoders: images by ``edge.io.decode``, DICOM frames
    by ``edge.io.dicom`` (the last volume is kept, so the frames of one file are decoded once)."""

    def __init__(self):
        self._file, self._volume = None, None

    def __call__(self, path):
        file, index = split_frame(path)
        if not is_dicom(file):
            return read_image(file)
        if file != self._file:
            try:
                with open(file, "rb") as f:
                    data = f.read()
            except (IOError, OSError) as exc:
                raise ImageError("{}: cannot read file ({})".format(file, exc))
            self._file, self._volume = file, Volume(data, file)
        if (index or 0) >= self._volume.frames:
            raise ImageError("{}: frame {} asked for, the file has {} frame(s)".format(file, index,
                                                                                    self._volume.frames))
        return self._volume.frame(index or 0)


def read_sample(path):
    """One sample path (an image, a DICOM file's first frame, or ``file.dcm#frame=N``) as HxWx3 uint8 RGB."""
    return SampleReader()(path)


def detect_modality(samples, probe=32):
    """("fundus"|"oct", reason) from the data: DICOM Modality tags (OP -> fundus, OPT -> oct) where every
    DICOM file has one, else grey images (R == G == B in up to ``probe`` images spread over the set) -> oct.
    Raises ValueError for a set that mixes both, naming --modality."""
    files = sorted(set(split_frame(s.path)[0] for s in samples))
    dicoms = [f for f in files if is_dicom(f)]
    codes = {dicom_tags(f).modality for f in dicoms}
    named = {"OP": "fundus", "OPT": "oct"}
    if dicoms and codes <= set(named) and len(codes) == 1 and len(dicoms) == len(files):
        code = codes.pop()
        return named[code], "every file is DICOM with Modality {}".format(code)
    if len(codes & set(named)) > 1:
        raise ValueError("the data mixes DICOM OP (fundus) and OPT (OCT) files; train one modality at a time, "
                         "or say which with --modality")
    images = [f for f in files if not is_dicom(f)]
    step = max(1, len(images) // probe)
    chosen = images[::step][:probe]
    grey = sum(_is_grey(read_image(f)) for f in chosen)
    if chosen and grey == len(chosen) and codes <= {"OPT"}:
        return "oct", "{} of {} sampled images are grey{}".format(
            grey, len(chosen), " and the DICOM files say {}".format(sorted(codes)) if codes else "")
    if grey == 0 and codes <= {"OP"}:
        return "fundus", "{} sampled images are colour{}".format(len(chosen), " and DICOM says OP" if codes else "")
    raise ValueError("cannot tell the modality: {} of {} sampled images are grey (DICOM Modality {}); "
                     "say which with --modality fundus|oct".format(grey, len(chosen), sorted(codes) or "none"))


def _is_grey(rgb):
    return bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]))


def prepare_images(samples, spec, cache_dir=None, log=print):
    """Decode and apply the device's ROI + resize to every sample: N x H x W x C uint8 (C = 1 for GREY).

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
    channels = 1 if spec["colour_order"] == "GREY" else 3
    out = np.empty((len(samples), h, w, channels), dtype=np.uint8)
    reader = SampleReader()
    for i, s in enumerate(samples):
        try:
            out[i] = prepare(reader(s.path), spec)
        except ImageError as exc:
            raise ImageError("while preparing training data: {}".format(exc))
        if log and (i + 1) % 500 == 0:
            log("prepared {}/{} images".format(i + 1, len(samples)))
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = "{}.{}.tmp.npy".format(path, os.getpid())  # processes preparing at once (cv --jobs) each write theirs
        np.save(tmp, out)
        os.replace(tmp, path)
    return out
