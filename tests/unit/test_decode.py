"""Decoding every kind of input: odd but valid images screened upright as RGB uint8, bad ones refused
with an ImageError naming the file and the problem, and OpenCV kept quiet (Python 3.6, no torch).

Every image is made by the test (tests/synthetic.py), except tests/data/cmyk.jpg, which OpenCV
cannot write (made by tests/data/make_cmyk_jpeg.py with Pillow).
"""
import os
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest

from conftest import REPO_ROOT, TESTS_DIR
from edge.io.decode import MAX_PIXELS, ImageError, decode_image, read_image, to_rgb8
from edge.io.imageinfo import read_info
from synthetic import (STORED, jpeg_bytes, jpeg_header_only, png_bytes, png_chunk, png_header_only, tiff_bytes,
                       upright_pattern)


def write(tmp_path, name, data):
    path = str(tmp_path / name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def assert_close(a, b, tolerance):
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < tolerance


# --- decompression bombs -----------------------------------------------------------------------------

@pytest.mark.parametrize("name,make", [("bomb.png", png_header_only), ("bomb.jpg", jpeg_header_only)])
def test_huge_declared_dimensions_are_refused_before_decoding(tmp_path, name, make):
    path = write(tmp_path, name, make(60000, 60000))
    with pytest.raises(ImageError) as info:
        read_image(path)
    message = str(info.value)
    assert message.startswith(path + ": ") and "60000x60000" in message and "3600 MP" in message
    assert "limit" in message


def test_the_pixel_limit_is_the_declared_width_times_height():
    side = int(MAX_PIXELS ** 0.5) + 1
    assert read_info(png_header_only(side, side)).width == side
    with pytest.raises(ImageError, match="more than the 64 MP limit"):
        decode_image(png_header_only(side, side), "big.png")


def test_an_opencv_exception_becomes_an_image_error(monkeypatch):
    def boom(buf, flags):
        raise cv2.error("OpenCV(4.6.0) loadsave.cpp:77: error: (-215:Assertion failed) pixels <= CV_IO_MAX")
    monkeypatch.setattr(cv2, "imdecode", boom)
    with pytest.raises(ImageError, match=r"^scan.png: the PNG decoder failed \(.*Assertion failed"):
        decode_image(png_bytes(upright_pattern()), "scan.png")


# --- orientation -------------------------------------------------------------------------------------

@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("big_endian", [False, True])
def test_exif_rotated_jpegs_are_screened_upright(tmp_path, orientation, big_endian):
    upright = upright_pattern()
    data = jpeg_bytes(STORED[orientation](upright), orientation, big_endian=big_endian)
    rgb = read_image(write(tmp_path, "o{}.jpg".format(orientation), data))
    assert_close(rgb, upright, 3.0)
    # OpenCV's own reading of the tag (IMREAD_COLOR applies it) agrees
    reference = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(rgb, reference)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_png_exif_orientation_is_applied(orientation):
    upright = upright_pattern()
    data = png_bytes(np.ascontiguousarray(STORED[orientation](upright)[..., ::-1]), orientation)
    np.testing.assert_array_equal(decode_image(data, "o.png"), upright)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_tiff_orientation_is_applied_once(orientation):
    """OpenCV's TIFF decoder turns the image itself, even with IMREAD_UNCHANGED: it must not be turned twice."""
    upright = upright_pattern()
    data = tiff_bytes(np.ascontiguousarray(STORED[orientation](upright)), orientation)
    np.testing.assert_array_equal(decode_image(data, "o.tif"), upright)


def test_a_broken_exif_block_reads_as_upright():
    upright = upright_pattern()
    data = jpeg_bytes(upright, 6)
    i = data.index(b"Exif\x00\x00") + 6
    data = data[:i] + b"XX" + data[i + 2:]  # byte order mark destroyed
    assert_close(decode_image(data, "x.jpg"), upright, 3.0)


# --- odd but valid images ------------------------------------------------------------------------------

def test_cmyk_jpeg_is_screened_as_rgb():
    rgb = read_image(os.path.join(TESTS_DIR, "data", "cmyk.jpg"))
    assert rgb.dtype == np.uint8
    assert_close(rgb, upright_pattern(), 6.0)


def test_16_bit_rgba_png_is_scaled_and_composited(tmp_path):
    bgra = np.zeros((6, 8, 4), np.uint16)
    bgra[...] = (0, 257 * 100, 65535, 65535)
    bgra[:, 4:, 3] = 0
    rgb = read_image(write(tmp_path, "deep.png", cv2.imencode(".png", bgra)[1].tobytes()))
    np.testing.assert_array_equal(rgb[0, 0], [255, 100, 0])
    np.testing.assert_array_equal(rgb[0, 7], [0, 0, 0])


def test_rgba_png_is_composited_over_black(tmp_path):
    """A masked export (transparent outside the disc, white underneath) looks like the camera's black border."""
    bgra = np.zeros((10, 12, 4), np.uint8)
    bgra[...] = (255, 255, 255, 0)          # transparent white surround
    bgra[2:8, 2:10] = (10, 120, 250, 255)   # the opaque retina
    bgra[0, 0] = (200, 100, 50, 128)        # half transparent
    rgb = read_image(write(tmp_path, "alpha.png", cv2.imencode(".png", bgra)[1].tobytes()))
    np.testing.assert_array_equal(rgb[5, 5], [250, 120, 10])
    np.testing.assert_array_equal(rgb[9, 11], [0, 0, 0])
    np.testing.assert_array_equal(rgb[0, 0], [25, 50, 100])


def _grey_alpha_png(grey, alpha):
    """PNG colour type 4 (grey + alpha, 8 bit), which OpenCV cannot write."""
    h, w = grey.shape
    rows = np.dstack([grey, alpha]).reshape(h, w * 2)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 4, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw))
            + png_chunk(b"IEND", b""))


