"""Checks run on each decoded frame before the network: ``check(frame, bundle) -> Result or None``.

A Result returned is the frame's verdict and the network is not run for it:
``skipped`` when the image is of another modality than the bundle was trained
on (an OCT B-scan into a fundus model gets a reason, never a fundus label);
``ungradable`` when it is not a gradable fundus photograph (``edge.quality``:
no retina found, far too dark, far too blurred). ``default_checks`` is what
``retina-edge run`` applies, in that order.
"""
from edge.lanes import describe_modality
from edge.quality import DEFAULT_THRESHOLD, assess
from edge.records import Result

_NAMES = {"fundus": "fundus photograph", "oct": "OCT B-scan"}


def check_modality(frame, bundle):
    """``skipped`` for a frame whose ``meta["modality"]`` is not the bundle's (frames without one are photographs)."""
    modality = frame.meta.get("modality") or "fundus"
    if modality == bundle.modality:
        return None
    return Result(frame.source_id, "skipped", error="modality: {}, but the model {} screens {}s only".format(
        describe_modality(frame.meta), bundle.manifest["name"], _NAMES.get(bundle.modality, bundle.modality + " image")))


def check_quality(frame, bundle):
    """``ungradable`` with the reason for an image that is not a gradable fundus photograph.

    The measures go into ``meta`` (``quality_brightness``, ``quality_detail``)
    so a JSONL output keeps them for anyone revisiting the thresholds.
    """
    roi = bundle.preprocess.get("roi", {})
    q = assess(frame.image, roi.get("threshold", DEFAULT_THRESHOLD))
    if q.brightness is not None:
        frame.meta["quality_brightness"] = round(q.brightness, 1)
        frame.meta["quality_detail"] = round(q.detail, 3)
    if not q.reason:
        return None
    return Result(frame.source_id, "ungradable", error="quality: " + q.reason)


def default_checks(bundle):
    """The checks for ``bundle``, in the order they run: modality, then (fundus models) the quality gate."""
    checks = [check_modality]
    if bundle.modality == "fundus":
        checks.append(check_quality)
    return checks
