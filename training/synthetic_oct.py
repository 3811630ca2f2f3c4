"""SYNTHETIC OCT B-scans in four classes, for tests and smoke runs: not patient data, not a model of disease.

No open OCT data can be fetched on the development machine, so the OCT path is
exercised with images made here. A B-scan is a dark vitreous over a curved,
layered retina band (nerve fibre layer, plexiform and nuclear layers, the
photoreceptor line, the retinal pigment epithelium (RPE)) over a diffuse
choroid, blurred axially and multiplied by Rayleigh speckle. Each class adds
its own synthetic lesion, at a random place and size:

    CNV     one subretinal hyper-reflective mass that lifts the RPE (and the
            retina above it)
    DME     a thickened retina holding dark intraretinal fluid cysts
    DRUSEN  several small dome-shaped bumps of the RPE over moderately
            reflective material
    NORMAL  none

Position, curvature, tilt, foveal pit, thickness, brightness, gamma and size
vary from image to image, and images are written as 8-bit or 16-bit PNG,
JPEG or 16-bit TIFF, so a network has to find the lesion; nothing else tells
the classes apart. ``write_dataset`` writes OCT2017-style class folders
(``CNV-<patient>-<n>.png``, several B-scans per synthetic patient) and, with
``dicom=True``, single- and multi-frame OPT DICOM files whose PatientID,
Laterality, StudyInstanceUID and SeriesInstanceUID are set.

NumPy + OpenCV (pydicom only for DICOM); no torch.
"""
import io
import os

import cv2
import numpy as np

CLASSES = ("CNV", "DME", "DRUSEN", "NORMAL")
SYNTHETIC_NOTE = "SYNTHETIC.txt"
NOTE_TEXT = ("SYNTHETIC OCT B-scans made by `retina-train synth-oct` (training/synthetic_oct.py): drawn by a "
             "program, not patient data; lesions are cartoons of CNV, DME and drusen. Good for testing the "
             "OCT path end to end; a model trained on them says nothing about real OCT.\n")
OPT_IMAGE = "1.2.840.10008.5.1.4.1.1.77.1.5.4"  # Ophthalmic Tomography Image Storage (DICOM PS3.4)
EXPLICIT_LE = "1.2.840.10008.1.2.1"

# reflectivity by normalised depth in the retina (0 = inner limiting membrane, 1 = RPE's outer border)
_DEPTHS = np.array([0.0, 0.08, 0.14, 0.30, 0.40, 0.48, 0.56, 0.78, 0.84, 0.88, 0.92, 1.0])
_REFLECT = np.array([0.85, 0.75, 0.45, 0.45, 0.18, 0.50, 0.14, 0.12, 0.55, 0.25, 0.95, 0.95])


def _gauss(x, centre, width):
    return np.exp(-0.5 * ((x - centre) / width) ** 2)


def _geometry(rng, rows, cols, label):
    """Per-column curves: ilm (inner border), rpe (lifted RPE's outer border), bruch (where it belongs)."""
    x = np.arange(cols, dtype=np.float64)
    u = (x - cols / 2.0) / cols
    base = rows * rng.uniform(0.22, 0.42)
    top = base + rows * (rng.uniform(-0.35, 0.35) * u ** 2 + rng.uniform(-0.12, 0.12) * u)
    fovea = cols * rng.uniform(0.35, 0.65)
    top += rows * rng.uniform(0.015, 0.05) * _gauss(x, fovea, cols * rng.uniform(0.05, 0.1))
    thick = rows * rng.uniform(0.17, 0.24) * np.ones(cols)
    lift = np.zeros(cols)
    inner_lift = 0.0
    lesion = {}
    if label == "CNV":
        centre, width = cols * rng.uniform(0.2, 0.8), cols * rng.uniform(0.05, 0.12)
        lift = thick.mean() * rng.uniform(0.35, 0.7) * _gauss(x, centre, width) ** 0.7
        inner_lift = rng.uniform(0.6, 0.9)
        lesion = {"kind": "cnv", "centre": centre, "width": width}
    elif label == "DRUSEN":
        for _ in range(rng.randint(3, 8)):
            centre = cols * rng.uniform(0.1, 0.9)
            lift += thick.mean() * rng.uniform(0.08, 0.2) * _gauss(x, centre, cols * rng.uniform(0.012, 0.03))
        inner_lift = rng.uniform(0.1, 0.3)
        lesion = {"kind": "drusen"}
    elif label == "DME":
        centre, width = cols * rng.uniform(0.25, 0.75), cols * rng.uniform(0.12, 0.25)
        thick = thick * (1.0 + rng.uniform(0.4, 0.8) * _gauss(x, centre, width))
        lesion = {"kind": "dme", "centre": centre, "width": width}
    bruch = top + thick
    return {"ilm": top - inner_lift * lift, "rpe": bruch - lift, "bruch": bruch, "lesion": lesion}


