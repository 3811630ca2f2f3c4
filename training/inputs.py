"""What a run's network sees: its modality, the preprocessing rule written into the bundle, and the images
of each split prepared by the device's reference preprocessing (cached).
"""
from typing import NamedTuple

import numpy as np

from models.bundle import check_preprocess, roi_parameters
from training import data as datalib
from training import splits

# the region of interest a modality gets unless --roi says otherwise
DEFAULT_ROI = {"fundus": "fundus_disc", "oct": "retina_band"}


def make_spec(image_size, mean, std, threshold=10, interpolation="area", roi=None, colour_order="RGB"):
    """The preprocessing rule written into the bundle; the device applies it verbatim.

    ``roi``: a roi object such as ``{"kind": "retina_band", "threshold": 20, "margin": 0.1}`` (its kind's
    other parameters are filled in from models.bundle.ROI_DEFAULTS); None is the fundus disc with
    ``threshold``. ``colour_order`` GREY takes one mean and one std value. Checked against the bundle's
    vocabulary here, so a wrong rule fails before training rather than at export.
    """
    roi = roi_parameters(roi if roi is not None else {"kind": "fundus_disc", "threshold": threshold})
    spec = {
        "colour_order": colour_order,
        "roi": roi,
        "resize": {"size": [image_size, image_size], "interpolation": interpolation},
        "scale": 1.0 / 255.0,
        "mean": list(mean),
        "std": list(std),
    }
    check_preprocess(spec)
    return spec


def resolve_modality(choice, samples, log=print):
    """(modality, reason): ``choice`` fundus|oct as given, or auto: from the data (``data.detect_modality``)."""
    if choice and choice != "auto":
        modality, reason = choice, "--modality {}".format(choice)
    else:
        modality, reason = datalib.detect_modality(samples)
    log("modality: {} ({})".format(modality, reason))
    return modality, reason


def input_spec(image_size, data_cfg, modality, roi=None, channels=3):
    """The preprocess section for a run: the modality's region of interest unless ``roi`` names one, RGB for
    3 channels or GREY (one channel; the network's mean and std averaged over its three values) for 1."""
    mean, std = list(data_cfg["mean"]), list(data_cfg["std"])
    colour_order = "GREY" if channels == 1 else "RGB"
    if channels == 1:
        mean, std = [sum(mean) / len(mean)], [sum(std) / len(std)]
    return make_spec(image_size, mean, std, roi={"kind": roi or DEFAULT_ROI[modality]}, colour_order=colour_order)


def channels_of(spec):
    return 1 if spec["colour_order"] == "GREY" else 3


def run_inputs(args, samples, teacher_ckpt=None, log=print):
    """(modality, how it was decided, roi kind or None, channels) of a training run: the options where given,
    else the teacher's (distillation), else the data's (--modality auto)."""
    choice = getattr(args, "modality", "auto") or "auto"
    roi, channels = getattr(args, "roi", None), getattr(args, "channels", None)
    if teacher_ckpt is not None and choice == "auto":
        modality, reason = teacher_ckpt.get("modality", "fundus"), "the teacher's"
        log("modality: {} ({})".format(modality, reason))
    else:
        modality, reason = resolve_modality(choice, samples, log)
    if teacher_ckpt is not None:
        roi = roi or teacher_ckpt["spec"]["roi"]["kind"]
        channels = channels or channels_of(teacher_ckpt["spec"])
    return modality, reason, roi, channels or 3


def load_split(data, fractions=None, seed=0):
    """Samples with a split: a CSV that already has one is taken as is (after a leak check)."""
    samples = datalib.load_samples(data)
    if all(s.split for s in samples):
        splits.check_no_leak(samples)
        return samples
    return splits.grouped_split(samples, fractions or splits.DEFAULT_FRACTIONS, seed=seed)


class Prepared(NamedTuple):
    """Images of one split, ROI-cropped and resized by the device reference, with integer targets."""
    samples: list
    images: np.ndarray  # N x H x W x 3 uint8 RGB
    targets: np.ndarray  # N int64 indices into the labels


def prepare(samples, labels, spec, cache_dir, log=print):
    images = datalib.prepare_images(samples, spec, cache_dir, log)
    return Prepared(samples, images, np.array([labels.index(s.label) for s in samples], dtype=np.int64))


def prepare_splits(samples, labels, spec, cache_dir, log):
    """split name -> Prepared, decoding every image once (and caching the result)."""
    everything = prepare(samples, labels, spec, cache_dir, log)
    out = {}
    for name in ("train", "val", "test"):
        idx = [i for i, s in enumerate(samples) if s.split == name]
        out[name] = Prepared([samples[i] for i in idx], everything.images[idx], everything.targets[idx])
    return out
