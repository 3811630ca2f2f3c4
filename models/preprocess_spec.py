"""The preprocessing vocabulary of a bundle's ``preprocess`` section, defined once.

``models.bundle`` re-exports these names and validates every manifest with
``check_preprocess``; the device reference (``edge/preprocess.py``), the CUDA
kernel's settings (``edge/gpu/preprocess.py``), ``training/recipe.make_spec``
and the model card read them instead of spelling the vocabulary again.

``preprocess.roi`` is ``{"kind": ..., <parameters>, "pad": "square"}``; a
parameter left out takes its default from ``ROI_DEFAULTS``:

- ``fundus_disc`` (``threshold`` 10): the bounding box of the rows and columns
  in which more than 2 % of the pixels have a brightest channel above
  ``threshold``; a box under 10 % of the frame is not trusted (whole frame).
- ``retina_band`` (``threshold`` 20, ``margin`` 0.1), for OCT B-scans: rows
  whose mean grey value (OpenCV's ``COLOR_RGB2GRAY``) is above ``threshold``
  are signal; the crop runs from the first to the last signal row, widened on
  each side by ``floor(margin * band rows)`` rows, clamped to the frame, full
  width. No signal row: the whole frame.
- ``centre`` (``fraction`` 1.0): the centred square of side
  ``max(1, floor(fraction * min(h, w)))``; top-left at ``((h - side) // 2,
  (w - side) // 2)``.
- ``none``: the whole frame (a ``threshold`` left from fundus_disc is accepted and ignored).

Every crop is then padded with black, centred, to a square of its longer side
(``pad`` may only be ``"square"``) and resized with ``resize.interpolation``.

``preprocess.colour_order`` is the network's channel order: ``RGB`` or ``BGR``
for a 3-channel network (a grey image is replicated to three channels by the
decoder), ``GREY`` for a 1-channel network fed OpenCV's ``COLOR_RGB2GRAY`` of
the decoded RGB image ((9798 R + 19235 G + 3735 B + 2^14) >> 15 on uint8: the
stored value, for a grey image). ``input.shape[1]``
and the number of ``mean``/``std`` values must equal ``CHANNELS[colour_order]``.

Standard library and Python 3.6 only.
"""
import copy

COLOUR_ORDERS = ("RGB", "BGR", "GREY")
CHANNELS = {"RGB": 3, "BGR": 3, "GREY": 1}
INTERPOLATIONS = ("area", "linear", "cubic", "nearest")
ROI_KINDS = ("fundus_disc", "retina_band", "centre", "none")
# per kind: parameter -> default (the parameters a kind accepts are exactly these)
ROI_DEFAULTS = {
    "fundus_disc": {"threshold": 10},
    "retina_band": {"threshold": 20, "margin": 0.1},
    "centre": {"fraction": 1.0},
    "none": {},
}
# parameter -> (lowest, highest, lowest excluded), all inclusive otherwise
ROI_RANGES = {"threshold": (0, 255, False), "margin": (0, 1, False), "fraction": (0, 1, True)}
ROI_PADS = ("square",)
# parameters a kind accepts and ignores: manifests written before the roi parameters were checked kept
# fundus_disc's threshold when they switched to "none"; they stay valid
ROI_IGNORED = {"none": ("threshold",)}
_COUNT_WORDS = {1: "one number", 3: "three numbers"}


class PreprocessError(ValueError):
    """A preprocess section outside the vocabulary: (field, problem); models.bundle adds the file."""

    def __init__(self, field, problem):
        ValueError.__init__(self, "field '{}' {}".format(field, problem))
        self.field, self.problem = field, problem


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def channels(preprocess):
    """How many channels the network takes for this preprocess section (1 for GREY, else 3)."""
    return CHANNELS[preprocess["colour_order"]]