def _cysts(rng, signal, geo, rows, cols):
    """Dark ellipses in the inner and outer nuclear layers of the thickened part (DME)."""
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    lesion = geo["lesion"]
    for _ in range(rng.randint(3, 9)):
        cx = float(np.clip(lesion["centre"] + rng.uniform(-1, 1) * lesion["width"], 0, cols - 1))
        column = int(cx)
        ilm, rpe = geo["ilm"][column], geo["rpe"][column]
        cy = ilm + (rpe - ilm) * rng.uniform(0.35, 0.7)
        rx, ry = cols * rng.uniform(0.01, 0.035), (rpe - ilm) * rng.uniform(0.06, 0.15)
        inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1.0
        signal[inside] = 0.03
    return signal


def render(label, rng, rows, cols):
    """Noise-free reflectivity (float, 0..1) of one B-scan of class ``label``."""
    if label not in CLASSES:
        raise ValueError("unknown synthetic OCT class {!r}; choose from {}".format(label, CLASSES))
    geo = _geometry(rng, rows, cols, label)
    y = np.arange(rows, dtype=np.float64)[:, None]
    ilm, rpe, bruch = geo["ilm"][None], geo["rpe"][None], geo["bruch"][None]
    depth = (y - ilm) / np.maximum(rpe - ilm, 1.0)
    signal = np.full((rows, cols), 0.03)
    retina = (depth >= 0) & (depth <= 1)
    signal[retina] = np.interp(depth[retina], _DEPTHS, _REFLECT)
    under = (y > rpe) & (y <= bruch)
    if geo["lesion"].get("kind") == "cnv":
        signal[under] = 0.75 * (0.8 + 0.4 * rng.rand(int(under.sum())))
    elif geo["lesion"].get("kind") == "drusen":
        signal[under] = 0.5
    below = y > bruch
    thickness = float(np.mean(bruch - ilm))
    choroid = 0.35 * np.exp(-(y - bruch) / max(0.35 * thickness, 1.0))
    signal[below] = np.broadcast_to(choroid, signal.shape)[below]
    if geo["lesion"].get("kind") == "dme":
        signal = _cysts(rng, signal, geo, rows, cols)
    return cv2.GaussianBlur(signal, (0, 0), sigmaX=0.7, sigmaY=1.2)


def make_bscan(label, seed, rows=None, cols=None, bits=8):
    """One synthetic B-scan (uint8, or uint16 over the full 16-bit range) of class ``label``.

    The same (label, seed, rows, cols, bits) gives the same image. Without a size one is drawn
    (rows 160..320, cols 1.2..2 x rows, as OCT exports vary).
    """
    rng = np.random.RandomState(seed)
    rows = rows or int(rng.randint(160, 321))
    cols = cols or int(rows * rng.uniform(1.2, 2.0))
    signal = render(label, rng, rows, cols)
    gain, gamma = rng.uniform(0.6, 1.15), rng.uniform(0.8, 1.25)
    speckled = signal * rng.rayleigh(1.0, signal.shape) / 1.25 + 0.02 * rng.rand(rows, cols)
    values = np.clip(gain * np.clip(speckled, 0, None) ** gamma, 0.0, 1.0)
    top = 255 if bits == 8 else 65535
    return np.rint(values * top).astype(np.uint8 if bits == 8 else np.uint16)


