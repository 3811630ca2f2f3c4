"""Decoding: encoded bytes or a file -> HxWx3 uint8 RGB, with errors that name the file.

Sources only read bytes and yield frames; this module turns them into pixels.
JPEG, PNG, BMP and TIFF today (8 or 16 bit, grey, colour, alpha); DICOM joins
here with the screening-station issue.

NumPy + OpenCV, Python 3.6.
"""
import cv2
import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
# DICOM (ophthalmic photography OP, OCT OPT); read by edge.io.dicom when pydicom is installed
DICOM_SUFFIXES = (".dcm", ".dicom")


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
