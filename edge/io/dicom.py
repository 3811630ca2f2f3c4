"""DICOM ophthalmic photography (Modality OP) and OCT (OPT): one Frame per frame, as HxWx3 uint8 RGB.

``dicom_frames(file_frame)`` expands the captured bytes of one DICOM file into
the frames the pipeline screens: a single-frame file (a fundus photograph) is
one frame whose ``source_id`` is the path, a multi-frame file (an OCT volume of
B-scans) is one frame per frame whose ``source_id`` is ``path#index``
(``index`` from 0, the same number as ``meta["index"]`` and the ledger's
``frame_index``), so each row of a CSV stays unique. Every frame carries the
volume's facts as flat, JSON-able ``meta`` (``modality``, ``dicom_modality``,
``frames``, ``photometric``, ``bits_stored``, ``transfer_syntax``); the
results of a volume are summed up by ``edge.io.volumes.VolumeTally`` (one
console line when its last frame is done) and can be grouped again from the
ledger by ``file``.

A DICOM file is decoded here, in the source (the capture stage), not in the
pipeline's decode stage: one file is many frames, and pydicom decodes a
volume's pixel data at once.

Pixels, in order (DICOM PS3.3 C.7.6.3, C.11):
- stored values, masked to Bits Stored (pydicom sign-extends signed data);
- Rescale Slope/Intercept (modality LUT) when present;
- grey (MONOCHROME1/2) to 8 bits by the first Window Center/Width when present
  (VOI LUT Function LINEAR, LINEAR_EXACT or SIGMOID), else by the range Bits
  Stored declares (0..2^n-1, or -2^(n-1)..2^(n-1)-1 when signed): a fixed
  mapping, so a dark image stays dark for the quality gate and the frames of a
  volume stay comparable, where a min-max stretch would hide both;
  MONOCHROME1 is then inverted (its lowest value is white);
- colour (RGB, YBR_FULL, YBR_FULL_422, and the JPEG 2000 YBR_ICT/YBR_RCT that
  the codec returns as RGB) to 8 bits by the declared range, YBR_FULL to RGB
  by the full-range ITU-R BT.601 equations (PS3.3 C.7.6.3.1.2);
- PALETTE COLOR through its lookup table.

Transfer syntaxes: uncompressed (implicit/explicit VR, deflated) and RLE with
pydicom alone; JPEG Baseline/Extended (8-bit) and JPEG 2000 frame by frame
with OpenCV's codecs, which are always installed; anything else through the
pydicom handlers that are installed (pylibjpeg, GDCM, Pillow), otherwise an
error naming the transfer syntax and what to install.

pydicom is imported only when a DICOM file is read; without it a DICOM file is
one error row saying what to install. No open OCT data is reachable from the
development machine: the tests make synthetic OP and OPT files with pydicom.
"""
import io

import cv2
import numpy as np

from edge.io.decode import MAX_PIXELS, ImageError, quiet_opencv
from edge.io.imageinfo import HeaderError, read_info, sniff
from edge.io.sources import ImageFiles, SourceError
from edge.records import Frame

INSTALL_PYDICOM = "pip install 'pydicom>=2.3'"
# DICOM Modality (0008,0060) -> the pipeline's modality; other codes pass through in lower case
MODALITIES = {"OP": "fundus", "OPT": "oct"}
# A volume whose decoded pixels would exceed this is refused before decoding (a 4 GB Jetson holds it)
MAX_VOLUME_BYTES = 1 << 30
# compressed transfer syntaxes decoded frame by frame with OpenCV's codecs
OPENCV_SYNTAXES = {
    "1.2.840.10008.1.2.4.50": "JPEG Baseline",
    "1.2.840.10008.1.2.4.51": "JPEG Extended",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
}
# what pydicom needs for the others (pydicom's handler tables, 2.3 and 3.0)
_PYLIBJPEG = "pip install pylibjpeg pylibjpeg-libjpeg (or python-gdcm)"
INSTALL_HINTS = {
    "1.2.840.10008.1.2.4.51": _PYLIBJPEG,  # 12-bit JPEG: OpenCV's libjpeg is 8-bit
    "1.2.840.10008.1.2.4.57": _PYLIBJPEG,
    "1.2.840.10008.1.2.4.70": _PYLIBJPEG,
    "1.2.840.10008.1.2.4.80": _PYLIBJPEG,
    "1.2.840.10008.1.2.4.81": _PYLIBJPEG,
    "1.2.840.10008.1.2.4.90": "pip install pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.91": "pip install pylibjpeg pylibjpeg-openjpeg",
}
_DEFAULT_HINT = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg python-gdcm"
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")


