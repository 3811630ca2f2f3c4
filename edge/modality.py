"""Fundus photograph or OCT B-scan? A guess from image statistics, for plain images with no DICOM Modality.

    guess = guess_modality(rgb)        # Guess(modality="oct", score=2.1, reason="...")

Cheap by design: every feature is read from a 64 x 64 thumbnail (a nearest-neighbour sample of at
most 256 x 256 pixels, then INTER_AREA) and one 32 x 32 full-resolution patch, so the cost does not
grow with the photograph (see benchmarks/modality_classifier.py for the time per image).

Features (grey = OpenCV's COLOR_RGB2GRAY of the thumbnail):
* ``grad``: log((mean |d/dy| + 1) / (mean |d/dx| + 1)). OCT layers run across the image, so the
  intensity changes mostly down the columns; a fundus disc, its vessels and its rim are isotropic.
* ``profile``: log((variance of the row means + 1) / (variance of the column means + 1)). An OCT band
  spans the full width (the column means hardly vary); a fundus disc varies both ways.
* ``layers``: per column, the total variation down the column over twice its range (median over the
  columns). A bright plateau on black (a fundus disc) gives about 1; a stack of bright and dark layers
  gives more. It keeps a disc cropped at top and bottom (row means vary, column means do not) a fundus.
* ``speckle``: mean |horizontal neighbour difference| / mean intensity in a 32 x 32 full-resolution
  patch on the brightest thumbnail row. Raw OCT speckle is grainy (0.35 to 0.7); photographs are smooth
  (below 0.08). Evidence *for* OCT only: a denoised or JPEG-smoothed B-scan loses it.
* ``warmth``: over the bright thumbnail pixels, mean (R - B) / (R + B + 1) when the image is coloured.
  Fundus photographs are red/orange; grey exports are R == G == B. Evidence *for* fundus only, and
  bounded: grey-converted and red-free photographs exist, and false-colour OCT may be warm (``hot``).

Rule: each structural feature is mapped to about -2 .. +2 around a threshold (``_SCALES``), and
    score = mean(grad, profile, layers) + 0.5 * speckle_evidence - 1.5 * warmth_evidence
positive = OCT. |score| < 0.5 is reported as a weak guess in ``reason``. An image under 8 pixels a
side or with almost no contrast is not judged: ``fundus`` (the product's default), score 0, and the
reason says why.

Thresholds were set by eye between the feature distributions of a design set: every 5th photograph of
fundus4 (sorted by path, all four classes; colour, grey and green channel) and synthetic B-scans
(tests.synthetic.bscan seeds 0-29 at 512x496 and 1024x496, plain, JET and HOT false colour; and
octtrain's training/synthetic_oct lesion scans), each between the two classes' medians (grad 0.45:
fundus -0.02, OCT 0.72; profile 1.75: -0.09 and 3.9; layers 1.3: 1.0 and 1.7 to 3.2). They were not
searched for the lowest error.

Measured by benchmarks/modality_classifier.py (Python 3.11, OpenCV 5.0, shared 2-core CPU): 0 errors
in 3,406 fundus4 photographs (95 % Wilson interval 0-0.11 %), 0 in their 3,406 grey and 3,406
green-channel versions (2 weak guesses each); 0 in 600 synthetic B-scans (0-0.64 %: plain 8/16-bit at
512x496, 768x496, 1024x496, 1000x1024; false colour, 6 of 100 weak (HOT); tilted +-10 degrees; blurred;
lesion scans). 0.64 ms per guess on a 2000x2000 photograph. Not measured: real OCT exports (none can be
fetched here); a composite export (fundus/SLO image beside the B-scan) is ambiguous by nature.
"""
import collections

import numpy as np

Guess = collections.namedtuple("Guess", ["modality", "score", "reason"])

THUMB_SIDE = 64
_SAMPLE_SIDE = 4 * THUMB_SIDE       # nearest-neighbour sample before INTER_AREA: at most 256 x 256 pixels
_PATCH_HALF = 16
_MIN_SIDE = 8
_MIN_CONTRAST = 2.0                 # grey levels (0..255): below this std the thumbnail is blank
_WEAK = 0.5

# feature -> (threshold, scale): evidence = clip((value - threshold) / scale, -2, 2)
_SCALES = {
    "grad": (0.45, 0.15),
    "profile": (1.75, 1.0),
    "layers": (1.3, 0.3),
}
_SPECKLE = (0.10, 0.10)             # evidence for OCT = clip((speckle - 0.10) / 0.10, 0, 2)
_WARMTH = (0.15, 0.25)              # evidence for fundus = clip((warmth - 0.15) / 0.25, 0, 1)
_MIN_CHROMA = 0.05                  # below this the image counts as grey (no colour evidence)


def guess_modality(rgb):
    """Guess ``"fundus"`` or ``"oct"`` for one decoded image (H x W x 3 RGB, or H x W grey; any dtype)."""
    image = np.asarray(rgb)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or min(image.shape[:2]) < _MIN_SIDE:
        return Guess("fundus", 0.0, "image too small to judge ({}); fundus by default".format(
            "x".join(str(n) for n in image.shape)))
    thumb = _thumbnail(image)
    grey = _grey(thumb)
    if float(grey.std()) < _MIN_CONTRAST:
        return Guess("fundus", 0.0, "no contrast to judge (blank image); fundus by default")
    features = measure(image, thumb, grey)
    score, parts = _score(features)
    modality = "oct" if score > 0 else "fundus"
    strength = "weak guess" if abs(score) < _WEAK else "clear"
    reason = "{} {} (score {:+.2f}: {})".format(strength, modality, score, ", ".join(parts))
    return Guess(modality, round(score, 3), reason)


