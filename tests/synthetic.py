"""Images the tests make: EXIF-oriented JPEG/PNG/TIFF, header-only bombs, OCT B-scans, DICOM files.

Python 3.6 safe (NumPy, OpenCV, the standard library; pydicom only inside
``make_dicom``). No open OCT data is reachable from the development machine,
so OCT is tested with synthetic B-scans: speckled, layered images built here,
wrapped in DICOM by pydicom.
"""
import io
import struct
import zlib

import cv2
import numpy as np


def upright_pattern(h=48, w=64):
    """An RGB image with no symmetry: four coloured quadrants and a bright corner block."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:h // 2, :w // 2] = (200, 40, 40)
    img[:h // 2, w // 2:] = (40, 200, 40)
    img[h // 2:, :w // 2] = (40, 40, 200)
    img[h // 2:, w // 2:] = (220, 220, 40)
    img[:8, :8] = (255, 255, 255)
    return img


# EXIF orientation k -> how a camera would have stored an upright picture (the inverse of displaying it)
STORED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, 1),   # displayed by turning 90 degrees clockwise
    7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
    8: lambda a: np.rot90(a, -1),  # displayed by turning 90 degrees counter-clockwise
}


def exif_block(orientation, big_endian=False):
    """TIFF-structured EXIF bytes holding one field: Orientation (0x0112, SHORT)."""
    o = ">" if big_endian else "<"
    head = (b"MM" if big_endian else b"II") + struct.pack(o + "HI", 42, 8)
    entry = struct.pack(o + "HHI", 0x0112, 3, 1) + struct.pack(o + "H", orientation) + b"\x00\x00"
    return head + struct.pack(o + "H", 1) + entry + struct.pack(o + "I", 0)


def jpeg_bytes(rgb, orientation=None, quality=95, big_endian=False):
    """A JPEG of ``rgb``; with ``orientation``, an APP1 Exif segment right after SOI (as cameras write)."""
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    data = buf.tobytes()
    if orientation is None:
        return data
    body = b"Exif\x00\x00" + exif_block(orientation, big_endian)
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + data[2:]


def png_chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_bytes(image, orientation=None):
    """A PNG of ``image`` (OpenCV channel order); with ``orientation``, an eXIf chunk after IHDR."""
    data = cv2.imencode(".png", image)[1].tobytes()
    if orientation is None:
        return data
    after_ihdr = 8 + 8 + 13 + 4
    return data[:after_ihdr] + png_chunk(b"eXIf", exif_block(orientation)) + data[after_ihdr:]


def png_header_only(width, height):
    """A PNG whose header declares ``width`` x ``height`` 8-bit RGB pixels and holds almost none."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + png_chunk(b"IEND", b""))


def jpeg_header_only(width, height):
    """A JPEG whose frame header declares ``width`` x ``height`` and whose scan is a few bytes."""
    real = jpeg_bytes(np.zeros((8, 8, 3), np.uint8))
    sof = real.index(b"\xff\xc0")
    return real[:sof + 5] + struct.pack(">HH", height, width) + real[sof + 9:]


def tiff_bytes(rgb, orientation=None):
    """A baseline, uncompressed, little-endian RGB TIFF of ``rgb`` (TIFF 6.0 section 6), optionally oriented."""
    h, w = rgb.shape[:2]
    pixels = np.ascontiguousarray(rgb).tobytes()
    fields = [(256, 3, w), (257, 3, h), (258, 3, None), (259, 3, 1), (262, 3, 2), (273, 4, None),
              (277, 3, 3), (278, 3, h), (279, 4, len(pixels))]
    if orientation is not None:
        fields.append((274, 3, orientation))
    fields.sort()
    ifd_size = 2 + 12 * len(fields) + 4
    bits_at = 8 + ifd_size
    pixels_at = bits_at + 6
    out = [b"II" + struct.pack("<HI", 42, 8), struct.pack("<H", len(fields))]
    for tag, kind, value in fields:
        if tag == 258:
            out.append(struct.pack("<HHII", tag, kind, 3, bits_at))
        elif tag == 273:
            out.append(struct.pack("<HHII", tag, kind, 1, pixels_at))
        elif kind == 3:
            out.append(struct.pack("<HHIHH", tag, kind, 1, value, 0))
        else:
            out.append(struct.pack("<HHII", tag, kind, 1, value))
    out += [struct.pack("<I", 0), struct.pack("<HHH", 8, 8, 8), pixels]
    return b"".join(out)


