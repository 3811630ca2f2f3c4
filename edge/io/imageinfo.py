"""What an image file's header says, read with the standard library before any pixel is decoded.

``read_info(data)`` walks the container of a JPEG, PNG, TIFF or BMP file and
returns its kind, declared size and EXIF orientation, or raises HeaderError
saying what is wrong: truncated (a segment, chunk, strip or pixel array runs
past the end), broken (no frame header, first chunk not IHDR), corrupt (a PNG
chunk failing its CRC). Doing this first lets the decoder refuse a
decompression bomb by its declared size before OpenCV allocates anything, and
keeps broken files away from the codecs, whose complaints (libpng, libtiff,
OpenCV 4.6's ``imdecode_`` lines) go straight to stderr whatever OpenCV's log
level says.

The EXIF reader is the few lines that find tag 0x0112 (Orientation) in the
first IFD of TIFF-structured bytes: a JPEG's APP1 ``Exif`` segment, a PNG's
``eXIf`` chunk, a TIFF file itself (TIFF 6.0 and EXIF 2.32 layouts).

Standard library only, Python 3.6.
"""
import struct
import zlib
from typing import NamedTuple, Optional

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ORIENTATION_TAG = 0x0112
# JPEG start-of-frame markers (ITU T.81 table B.1): C4 (DHT), C8 (JPG) and CC (DAC) are not frames
_SOF_MARKERS = frozenset([0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF])
# markers without a length field: TEM, RST0-7, SOI
_STANDALONE = frozenset([0x01, 0xD8] + list(range(0xD0, 0xD8)))
# TIFF field types whose values are unsigned integers: BYTE, SHORT, LONG
_TIFF_INTS = {1: "B", 3: "H", 4: "I"}


class HeaderError(ValueError):
    """A header that is truncated, broken or corrupt; the message says which and where (no file name)."""


class ImageInfo(NamedTuple):
    kind: str                 # jpeg, png, tiff, bmp
    width: Optional[int]      # None where the header does not say (BigTIFF)
    height: Optional[int]
    orientation: int = 1      # EXIF orientation 1..8 (1: stored upright)


def sniff(data):
    """The kind of file ``data`` starts like: jpeg, png, tiff, bmp, dicom, or None."""
    head = bytes(data[:8])
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head == PNG_SIGNATURE:
        return "png"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:2] == b"BM":
        return "bmp"
    if bytes(data[128:132]) == b"DICM":
        return "dicom"
    return None


def read_info(data, kind=None):
    """ImageInfo of encoded image bytes; raises HeaderError (or ValueError for an unknown kind)."""
    kind = kind or sniff(data)
    if kind not in _READERS:
        raise ValueError("not a JPEG, PNG, TIFF or BMP file")
    try:
        return _READERS[kind](data if isinstance(data, bytes) else bytes(data))
    except struct.error:
        raise HeaderError("truncated {} header".format(kind.upper()))


def _jpeg(data):
    n, pos = len(data), 2
    size, orientation = None, 1
    while True:
        if pos + 4 > n:
            raise HeaderError("truncated JPEG (the file ends at byte {} inside its header)".format(n))
        if data[pos] != 0xFF:
            raise HeaderError("broken JPEG header (no marker at byte {})".format(pos))
        marker = data[pos + 1]
        if marker == 0xFF or marker in _STANDALONE:
            pos += 1 if marker == 0xFF else 2
            continue
        if marker == 0xD9:
            raise HeaderError("broken JPEG (end-of-image marker before any image data)")
        length = struct.unpack_from(">H", data, pos + 2)[0]
        if length < 2 or pos + 2 + length > n:
            raise HeaderError("truncated JPEG (segment FF{:02X} at byte {} runs past the end)".format(marker, pos))
        segment = data[pos + 4:pos + 2 + length]
        if marker in _SOF_MARKERS:
            height, width = struct.unpack_from(">HH", segment, 1)
            size = (width, height)
        elif marker == 0xE1 and bytes(segment[:6]) == b"Exif\x00\x00":
            orientation = exif_orientation(segment[6:])
        elif marker == 0xDA:  # start of scan: the header is over
            break
        pos += 2 + length
    if size is None:
        raise HeaderError("broken JPEG header (no frame header before the image data)")
    # Some OpenCV builds (4.6) decode a truncated JPEG with only a warning and fill the rest grey.
    # Entropy-coded data stuffs 0xFF as FF 00, so FF DA / FF D9 found there are real markers.
    if data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        raise HeaderError("truncated JPEG (no end-of-image marker after the last scan)")
    return ImageInfo("jpeg", size[0], size[1], orientation)


