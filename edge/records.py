"""The two records that travel through the pipeline: a Frame in, a Result out.

A source yields Frames; the pipeline decodes, preprocesses and classifies each
and hands every output the Frame together with its Result, so a display or an
annotated-image folder can draw on the pixels and a ledger can record where
the frame came from.
"""
from typing import NamedTuple, Optional

# ok: screened; error: set aside (the error names the file and the stage);
# skipped: deliberately not screened (e.g. another modality than the model's);
# ungradable: a readable image that is not a gradable fundus photograph.
STATUSES = ("ok", "error", "skipped", "ungradable")


class Frame(object):
    """One input image on its way through the pipeline.

    A source fills ``data`` (encoded bytes, decoded later on a worker thread)
    or ``image`` (pixels it already has, e.g. a camera), or ``error`` when it
    could not even read the input. ``meta`` carries what outputs and the
    ledger may want: ``path`` (absolute, for files), ``size_bytes``,
    ``mtime_ns``, ``index`` (frame number in a video, volume or stream),
    ``modality`` ("fundus", "oct", ...), ``captured_at`` (epoch seconds).
    ``times_ms`` collects the frame's stage times as it moves.
    """

    __slots__ = ("source_id", "image", "error", "data", "meta", "times_ms")

    def __init__(self, source_id, image=None, error="", data=None, meta=None):
        self.source_id = source_id
        self.image = image  # HxWx3 uint8 RGB once decoded
        self.error = error
        self.data = data
        self.meta = meta if meta is not None else {}
        self.times_ms = {}

    def __repr__(self):
        shape = getattr(self.image, "shape", None)
        return "Frame({!r}, image={}, error={!r})".format(self.source_id, shape, self.error)


class Result(NamedTuple):
    """What became of one frame. ``error`` holds the message for error rows and the
    reason for skipped and ungradable rows; it is empty for ok rows. ``probs`` are the
    calibrated probabilities (the bundle's temperature), ``label`` is the bundle's
    decision rule's label and ``confidence`` its probability; ``refer`` is True/False at
    the bundle's referral point, None when the bundle has none (or the row is not ok).
    ``model`` names the bundle that screened the frame (its ``--model name=``, else its
    manifest name): set on ok and ungradable rows and on errors met after routing, None
    for rows no bundle took (unreadable, skipped for a modality no bundle serves)."""
    path: str
    status: str
    label: Optional[str] = None
    confidence: Optional[float] = None
    probs: Optional[dict] = None  # label -> probability
    error: str = ""
    latency_ms: Optional[float] = None
    refer: Optional[bool] = None
    model: Optional[str] = None


def error_result(path, message, model=None):
    return Result(path, "error", error=message, model=model)