def opt_dicom(frames, patient_id="", laterality="", study_uid="", series_uid="", bits_stored=None):
    """DICOM Part 10 bytes of an OPT (Modality OPT) image: ``frames`` is (rows, cols) or (n, rows, cols),
    uint8 or uint16, MONOCHROME2; the identifying tags are written only where given (a test can leave
    them out). Multi-frame when ``frames`` has three axes."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid

    multi = frames.ndim == 3
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = EXPLICIT_LE
    ds.file_meta.MediaStorageSOPClassUID = OPT_IMAGE
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = OPT_IMAGE, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "OPT"
    ds.ImageComments = "SYNTHETIC B-scan (retina-train synth-oct): not patient data"
    for key, value in (("PatientID", patient_id), ("Laterality", laterality),
                       ("StudyInstanceUID", study_uid), ("SeriesInstanceUID", series_uid)):
        if value:
            setattr(ds, key, value)
    ds.Rows, ds.Columns = int(frames.shape[-2]), int(frames.shape[-1])
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = 8 if frames.dtype == np.uint8 else 16
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, 0
    if multi:
        ds.NumberOfFrames = int(frames.shape[0])
    ds.PixelData = frames.astype(frames.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OB" if ds.BitsAllocated == 8 else "OW"
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.preamble = b"\x00" * 128
    buf = io.BytesIO()
    if int(pydicom.__version__.split(".")[0]) >= 3:
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    else:
        pydicom.dcmwrite(buf, ds, write_like_original=False)
    return buf.getvalue()


# file kinds, cycled through a patient's B-scans: (suffix, bits); OCT2017 itself is 8-bit JPEG
_KINDS = ((".png", 8), (".jpeg", 8), (".png", 16), (".png", 8), (".tif", 16))


def _write_image(path, image):
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.endswith(".jpeg") else []
    if not cv2.imwrite(path, image, params):
        raise RuntimeError("{}: OpenCV could not write it".format(path))


def write_dataset(out, per_class, seed=0, scans_per_patient=3, dicom=False, size=None, log=print):
    """Write ``per_class`` synthetic B-scans per class into ``out/<CLASS>/`` and SYNTHETIC.txt beside them.

    B-scans of one synthetic patient are ``<CLASS>-<patient>-<n>.<ext>``; patient numbers are unique over
    the whole set. ``size``: (rows, cols) for every image, else drawn per image. With ``dicom``, each class
    also gets one single-frame OPT DICOM and one 3-frame OPT volume, each of its own synthetic patient.
    Returns {class: number of files written}.
    """
    rng = np.random.RandomState(seed)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, SYNTHETIC_NOTE), "w") as f:
        f.write(NOTE_TEXT)
    patients = iter(rng.permutation(np.arange(1000000, 9999999, 7919))[:10 * per_class * len(CLASSES) + 100])
    rows, cols = size or (None, None)
    written = {}
    for label in CLASSES:
        folder = os.path.join(out, label)
        os.makedirs(folder, exist_ok=True)
        count, patient, n = 0, None, 0
        for i in range(per_class):
            if i % scans_per_patient == 0:
                patient, n = int(next(patients)), 0
            n += 1
            suffix, bits = _KINDS[i % len(_KINDS)]
            image = make_bscan(label, int(rng.randint(2 ** 31)), rows, cols, bits)
            _write_image(os.path.join(folder, "{}-{}-{}{}".format(label, patient, n, suffix)), image)
            count += 1
        if dicom:
            count += _write_dicoms(folder, label, rng, patients, rows, cols)
        written[label] = count
    if log:
        log("wrote SYNTHETIC OCT B-scans (not patient data) to {}: {}".format(
            out, ", ".join("{} {}".format(k, v) for k, v in written.items())))
    return written


def _write_dicoms(folder, label, rng, patients, rows, cols):
    """One single-frame (8-bit) and one 3-frame (12 bits stored) OPT DICOM, each of a new synthetic patient."""
    from pydicom.uid import generate_uid
    rows = rows or 200
    cols = cols or 320
    for frames, bits in ((1, 8), (3, 16)):
        patient = int(next(patients))
        scans = np.stack([make_bscan(label, int(rng.randint(2 ** 31)), rows, cols, bits) for _ in range(frames)])
        if bits == 16:
            scans = (scans >> 4).astype(np.uint16)  # 12 bits stored, as OCT devices often write
        data = opt_dicom(scans if frames > 1 else scans[0], patient_id=str(patient),
                         laterality="R" if rng.rand() < 0.5 else "L", study_uid=generate_uid(),
                         series_uid=generate_uid(), bits_stored=12 if bits == 16 else None)
        name = "{}-{}-vol{}.dcm".format(label, patient, frames)
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    return 2