def test_grey_plus_alpha_png_becomes_three_equal_channels():
    grey = np.tile(np.arange(0, 240, 20, dtype=np.uint8), (5, 1))
    alpha = np.full_like(grey, 255)
    alpha[0] = 0
    rgb = decode_image(_grey_alpha_png(grey, alpha), "ga.png")
    assert rgb.shape == (5, 12, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[1:, :, 0], grey[1:])
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    assert not rgb[0].any()


def test_16_bit_grey_tiff_and_bmp_decode(tmp_path):
    grey16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    rgb = read_image(write(tmp_path, "g.tif", cv2.imencode(".tif", grey16)[1].tobytes()))
    np.testing.assert_array_equal(rgb[..., 1], ((grey16.astype(np.uint32) + 128) // 257).astype(np.uint8))
    bmp = read_image(write(tmp_path, "p.bmp", cv2.imencode(".bmp", upright_pattern()[..., ::-1])[1].tobytes()))
    np.testing.assert_array_equal(bmp, upright_pattern())


def test_to_rgb8_keeps_opaque_colour_unchanged():
    bgra = np.dstack([upright_pattern()[..., ::-1], np.full((48, 64), 255, np.uint8)])
    np.testing.assert_array_equal(to_rgb8(bgra), upright_pattern())


# --- bad files ---------------------------------------------------------------------------------------

def _truncated(data, keep=0.5):
    return data[:int(len(data) * keep)]


def _bad_files():
    png = png_bytes(upright_pattern())
    jpg = jpeg_bytes(upright_pattern())
    tif = tiff_bytes(upright_pattern())
    bmp = cv2.imencode(".bmp", upright_pattern())[1].tobytes()
    corrupt_png = bytearray(png)
    corrupt_png[png.index(b"IDAT") + 10] ^= 0xFF
    return [
        ("empty.jpg", b"", "empty file (0 bytes)"),
        ("half.jpg", _truncated(jpg), "truncated JPEG"),
        ("header.jpg", jpg[:20], "truncated JPEG"),
        ("half.png", _truncated(png), "truncated PNG"),
        ("half.tif", _truncated(tif), "truncated TIFF"),
        ("half.bmp", _truncated(bmp), "truncated BMP"),
        ("notes.png", b"this is a text file\n" * 20, "not a readable image (not a JPEG, PNG, TIFF or BMP file"),
        ("noihdr.png", png[:8] + png_chunk(b"tEXt", b"a\x00b") + png[8:], "broken PNG header (the first chunk"),
        ("crc.png", bytes(corrupt_png), "corrupt PNG (chunk 'IDAT'"),
        ("nosof.jpg", b"\xff\xd8" + b"\xff\xe0\x00\x04ab" + b"\xff\xda\x00\x02" + b"\x00" * 8 + b"\xff\xd9",
         "broken JPEG header (no frame header"),
        ("magic.tif", b"II*\x00" + struct.pack("<I", 9999) + b"\x00" * 30, "truncated TIFF header"),
        ("dib.bmp", b"BM" + b"\x00" * 8 + struct.pack("<II", 54, 7) + b"\x00" * 40, "broken BMP header"),
        ("eoi.jpg", b"\xff\xd8\xff\xd9" + b"\x00" * 8, "broken JPEG (end-of-image marker"),
    ]


@pytest.mark.parametrize("name,data,problem", _bad_files(), ids=[f[0] for f in _bad_files()])
def test_bad_files_raise_an_image_error_naming_the_file_and_the_problem(tmp_path, name, data, problem):
    path = write(tmp_path, name, data)
    with pytest.raises(ImageError) as info:
        read_image(path)
    assert str(info.value).startswith(path + ": "), str(info.value)
    assert problem in str(info.value)


def test_a_dicom_file_is_not_decoded_as_an_image():
    data = b"\x00" * 128 + b"DICM" + b"\x00" * 64
    with pytest.raises(ImageError, match="scan.dcm: a DICOM file reached the image decoder"):
        decode_image(data, "scan.dcm")


# --- OpenCV's log lines --------------------------------------------------------------------------------

_QUIET_SCRIPT = r"""
import os, struct, sys
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
import cv2
def level():
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    return logging.getLogLevel() if logging is not None and hasattr(logging, "getLogLevel") else cv2.getLogLevel()
before = level()
import edge.io.decode, edge.io.dicom, edge.io.sources, edge.pipeline, edge.checks  # importing changes nothing
assert level() == before, (level(), before)
from synthetic import tiff_bytes, upright_pattern
from edge.io.decode import ImageError, decode_image
data = bytearray(tiff_bytes(upright_pattern()))
i = data.find(struct.pack("<HHI", 259, 3, 1))
data[i + 8:i + 10] = struct.pack("<H", 7)  # says JPEG-compressed, holds raw pixels: libtiff fails, OpenCV logs
try:
    decode_image(bytes(data), "odd.tif")
except ImageError as exc:
    print(exc)
sys.stdout.flush()
"""


def _decode_in_subprocess(extra_env):
    env = dict(os.environ)
    env.pop("OPENCV_LOG_LEVEL", None)
    env.update(extra_env)
    proc = subprocess.Popen([sys.executable, "-c", _QUIET_SCRIPT, REPO_ROOT], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode("utf-8", "replace")
    return out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def test_opencv_log_lines_do_not_reach_the_console_and_importing_sets_nothing():
    out, err = _decode_in_subprocess({})
    assert "odd.tif: not a readable image" in out
    assert "[ WARN" not in err and "[ERROR" not in err, err
    # the control: with the user's own OPENCV_LOG_LEVEL, OpenCV's lines come back (so the test can fail)
    _, loud = _decode_in_subprocess({"OPENCV_LOG_LEVEL": "WARNING"})
    assert "[ WARN" in loud or "[ERROR" in loud, loud


def test_truncated_and_broken_files_print_nothing_at_all(tmp_path):
    """libpng, libtiff and OpenCV 4.6's imdecode_ print past the log level; the header checks keep
    truncated and broken files from reaching them."""
    paths = [write(tmp_path, name, data) for name, data, _ in _bad_files()]
    script = ("import sys; sys.path.insert(0, sys.argv[1])\n"
              "from edge.io.decode import ImageError, read_image\n"
              "for p in sys.argv[2:]:\n"
              "    try: read_image(p)\n"
              "    except ImageError: pass\n")
    env = dict(os.environ)
    env.pop("OPENCV_LOG_LEVEL", None)
    proc = subprocess.Popen([sys.executable, "-c", script, REPO_ROOT] + paths, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and out == b"" and err == b"", err.decode("utf-8", "replace")