def _png(data):
    view = memoryview(data)  # chunk bodies are checked without copying them
    n, pos = len(data), len(PNG_SIGNATURE)
    size, orientation = None, 1
    while True:
        if pos + 12 > n:
            raise HeaderError("truncated PNG (the file ends at byte {} before the IEND chunk)".format(n))
        length, kind = struct.unpack_from(">I4s", data, pos)
        if size is None and kind != b"IHDR":
            raise HeaderError("broken PNG header (the first chunk is {}, not IHDR)".format(_name(kind)))
        end = pos + 12 + length
        if end > n:
            raise HeaderError("truncated PNG (chunk {} at byte {} runs past the end)".format(_name(kind), pos))
        body = view[pos + 8:pos + 8 + length]
        crc = struct.unpack_from(">I", data, pos + 8 + length)[0]
        if zlib.crc32(body, zlib.crc32(kind)) & 0xFFFFFFFF != crc:
            raise HeaderError("corrupt PNG (chunk {} at byte {} fails its CRC check)".format(_name(kind), pos))
        if kind == b"IHDR":
            size = struct.unpack_from(">II", body)
        elif kind == b"eXIf":
            orientation = exif_orientation(body)
        elif kind == b"IEND":
            break
        pos = end
    return ImageInfo("png", size[0], size[1], orientation)


def _name(kind):
    return repr(bytes(kind).decode("latin-1"))


def _tiff(data):
    if bytes(data[2:4]) in (b"+\x00", b"\x00+"):  # BigTIFF: sizes unread, OpenCV's own pixel limit applies
        return ImageInfo("tiff", None, None, 1)
    fields = tiff_fields(data)
    if 256 not in fields or 257 not in fields:
        raise HeaderError("broken TIFF header (no ImageWidth/ImageLength in the first directory)")
    for offsets_tag, counts_tag in ((273, 279), (324, 325)):  # strips, tiles
        for offset, count in zip(fields.get(offsets_tag, ()), fields.get(counts_tag, ())):
            if offset + count > len(data):
                raise HeaderError("truncated TIFF (image data at bytes {}..{} runs past the end at {})".format(
                    offset, offset + count, len(data)))
    # OpenCV's TIFF decoder applies the Orientation tag itself, even with IMREAD_UNCHANGED
    return ImageInfo("tiff", fields[256][0], fields[257][0], 1)


def _bmp(data):
    n = len(data)
    if n < 26:
        raise HeaderError("truncated BMP header ({} bytes)".format(n))
    pixel_offset, dib_size = struct.unpack_from("<II", data, 10)
    if dib_size == 12:  # OS/2 BITMAPCOREHEADER
        width, height, _, bits = struct.unpack_from("<HHHH", data, 18)
        compression = 0
    elif dib_size >= 40 and n >= 14 + 40:
        width, height, _, bits, compression = struct.unpack_from("<iiHHI", data, 18)
    else:
        raise HeaderError("broken BMP header (DIB header of {} bytes)".format(dib_size))
    height = abs(height)  # negative: stored top-down
    if width <= 0 or height == 0:
        raise HeaderError("broken BMP header (declares {}x{} pixels)".format(width, height))
    if compression in (0, 3, 6) and bits in (1, 4, 8, 16, 24, 32):  # uncompressed rows, 4-byte aligned
        needed = pixel_offset + (width * bits + 31) // 32 * 4 * height
        if needed > n:
            raise HeaderError("truncated BMP ({} bytes of {} declared by its header)".format(n, needed))
    return ImageInfo("bmp", width, height, 1)


_READERS = {"jpeg": _jpeg, "png": _png, "tiff": _tiff, "bmp": _bmp}


def tiff_fields(data):
    """The integer fields of the first directory of TIFF-structured bytes: {tag: tuple of ints}."""
    order = {b"II": "<", b"MM": ">"}.get(bytes(data[:2]))
    if order is None:
        raise HeaderError("broken TIFF header (byte order {!r})".format(bytes(data[:2])))
    magic, offset = struct.unpack_from(order + "HI", data, 2)
    if magic != 42:
        raise HeaderError("broken TIFF header (magic number {})".format(magic))
    count = struct.unpack_from(order + "H", data, offset)[0]
    fields = {}
    for i in range(count):
        tag, kind, n, value = struct.unpack_from(order + "HHI4s", data, offset + 2 + 12 * i)
        code = _TIFF_INTS.get(kind)
        if code is None:
            continue
        size = struct.calcsize(code) * n
        if size > 4:
            start = struct.unpack(order + "I", value)[0]
            value = data[start:start + size]
            if len(value) < size:
                raise HeaderError("truncated TIFF (field {} runs past the end)".format(tag))
        fields[tag] = struct.unpack(order + code * n, bytes(value[:size]))
    return fields


def exif_orientation(tiff_bytes):
    """EXIF Orientation (1..8) from TIFF-structured EXIF bytes; 1 when absent, unreadable or out of range.

    A broken EXIF block must not stop an otherwise good image: it is read as upright.
    """
    try:
        value = tiff_fields(tiff_bytes).get(ORIENTATION_TAG, (1,))[0]
    except (HeaderError, struct.error):
        return 1
    return value if 1 <= value <= 8 else 1