def measure(image, thumb=None, grey=None):
    """The raw features (a dict of floats) the rule uses; for the benchmark and for tuning by eye."""
    import cv2

    if thumb is None:
        thumb = _thumbnail(np.asarray(image))
        grey = _grey(thumb)
    dy = float(np.abs(np.diff(grey, axis=0)).mean())
    dx = float(np.abs(np.diff(grey, axis=1)).mean())
    row_var, col_var = float(grey.mean(axis=1).var()), float(grey.mean(axis=0).var())
    smooth = cv2.blur(grey, (5, 1))
    tv = np.abs(np.diff(smooth, axis=0)).sum(axis=0)
    spread = smooth.max(axis=0) - smooth.min(axis=0) + 8.0
    return {
        "grad": float(np.log((dy + 1.0) / (dx + 1.0))),
        "profile": float(np.log((row_var + 1.0) / (col_var + 1.0))),
        "layers": float(np.median(tv / (2.0 * spread))),
        "speckle": _speckle(image, grey),
        "warmth": _warmth(thumb, grey),
    }


def _score(features):
    parts, structural = [], []
    for name, (threshold, scale) in sorted(_SCALES.items()):
        evidence = float(np.clip((features[name] - threshold) / scale, -2.0, 2.0))
        structural.append(evidence)
        parts.append("{} {:.2f}".format(name, features[name]))
    speckle = float(np.clip((features["speckle"] - _SPECKLE[0]) / _SPECKLE[1], 0.0, 2.0))
    warmth = float(np.clip((features["warmth"] - _WARMTH[0]) / _WARMTH[1], 0.0, 1.0))
    parts.append("speckle {:.2f}".format(features["speckle"]))
    parts.append("warmth {:.2f}".format(features["warmth"]))
    return float(np.mean(structural)) + 0.5 * speckle - 1.5 * warmth, parts


def _thumbnail(image):
    """THUMB_SIDE x THUMB_SIDE float32 (0..255): a nearest-neighbour sample of at most _SAMPLE_SIDE a
    side, then INTER_AREA; the sample reads a fixed number of pixels, so the cost does not grow with the image."""
    import cv2

    if image.ndim == 3 and image.shape[2] > 3:
        image = image[..., :3]
    h, w = image.shape[:2]
    size = (min(w, _SAMPLE_SIDE), min(h, _SAMPLE_SIDE))
    if image.flags.c_contiguous and image.dtype in (np.uint8, np.uint16):
        small = cv2.resize(image, size, interpolation=cv2.INTER_NEAREST)
    else:   # a view (channel-reversed, cropped, 4 channels) or an odd dtype: numpy strides, a copy
        small = np.ascontiguousarray(image[::max(1, h // _SAMPLE_SIDE), ::max(1, w // _SAMPLE_SIDE)])
    if small.dtype != np.uint8:
        small = small.astype(np.float32)
        top = float(small.max())
        small *= 255.0 / top if top > 0 else 1.0
    thumb = cv2.resize(small, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA)
    return thumb.astype(np.float32)


def _grey(thumb):
    import cv2

    return thumb if thumb.ndim == 2 else cv2.cvtColor(thumb, cv2.COLOR_RGB2GRAY)


def _speckle(image, grey):
    """Grain of a full-resolution patch on the brightest thumbnail row, centred across."""
    h, w = image.shape[:2]
    row = int(np.argmax(grey.mean(axis=1)))
    y0 = int(np.clip((row + 0.5) * h / grey.shape[0] - _PATCH_HALF, 0, max(h - 2 * _PATCH_HALF, 0)))
    x0 = max(w // 2 - _PATCH_HALF, 0)
    patch = image[y0:y0 + 2 * _PATCH_HALF, x0:x0 + 2 * _PATCH_HALF].astype(np.float32)
    if patch.ndim == 3:
        patch = patch[..., :3].max(axis=2)
    if image.dtype != np.uint8:
        top = float(patch.max())
        patch *= 255.0 / top if top > 0 else 1.0
    if patch.shape[1] < 2:
        return 0.0
    return float(np.abs(np.diff(patch, axis=1)).mean() / (patch.mean() + 1.0))


def _warmth(thumb, grey):
    """Mean (R - B) / (R + B + 1) over the bright pixels of a coloured thumbnail; 0 for a grey one."""
    if thumb.ndim == 2:
        return 0.0
    bright = grey > 0.25 * float(grey.max())
    count = int(np.count_nonzero(bright))
    if count == 0:
        return 0.0
    r, g, b = thumb[..., 0], thumb[..., 1], thumb[..., 2]
    spread = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    chroma = float(spread[bright].sum() / (grey[bright].sum() + count))
    if chroma < _MIN_CHROMA:
        return 0.0
    return float(((r - b) / (r + b + 1.0))[bright].mean())