def import_pydicom():
    """pydicom, or ImportError with the line saying what to install."""
    try:
        import pydicom
    except ImportError:
        raise ImportError("DICOM files need pydicom, which is not installed: " + INSTALL_PYDICOM)
    return pydicom


class _BrokenFrame(ImageError):
    """A compressed frame whose own header is broken: no other decoder would do better."""


class Volume(object):
    """One parsed DICOM file: its header facts and its frames, decoded on first use."""

    def __init__(self, data, source):
        self.source = source
        try:
            self.pydicom = import_pydicom()
        except ImportError as exc:
            raise ImageError("{}: {}".format(source, exc))
        try:
            self.ds = self.pydicom.dcmread(io.BytesIO(data))
            self._read_header()
        except ImageError:
            raise
        except Exception as exc:  # pydicom raises many types for broken files
            if type(exc).__name__ == "InvalidDicomError":
                raise ImageError("{}: not a DICOM file (no 'DICM' mark after a 128-byte preamble)".format(source))
            raise ImageError("{}: not a readable DICOM file ({}: {})".format(source, type(exc).__name__, exc))
        self._array = self._encoded = None
        self.undecodable = False
        self.opencv_error = ""

    def _read_header(self):
        ds = self.ds
        if "PixelData" not in ds:
            raise ImageError("{}: no pixel data in this DICOM (Modality {}): a truncated file, or not an image "
                             "(e.g. a report)".format(self.source, ds.get("Modality", "?")))
        self.syntax = str(ds.file_meta.TransferSyntaxUID)
        self.syntax_name = getattr(ds.file_meta.TransferSyntaxUID, "name", self.syntax)
        self.code = str(ds.get("Modality", "") or "").upper()
        self.rows, self.columns = int(ds.Rows), int(ds.Columns)
        self.frames = int(ds.get("NumberOfFrames", 1) or 1)
        self.samples = int(ds.get("SamplesPerPixel", 1) or 1)
        self.photometric = str(ds.PhotometricInterpretation).strip().upper()
        self.bits_allocated, self.bits_stored = int(ds.BitsAllocated), int(ds.get("BitsStored", ds.BitsAllocated))
        self.signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
        if self.rows <= 0 or self.columns <= 0 or self.frames <= 0:
            raise ImageError("{}: DICOM declares {}x{} pixels in {} frame(s)".format(
                self.source, self.columns, self.rows, self.frames))
        if self.rows * self.columns > MAX_PIXELS:
            raise ImageError("{}: DICOM declares {}x{} pixels per frame, more than the {:.0f} MP limit".format(
                self.source, self.columns, self.rows, MAX_PIXELS / 1e6))
        volume_bytes = self.rows * self.columns * self.samples * self.frames * max(1, self.bits_allocated // 8)
        native = not getattr(ds.file_meta.TransferSyntaxUID, "is_compressed", False)
        if native:  # uncompressed: the header says how many bytes there must be
            bits = self.rows * self.columns * self.frames * self.bits_allocated * (
                2 if self.photometric == "YBR_FULL_422" else self.samples)
            needed, held = (bits + 7) // 8, len(ds.PixelData)
            if held < needed:
                raise ImageError("{}: truncated DICOM (the pixel data holds {} bytes, the header declares {} "
                                 "frame(s) of {}x{}: {} bytes)".format(self.source, held, self.frames, self.columns,
                                                                       self.rows, needed))
        if volume_bytes > MAX_VOLUME_BYTES:
            raise ImageError("{}: DICOM volume of {} frames would decode to {:.1f} GiB, more than the {:.0f} GiB "
                             "limit".format(self.source, self.frames, volume_bytes / 2.0 ** 30,
                                            MAX_VOLUME_BYTES / 2.0 ** 30))

    @property
    def modality(self):
        """The pipeline's modality: fundus (OP), oct (OPT), else the DICOM code in lower case."""
        return MODALITIES.get(self.code, self.code.lower() or "unknown")

    def facts(self):
        """The volume's header facts, flat and JSON-able (they go into every frame's meta)."""
        return {"modality": self.modality, "dicom_modality": self.code or "?", "frames": self.frames,
                "photometric": self.photometric, "bits_stored": self.bits_stored,
                "transfer_syntax": self.syntax_name}

    def frame(self, index):
        """Frame ``index`` as HxWx3 uint8 RGB; raises ImageError naming the file (and frame)."""
        if self.syntax in OPENCV_SYNTAXES and self._array is None:
            try:
                return self._opencv_frame(index)
            except ImageError as exc:
                if index > 0 or isinstance(exc, _BrokenFrame):
                    raise
                self.opencv_error = str(exc)
                # frame 0 failed with OpenCV: let the installed pydicom handlers try the whole volume
        arr = self._decoded()
        return self._to_rgb8(arr[index], self.photometric_decoded)

    def _where(self, index):
        return "{} frame {}".format(self.source, index) if self.frames > 1 else self.source

    def _opencv_frame(self, index):
        if self._encoded is None:
            try:
                self._encoded = _encapsulated_frames(self.pydicom, self.ds.PixelData, self.frames)
            except Exception as exc:  # broken item tags or lengths in the encapsulated pixel data
                self._encoded = []
                raise ImageError("{}: broken encapsulated {} pixel data ({})".format(
                    self.source, self.syntax_name, exc))
        if index >= len(self._encoded):
            raise ImageError("{}: the pixel data holds {} of {} frames".format(
                self._where(index), len(self._encoded), self.frames))
        stream = self._encoded[index]
        if sniff(stream) == "jpeg":  # the image decoder's checks: declared size, truncation
            try:
                info = read_info(stream, "jpeg")
            except HeaderError as exc:
                raise _BrokenFrame("{}: {}".format(self._where(index), exc))
            if (info.width, info.height) != (self.columns, self.rows):
                raise _BrokenFrame("{}: the JPEG frame declares {}x{} pixels, the DICOM header {}x{}".format(
                    self._where(index), info.width, info.height, self.columns, self.rows))
        quiet_opencv()
        try:
            img = cv2.imdecode(np.frombuffer(stream, np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error:
            img = None
        if img is None or (img.ndim == 3 and img.shape[2] != 3):
            raise ImageError("{}: OpenCV cannot decode this {} frame".format(self._where(index), self.syntax_name))
        if img.shape[:2] != (self.rows, self.columns):
            raise ImageError("{}: the {} frame is {}x{} pixels, the header declares {}x{}".format(
                self._where(index), self.syntax_name, img.shape[1], img.shape[0], self.columns, self.rows))
        if img.ndim == 3:  # the codec turned YCbCr (JPEG) or its colour transform (JPEG 2000) into BGR
            return self._to_rgb8(img[..., ::-1], "RGB")
        return self._to_rgb8(img, self.photometric)

    def _decoded(self):
        """Every frame's stored values (frames, rows, columns[, samples]), decoded once."""
        if self._array is None:
            try:
                arr = _stored_pixels(self.pydicom, self.ds)
            except Exception as exc:
                self.undecodable = True  # the whole volume: one error row, not one per frame
                raise ImageError(self._cannot_decode(exc))
            if self.frames == 1:
                arr = arr[None]
            if not self.signed and self.bits_stored < arr.dtype.itemsize * 8:
                arr = arr & np.array((1 << self.bits_stored) - 1, arr.dtype)  # bits above Bits Stored
            self._array = arr
            self.photometric_decoded = str(self.ds.PhotometricInterpretation).strip().upper()  # pydicom 2 sets RGB
        return self._array

    def _cannot_decode(self, exc):
        compressed = getattr(self.ds.file_meta.TransferSyntaxUID, "is_compressed", False)
        if self.opencv_error:  # OpenCV tried first: a corrupt stream, or one it cannot read (12-bit JPEG)
            return "{} (corrupt, or 12-bit), and no installed pydicom decoder could ({}); if the file is sound, " \
                   "another decoder may: {}".format(self.opencv_error, type(exc).__name__,
                                                    INSTALL_HINTS.get(self.syntax, _DEFAULT_HINT))
        if compressed and ("handler" in str(exc).lower() or "plugin" in str(exc).lower()
                           or isinstance(exc, (NotImplementedError, RuntimeError))):
            return "{}: pixel data in {} ({}) needs a decoder that is not installed: {}".format(
                self.source, self.syntax_name, self.syntax, INSTALL_HINTS.get(self.syntax, _DEFAULT_HINT))
        return "{}: cannot decode the DICOM pixel data ({}, {}: {})".format(
            self.source, self.syntax_name, type(exc).__name__, exc)

    def _to_rgb8(self, stored, photometric):
        return stored_to_rgb8(stored, self.ds, photometric, self.bits_stored, self.signed)


def _stored_pixels(pydicom, ds):
    """All frames, colour as stored: pydicom 3 converts YBR to RGB unless asked for the raw values."""
    pixels = getattr(pydicom, "pixels", None)
    if pixels is not None and hasattr(pixels, "pixel_array"):
        return pixels.pixel_array(ds, raw=True)
    return ds.pixel_array


def _encapsulated_frames(pydicom, pixel_data, frames):
    encaps = pydicom.encaps
    if hasattr(encaps, "generate_frames"):  # pydicom 3
        return list(encaps.generate_frames(pixel_data, number_of_frames=frames))
    return list(encaps.generate_pixel_data_frame(pixel_data, frames))


def stored_to_rgb8(stored, ds, photometric, bits_stored, signed):
    """One frame of stored values -> HxWx3 uint8 RGB (see the module docstring for the order)."""
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        if stored.ndim == 3:
            stored = stored[..., 0]
        values = stored.astype(np.float64)
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        values = values * slope + intercept
        grey = _window(values, ds)
        if grey is None:
            low, high = _stored_range(bits_stored, signed)
            low, high = sorted((low * slope + intercept, high * slope + intercept))
            grey = (values - low) / max(high - low, 1e-9) * 255.0
        grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
        if photometric == "MONOCHROME1":
            grey = 255 - grey
        return cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)
    if photometric == "PALETTE COLOR":
        rgb = _apply_color_lut(stored, ds)
        return _scale8(rgb, 16 if rgb.dtype == np.uint16 else 8)
    if photometric in _COLOUR and stored.ndim == 3 and stored.shape[2] == 3:
        rgb = _scale8(stored, bits_stored)
        if photometric in ("YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_420"):
            rgb = cv2.cvtColor(np.ascontiguousarray(rgb[..., [0, 2, 1]]), cv2.COLOR_YCrCb2RGB)
        return rgb
    raise ImageError("unsupported photometric interpretation {} with shape {}".format(photometric, stored.shape))


def _apply_color_lut(stored, ds):
    try:
        from pydicom.pixels import apply_color_lut  # pydicom 3
    except ImportError:
        from pydicom.pixel_data_handlers.util import apply_color_lut
    return apply_color_lut(stored, ds)


def _scale8(values, bits):
    if values.dtype == np.uint8 and bits <= 8:
        return np.ascontiguousarray(values)
    top = float((1 << bits) - 1)
    return np.clip(np.rint(values.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)


def _stored_range(bits, signed):
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _first(value):
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def _window(values, ds):
    """The first Window Center/Width applied as PS3.3 C.11.2.1.2 says, to 0..255; None without one."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    centre, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    if function == "SIGMOID":
        return 255.0 / (1.0 + np.exp(-4.0 * (values - centre) / max(width, 1e-9)))
    if function == "LINEAR_EXACT":
        return np.clip((values - centre) / max(width, 1e-9) + 0.5, 0.0, 1.0) * 255.0
    if width <= 1:  # LINEAR with width 1: a threshold
        return np.where(values > centre - 0.5, 255.0, 0.0)
    return np.clip((values - (centre - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0) * 255.0


def dicom_frames(captured):
    """The frames of one captured DICOM file (a Frame holding its bytes): one per frame of the volume.

    A file that cannot be parsed or decoded is one error frame naming it; a
    frame that cannot be decoded is an error frame naming the file and frame.
    """
    if captured.error:
        yield captured
        return
    path, base = captured.source_id, dict(captured.meta)
    try:
        volume = Volume(captured.data, path)
    except ImageError as exc:
        yield Frame(path, error="decode: {}".format(exc), meta=base)
        return
    finally:
        captured.data = None
    base.update(volume.facts())
    for index in range(volume.frames):
        meta = dict(base)
        source_id = path
        if volume.frames > 1:
            meta["index"] = index
            source_id = "{}#{}".format(path, index)
        try:
            yield Frame(source_id, image=volume.frame(index), meta=meta)
        except ImageError as exc:
            if volume.undecodable:
                yield Frame(path, error="decode: {}".format(exc), meta=base)
                return
            yield Frame(source_id, error="decode: {}".format(exc), meta=meta)


class DicomFile(ImageFiles):
    """A single DICOM file given as the input: its frames."""

    def __init__(self, uri, options=None):
        try:
            import_pydicom()
        except ImportError as exc:
            raise SourceError("{}: {}".format(uri.path, exc))
        super(DicomFile, self).__init__(uri, options)
