"""Decoding: encoded bytes or a file -> HxWx3 uint8 RGB, upright, with errors that name the file.

Sources only read bytes and yield frames; this module turns them into pixels.
JPEG, PNG, BMP and TIFF: 8 or 16 bit, grey, colour, CMYK JPEG, with or without
alpha, and EXIF-rotated. DICOM is read by ``edge.io.dicom`` (one file may be a
volume of many frames, and its header says the modality), through
``edge.io.sources.file_frames``.

Before OpenCV sees a file, ``edge.io.imageinfo`` reads its header: a file
declaring more than MAX_PIXELS pixels (a decompression bomb) or a truncated,
broken or corrupt one is an ImageError naming the file and the problem; so
is anything OpenCV itself rejects or raises.

NumPy + OpenCV, Python 3.6.
"""
import os
import threading

import cv2
import numpy as np

from edge.io.imageinfo import HeaderError, read_info, sniff

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
# DICOM (ophthalmic photography OP, OCT OPT); read by edge.io.dicom when pydicom is installed
DICOM_SUFFIXES = (".dcm", ".dicom")

# The most pixels a file may declare. The largest fundus photographs are about 24 MP (6000x4000
# from camera backs), ultra-widefield ones about 16 MP; 64 MP leaves room for montages and caps one
# decoded image at 192 MB (8-bit RGB) or 384 MB (16-bit), which a 4 GB Jetson Nano holds with a few
# more in flight. A 60000x60000 header (3.6 GP, 10.8 GB decoded) is refused before any allocation.
MAX_PIXELS = 64 * 1000 * 1000

# EXIF orientation -> how to turn the stored pixels upright (EXIF 2.32, tag 0x0112). Transpose is
# the mirror about the main diagonal; 6 is "rotate 90 degrees clockwise to display", 8 counter-clockwise.
_UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: a.swapaxes(0, 1)[:, ::-1],
    7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
    8: lambda a: a.swapaxes(0, 1)[::-1],
}
# OpenCV's IMREAD_UNCHANGED ignores the orientation of these kinds; its TIFF decoder applies it itself
_ORIENT_KINDS = ("jpeg", "png")

_KIND_NAMES = "JPEG, PNG, TIFF or BMP"


class ImageError(ValueError):
    """An input that cannot be turned into a network input; the message names it."""


def decode_image(data, source="<bytes>"):
    """Decode encoded image bytes to an upright HxWx3 uint8 RGB array.

    8- and 16-bit, grey, colour, CMYK (JPEG) and colour+alpha images. 16-bit
    values are scaled to 8 bits by the full range of the type (v * 255 / 65535).
    Alpha is composited over black (see ``to_rgb8``). EXIF orientation is applied.
    """
    if len(data) == 0:
        raise ImageError("{}: empty file (0 bytes)".format(source))
    kind = sniff(data)
    if kind == "dicom":
        raise ImageError("{}: a DICOM file reached the image decoder; DICOM is read by edge.io.dicom "
                         "(edge.io.sources.file_frames), which knows its frames and modality".format(source))
    if kind is None:
        raise ImageError("{}: not a readable image (not a {} file: it starts with {!r})".format(
            source, _KIND_NAMES, bytes(data[:8])))
    try:
        info = read_info(data, kind)
    except HeaderError as exc:
        raise ImageError("{}: {}".format(source, exc))
    if info.width is not None and info.width * info.height > MAX_PIXELS:
        raise ImageError("{}: {} declares {}x{} pixels ({:.0f} MP), more than the {:.0f} MP limit "
                         "(a decompression bomb, or not a photograph)".format(
                             source, kind.upper(), info.width, info.height, info.width * info.height / 1e6,
                             MAX_PIXELS / 1e6))
    quiet_opencv()
    try:
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # e.g. OpenCV's own pixel limit (CV_IO_MAX_IMAGE_PIXELS) for a BigTIFF
        raise ImageError("{}: the {} decoder failed ({})".format(source, kind.upper(), _last_line(exc)))
    if img is None:
        raise ImageError("{}: not a readable image (the {} decoder rejected its {} bytes)".format(
            source, kind.upper(), len(data)))
    rgb = to_rgb8(img, source)
    if kind in _ORIENT_KINDS and info.orientation != 1:
        rgb = np.ascontiguousarray(_UPRIGHT[info.orientation](rgb))
    return rgb


def _last_line(exc):
    lines = [l.strip() for l in str(exc).strip().splitlines() if l.strip()]
    return lines[-1] if lines else type(exc).__name__


def read_image(path):
    """Read an image file to HxWx3 uint8 RGB; raises ImageError naming the file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except (IOError, OSError) as exc:
        raise ImageError("{}: cannot read file ({})".format(path, exc))
    return decode_image(data, source=path)


def to_rgb8(img, source="<array>"):
    """Bring an OpenCV-decoded array (BGR order, any depth) to HxWx3 uint8 RGB.

    Alpha is composited over black: a fundus camera leaves the world outside
    the retina black, and the region-of-interest rule looks for the bright
    disc on black, so a masked export (transparent outside the disc, whatever
    colour lies underneath) is screened as the camera would have shown it.
    An opaque alpha channel, the common case, changes nothing.
    """
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
        rgb = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
        alpha = img[:, :, 3]
        if alpha.min() == 255:
            return rgb
        return ((rgb.astype(np.uint16) * alpha[:, :, None] + 127) // 255).astype(np.uint8)
    raise ImageError("{}: unsupported image shape {}".format(source, img.shape))


_quiet = threading.Lock()
_quiet_done = []


def quiet_opencv():
    """Silence OpenCV's own WARN/ERROR log lines, once per process, unless OPENCV_LOG_LEVEL is set.

    Called by the decoder on its first image rather than at import: importing
    edge modules (tests, training's evaluation transform) changes no process
    state, and the one module that feeds OpenCV untrusted files is the one
    that knows every problem OpenCV would log is reported as an ImageError
    naming the file. The level is process-wide; a user who wants OpenCV's
    lines back sets OPENCV_LOG_LEVEL (e.g. WARNING), which is left alone.
    OpenCV 4.6 (JetPack 4.6 stand-in) has ``cv2.setLogLevel``; OpenCV 5 has
    only ``cv2.utils.logging.setLogLevel``. Lines that libpng/libtiff or
    OpenCV 4.6's ``imdecode_`` print themselves bypass the level: the header
    checks keep truncated and broken files from reaching them.
    """
    if _quiet_done:
        return
    with _quiet:
        if _quiet_done:
            return
        _quiet_done.append(True)
        if os.environ.get("OPENCV_LOG_LEVEL"):
            return
        logging = getattr(getattr(cv2, "utils", None), "logging", None)
        if logging is not None and hasattr(logging, "setLogLevel"):
            logging.setLogLevel(logging.LOG_LEVEL_SILENT)
        elif hasattr(cv2, "setLogLevel"):
            cv2.setLogLevel(0)  # cv::utils::logging::LOG_LEVEL_SILENT