def roi_parameters(roi):
    """The roi object with every parameter of its kind filled in from ROI_DEFAULTS (validated)."""
    check_roi(roi)
    filled = {"kind": roi["kind"]}
    filled.update(copy.deepcopy(ROI_DEFAULTS[roi["kind"]]))
    filled.update(roi)
    filled.setdefault("pad", ROI_PADS[0])
    return filled


def check_roi(roi, field="preprocess.roi"):
    """Raise PreprocessError for an unknown kind, an unknown parameter or one out of its range."""
    if not isinstance(roi, dict):
        raise PreprocessError(field, "must be an object {kind, parameters}")
    kind = roi.get("kind")
    if kind not in ROI_KINDS:
        raise PreprocessError(field + ".kind", "is {!r}; must be one of {}".format(kind, ROI_KINDS))
    allowed = ROI_DEFAULTS[kind]
    for name, value in sorted(roi.items()):
        if name == "kind":
            continue
        if name == "pad":
            if value not in ROI_PADS:
                raise PreprocessError(field + ".pad", "is {!r}; must be one of {}".format(value, ROI_PADS))
            continue
        if name in ROI_IGNORED.get(kind, ()):
            continue
        if name not in allowed:
            raise PreprocessError(field + "." + name, "is not a parameter of roi kind {!r} (it takes {})".format(
                kind, ", ".join(sorted(allowed)) or "none"))
        lo, hi, open_low = ROI_RANGES[name]
        if not _is_number(value) or value > hi or value < lo or (open_low and value == lo):
            raise PreprocessError(field + "." + name, "must be a number in {}{}, {}], not {!r}".format(
                "(" if open_low else "[", lo, hi, value))


def check_preprocess(pre, input_channels=None):
    """Validate the vocabulary of a preprocess section whose field types are already checked.

    ``input_channels``: the manifest's input.shape[1], which must match the colour order.
    """
    order = pre["colour_order"]
    if order not in COLOUR_ORDERS:
        raise PreprocessError("preprocess.colour_order", "must be one of {}".format(COLOUR_ORDERS))
    want = CHANNELS[order]
    if input_channels is not None and input_channels != want:
        raise PreprocessError("input.shape", "must have {} channel{} for colour_order {}, has {}".format(
            want, "s" if want > 1 else "", order, input_channels))
    check_roi(pre["roi"])
    if pre["resize"]["interpolation"] not in INTERPOLATIONS:
        raise PreprocessError("preprocess.resize.interpolation", "must be one of {}".format(INTERPOLATIONS))
    for key in ("mean", "std"):
        values = pre[key]
        if len(values) != want or not all(_is_number(v) for v in values):
            raise PreprocessError("preprocess." + key, "must be {} for colour_order {}".format(
                _COUNT_WORDS[want], order))
    if any(v <= 0 for v in pre["std"]):
        raise PreprocessError("preprocess.std", "must be positive")


_ROI_WORDS = {
    "fundus_disc": "fundus-disc crop (threshold {threshold})",
    "retina_band": "retina-band crop (rows whose mean grey value exceeds {threshold}, widened by {margin} of the "
                   "band's height each side, full width)",
    "centre": "centred square crop ({fraction} of the shorter side)",
    "none": "no crop (the whole frame)",
}
_ORDER_WORDS = {"RGB": "RGB order", "BGR": "BGR order", "GREY": "one grey channel (OpenCV RGB2GRAY)"}


def describe(pre):
    """The preprocessing rule in words, for the model card."""
    roi = roi_parameters(pre["roi"])
    scale = pre["scale"]
    scale_text = "1/255" if abs(scale - 1.0 / 255.0) < 1e-12 else "{:g}".format(scale)
    return "{} padded square, resize to {} ({}), {}, scale {}, mean {}, std {}.".format(
        _ROI_WORDS[roi["kind"]].format(**roi), pre["resize"]["size"], pre["resize"]["interpolation"],
        _ORDER_WORDS[pre["colour_order"]], scale_text, pre["mean"], pre["std"])
