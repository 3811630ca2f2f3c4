"""The one preprocessing definition, driven by a bundle's ``preprocess`` section.

decode -> region of interest (fundus disc, square-padded) -> resize -> colour
order -> scale, mean/std -> NCHW float32. Training's evaluation transform calls
these same functions, and the CUDA kernel is tested against them, so a number
measured on the workstation is the number the device reproduces.

NumPy + OpenCV, Python 3.6.
"""
import cv2
import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")

_INTERPOLATION = {
    "area": cv2.INTER_AREA,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "nearest": cv2.INTER_NEAREST,
}

# A row or column belongs to the disc when more than this fraction of its
# pixels are brighter than the threshold; it ignores JPEG noise in the border.
_MIN_LINE_FRACTION = 0.02
# A disc smaller than this fraction of the frame is not trusted: use the frame.
_MIN_DISC_AREA_FRACTION = 0.1


class ImageError(ValueError):
    """An input that cannot be turned into a network input; the message names it."""


def decode_image(data, source="<bytes>"):
    """Decode encoded image bytes to an HxWx3 uint8 RGB array.

    Accepts 8- and 16-bit, grey, colour and colour+alpha images. 16-bit values
    are scaled to 8 bits by the full range of the type (v * 255 / 65535).
    """
    if len(data) == 0:
        raise ImageError("{}: empty file (0 bytes)".format(source))
    if data[:2] == b"\xff\xd8" and not _jpeg_complete(data):
        raise ImageError("{}: truncated JPEG (no end-of-image marker after the last scan)".format(source))
    buf = np.frombuffer(data, dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageError("{}: not a readable image (decoder rejected {} bytes)".format(source, len(data)))
    return to_rgb8(img, source)


def _jpeg_complete(data):
    """True if an end-of-image marker follows the last start-of-scan.

    Some OpenCV builds (4.6, the JetPack 4.6 stand-in) decode a truncated JPEG
    with only a warning and fill the rest grey; this refuses it everywhere.
    Entropy-coded data stuffs 0xFF as FF 00, so FF DA / FF D9 there are markers.
    """
    return data.rfind(b"\xff\xd9") > data.rfind(b"\xff\xda")


def read_image(path):
    """Read an image file to HxWx3 uint8 RGB; raises ImageError naming the file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except (IOError, OSError) as exc:
        raise ImageError("{}: cannot read file ({})".format(path, exc))
    return decode_image(data, source=path)


def to_rgb8(img, source="<array>"):
    """Bring an OpenCV-decoded array (BGR order, any depth) to HxWx3 uint8 RGB."""
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageError("{}: unsupported pixel type {}".format(source, img.dtype))
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.ndim == 3 and img.shape[2] == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2RGB)
    if img.ndim == 3 and img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    raise ImageError("{}: unsupported image shape {}".format(source, img.shape))


def find_fundus_disc(rgb, threshold):
    """Bounding box (x0, y0, x1, y1), exclusive ends, of the bright disc; None if none is found."""
    h, w = rgb.shape[:2]
    mask = rgb.max(axis=2) > threshold
    rows = np.flatnonzero(mask.mean(axis=1) > _MIN_LINE_FRACTION)
    cols = np.flatnonzero(mask.mean(axis=0) > _MIN_LINE_FRACTION)
    if rows.size == 0 or cols.size == 0:
        return None
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    if (y1 - y0) * (x1 - x0) < _MIN_DISC_AREA_FRACTION * h * w:
        return None
    return x0, y0, x1, y1


def pad_square(img):
    """Pad with black, centred, to a square of the longer side."""
    h, w = img.shape[:2]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    return cv2.copyMakeBorder(img, top, side - h - top, left, side - w - left,
                              cv2.BORDER_CONSTANT, value=(0, 0, 0))


def region_of_interest(rgb, roi):
    """Apply the manifest's ``roi`` rule; returns (square image, box or None)."""
    kind = roi["kind"]
    box = None
    if kind == "fundus_disc":
        box = find_fundus_disc(rgb, roi.get("threshold", 10))
        if box is not None:
            x0, y0, x1, y1 = box
            rgb = rgb[y0:y1, x0:x1]
    elif kind != "none":
        raise ValueError("unknown roi kind {!r}".format(kind))
    return pad_square(rgb), box


def prepare(rgb, spec):
    """RGB uint8 image -> region of interest -> resized HxWx3 uint8 (still RGB)."""
    square, _ = region_of_interest(rgb, spec["roi"])
    h, w = spec["resize"]["size"]
    return cv2.resize(square, (int(w), int(h)), interpolation=_INTERPOLATION[spec["resize"]["interpolation"]])


def normalize(prepared, spec):
    """Resized RGB uint8 HxWx3 (or NxHxWx3) -> float32 NCHW in the manifest's colour order."""
    batch = prepared[None] if prepared.ndim == 3 else prepared
    if spec["colour_order"] == "BGR":
        batch = batch[..., ::-1]
    x = batch.astype(np.float32) * np.float32(spec["scale"])
    x -= np.asarray(spec["mean"], dtype=np.float32)
    x /= np.asarray(spec["std"], dtype=np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def preprocess(rgb, spec):
    """The reference: RGB uint8 image -> 1x3xHxW float32 network input."""
    return normalize(prepare(rgb, spec), spec)