def bscan(rows=96, cols=128, seed=0, layers=5, dtype=np.uint8):
    """A synthetic OCT B-scan: dark vitreous, a curved stack of bright retinal layers, Rayleigh speckle."""
    rng = np.random.RandomState(seed)
    y = np.arange(rows)[:, None].astype(np.float64)
    x = np.arange(cols)[None, :].astype(np.float64)
    top = rows * 0.3 + rows * 0.08 * np.cos(2 * np.pi * x / cols)  # the foveal pit and the curvature
    signal = np.full((rows, cols), 0.05)
    for i in range(layers):
        centre = top + (i + 0.5) * rows * 0.07
        signal += (0.9 if i in (0, layers - 1) else 0.45) * np.exp(-0.5 * ((y - centre) / 1.5) ** 2)
    speckle = rng.rayleigh(1.0, (rows, cols)) / 1.25
    values = np.clip(signal * speckle, 0, 1)
    top_value = 255 if dtype == np.uint8 else 4095
    return np.rint(values * top_value).astype(dtype)


OP_IMAGE = "1.2.840.10008.5.1.4.1.1.77.1.5.1"   # Ophthalmic Photography 8 Bit Image Storage
OP_IMAGE_16 = "1.2.840.10008.5.1.4.1.1.77.1.5.2"  # Ophthalmic Photography 16 Bit Image Storage
OPT_IMAGE = "1.2.840.10008.5.1.4.1.1.77.1.5.4"  # Ophthalmic Tomography Image Storage
EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"


def make_dicom(pixels, photometric, modality="OP", frames=None, bits_stored=None, signed=False,
               window=None, syntax=EXPLICIT_LE, encoded_frames=None, sop_class=None, extra=None):
    """DICOM bytes (Part 10 file: preamble, DICM, file meta) holding ``pixels`` as stored.

    ``pixels``: (rows, cols), (rows, cols, 3), or with a leading frame axis when
    ``frames`` is given (one frame's shape with ``encoded_frames``); for YBR_FULL_422 pass the already subsampled stream as
    a uint8 array of the right length. ``encoded_frames``: JPEG bitstreams for an
    encapsulated syntax (then ``pixels`` only gives the shape).
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid

    shape = pixels.shape[1:] if frames and encoded_frames is None else pixels.shape
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = sop_class or (OPT_IMAGE if modality == "OPT" else OP_IMAGE)
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.Rows, ds.Columns = int(shape[0]), int(shape[1])
    colour = photometric.startswith(("RGB", "YBR"))
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric
    if colour:
        ds.PlanarConfiguration = 0
    bits_allocated = 8 if pixels.dtype.itemsize == 1 else 16
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored or bits_allocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if frames:
        ds.NumberOfFrames = frames
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    if encoded_frames is not None:
        ds.PixelData = pydicom.encaps.encapsulate(list(encoded_frames))
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    else:
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
        ds["PixelData"].VR = "OB" if bits_allocated == 8 else "OW"
    ds.is_little_endian, ds.is_implicit_VR = True, False
    buf = io.BytesIO()
    ds.preamble = b"\x00" * 128
    if pydicom.__version__.split(".")[0] >= "3":
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    else:
        pydicom.dcmwrite(buf, ds, write_like_original=False)
    return buf.getvalue()


def ybr_full_422(rgb):
    """RGB uint8 (even width) -> the YBR_FULL_422 byte stream (Y1 Y2 Cb Cr per pixel pair, PS3.5 8.2.1)."""
    ycrcb = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2YCrCb).astype(np.float64)
    y, cr, cb = ycrcb[..., 0], ycrcb[..., 1], ycrcb[..., 2]
    cb2 = (cb[:, 0::2] + cb[:, 1::2]) / 2.0
    cr2 = (cr[:, 0::2] + cr[:, 1::2]) / 2.0
    stream = np.stack([y[:, 0::2], y[:, 1::2], cb2, cr2], axis=-1)
    return np.rint(stream).astype(np.uint8)
