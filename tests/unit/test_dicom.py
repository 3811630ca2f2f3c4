"""edge/io/dicom.py: ophthalmic photography (OP) and OCT (OPT) DICOM files made by the tests with pydicom.

No open OCT data is reachable from the development machine: the OCT volumes here are synthetic
B-scans (tests/synthetic.py: speckled, layered) wrapped in DICOM. Python 3.6 safe, no torch.
"""
import os
import sys

import cv2
import numpy as np
import pytest

from edge.io.decode import ImageError
from edge.io.sources import SourceError, list_images, open_source, read_file_frame
from edge.records import Frame, Result
from synthetic import (JPEG_BASELINE, JPEG_EXTENDED, JPEG_LS_LOSSLESS, OP_IMAGE_16, bscan, jpeg_bytes, make_dicom,
                       upright_pattern, ybr_full_422)

pytest.importorskip("pydicom", reason="pydicom is not installed (pip install 'pydicom>=2.3')")

from edge.io.dicom import DicomFile, dicom_frames, stored_to_rgb8  # noqa: E402
from edge.io.volumes import VolumeTally, summary_line  # noqa: E402


def write(folder, name, data):
    path = os.path.join(str(folder), name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def frames_of(path):
    return list(dicom_frames(read_file_frame(path)))


def only_image(path):
    (frame,) = frames_of(path)
    assert frame.error == "", frame.error
    return frame


# --- ophthalmic photography --------------------------------------------------------------------------

def test_op_rgb_is_one_fundus_frame_with_the_volume_facts(tmp_path):
    rgb = upright_pattern()
    path = write(tmp_path, "op.dcm", make_dicom(rgb, "RGB"))
    frame = only_image(path)
    np.testing.assert_array_equal(frame.image, rgb)
    assert frame.source_id == path and "index" not in frame.meta
    meta = frame.meta
    assert meta["modality"] == "fundus" and meta["dicom_modality"] == "OP" and meta["frames"] == 1
    assert meta["photometric"] == "RGB" and meta["bits_stored"] == 8
    assert meta["transfer_syntax"] == "Explicit VR Little Endian"
    assert meta["path"] == path and meta["size_bytes"] == os.path.getsize(path)


def test_op_ybr_full_422_is_converted_to_rgb(tmp_path):
    rgb = upright_pattern()
    path = write(tmp_path, "ybr422.dcm", make_dicom(ybr_full_422(rgb).reshape(48, -1), "YBR_FULL_422",
                                                    extra={"Rows": 48, "Columns": 64}))
    image = only_image(path).image
    assert image.shape == rgb.shape
    assert np.abs(image.astype(int) - rgb.astype(int)).max() <= 3  # blocks of even width: no chroma bleeding


def test_op_ybr_full_is_converted_to_rgb(tmp_path):
    rgb = upright_pattern()
    ycrcb = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)
    path = write(tmp_path, "ybr.dcm", make_dicom(np.ascontiguousarray(ycrcb[..., [0, 2, 1]]), "YBR_FULL"))
    assert np.abs(only_image(path).image.astype(int) - rgb.astype(int)).max() <= 2


def test_op_monochrome2_16_bit_uses_the_stored_range_without_a_window(tmp_path):
    grey = np.array([[0, 257, 32896], [65535, 1000, 60000]], np.uint16)
    path = write(tmp_path, "m16.dcm", make_dicom(grey, "MONOCHROME2", sop_class=OP_IMAGE_16))
    image = only_image(path).image
    np.testing.assert_array_equal(image[..., 0], [[0, 1, 128], [255, 4, 233]])
    np.testing.assert_array_equal(image[..., 0], image[..., 2])


def test_op_monochrome2_16_bit_uses_the_window_when_present(tmp_path):
    grey = np.array([[0, 900, 1000, 1100, 1999, 2000, 2050, 4000]], np.uint16)
    path = write(tmp_path, "win.dcm", make_dicom(grey, "MONOCHROME2", window=(1500, 1000)))
    # LINEAR: below c - 0.5 - (w-1)/2 = 1000 -> 0, above c - 0.5 + (w-1)/2 = 1999 -> 255
    np.testing.assert_array_equal(only_image(path).image[0, :, 0], [0, 0, 0, 26, 255, 255, 255, 255])


def test_12_bit_values_are_masked_and_signed_ones_mapped_from_their_range(tmp_path):
    stored = np.array([[0xF000 | 4095, 0x1000 | 2048, 0]], np.uint16)  # garbage above bit 11
    path = write(tmp_path, "u12.dcm", make_dicom(stored, "MONOCHROME2", bits_stored=12))
    np.testing.assert_array_equal(only_image(path).image[0, :, 0], [255, 128, 0])
    signed = np.array([[-2048, 0, 2047]], np.int16)
    path = write(tmp_path, "s12.dcm", make_dicom(signed, "MONOCHROME2", bits_stored=12, signed=True))
    np.testing.assert_array_equal(only_image(path).image[0, :, 0], [0, 128, 255])


def test_monochrome1_is_inverted(tmp_path):
    grey = np.array([[0, 64, 255]], np.uint8)
    path = write(tmp_path, "m1.dcm", make_dicom(grey, "MONOCHROME1"))
    np.testing.assert_array_equal(only_image(path).image[0, :, 1], [255, 191, 0])


def test_jpeg_baseline_frames_are_decoded_with_opencv(tmp_path):
    rgb = upright_pattern()
    stream = jpeg_bytes(rgb, quality=98)
    path = write(tmp_path, "jpeg.dcm", make_dicom(rgb, "YBR_FULL_422", syntax=JPEG_BASELINE, frames=2,
                                                  encoded_frames=[stream, jpeg_bytes(rgb[::-1], quality=98)]))
    frames = frames_of(path)
    assert [f.source_id for f in frames] == [path + "#0", path + "#1"]
    assert np.abs(frames[0].image.astype(int) - rgb.astype(int)).mean() < 3
    assert np.abs(frames[1].image.astype(int) - rgb[::-1].astype(int)).mean() < 3
    assert frames[0].meta["transfer_syntax"] == "JPEG Baseline (Process 1)"


def test_a_syntax_nothing_installed_decodes_is_one_error_naming_it_and_what_to_install(tmp_path):
    rgb = upright_pattern()
    path = write(tmp_path, "jls.dcm", make_dicom(rgb[..., 0], "MONOCHROME2", syntax=JPEG_LS_LOSSLESS, frames=3,
                                                 encoded_frames=[b"\xff\xd8\xff\xf7" + b"\x00" * 30] * 3))
    frames = frames_of(path)
    if not frames[0].error:
        pytest.skip("a JPEG-LS decoder (pylibjpeg or GDCM) is installed here")
    assert len(frames) == 1 and frames[0].source_id == path
    error = frames[0].error
    assert error.startswith("decode: " + path + ": ") and "JPEG-LS Lossless" in error
    assert "1.2.840.10008.1.2.4.80" in error and "pip install pylibjpeg" in error


# --- OCT ------------------------------------------------------------------------------------------------

def test_opt_volume_yields_one_oct_frame_per_b_scan(tmp_path):
    volume = np.stack([bscan(seed=i) for i in range(4)])
    path = write(tmp_path, "oct.dcm", make_dicom(volume, "MONOCHROME2", modality="OPT", frames=4))
    frames = frames_of(path)
    assert [f.source_id for f in frames] == ["{}#{}".format(path, i) for i in range(4)]
    assert [f.meta["index"] for f in frames] == [0, 1, 2, 3]
    for f, scan in zip(frames, volume):
        assert f.meta["modality"] == "oct" and f.meta["dicom_modality"] == "OPT" and f.meta["frames"] == 4
        np.testing.assert_array_equal(f.image[..., 0], scan)
        assert f.image.shape == (96, 128, 3) and f.image.dtype == np.uint8


def test_12_bit_opt_volume_in_16_bits_is_scaled_by_its_stored_range(tmp_path):
    volume = np.stack([bscan(seed=i, dtype=np.uint16) for i in range(2)])
    path = write(tmp_path, "oct12.dcm", make_dicom(volume, "MONOCHROME2", modality="OPT", frames=2,
                                                   bits_stored=12))
    frames = frames_of(path)
    expected = np.rint(volume[1] * (255.0 / 4095)).astype(np.uint8)
    np.testing.assert_array_equal(frames[1].image[..., 0], expected)


# --- broken files and missing pydicom -------------------------------------------------------------------

def _broken_dicoms():
    good = make_dicom(upright_pattern(), "RGB")
    pixel_at = good.rindex(b"\xe0\x7f\x10\x00")
    return [
        ("garbage.dcm", b"\x00" * 128 + b"DICM" + np.random.RandomState(0).bytes(200), "no pixel data"),
        ("cut.dcm", good[:200], "no pixel data in this DICOM (Modality ?): a truncated file"),
        ("short.dcm", good[:pixel_at + 500], "truncated DICOM (the pixel data holds 488 bytes, the header "
                                             "declares 1 frame(s) of 64x48: 9216 bytes)"),
        ("nodicm.dcm", b"hello, this is not DICOM at all" * 10, "not a DICOM file (no 'DICM' mark"),
        ("empty.dcm", b"", "not a DICOM file"),
    ]


@pytest.mark.parametrize("name,data,problem", _broken_dicoms(), ids=[b[0] for b in _broken_dicoms()])
def test_a_broken_dicom_is_one_error_frame_naming_the_file(tmp_path, name, data, problem):
    path = write(tmp_path, name, data)
    (frame,) = frames_of(path)
    assert frame.image is None and frame.source_id == path
    assert frame.error.startswith("decode: " + path + ": "), frame.error
    assert problem in frame.error, frame.error


def test_without_pydicom_a_dicom_is_an_error_row_and_a_dicom_input_one_clear_line(tmp_path, monkeypatch):
    path = write(tmp_path, "op.dcm", make_dicom(upright_pattern(), "RGB"))
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom now raises ImportError
    (frame,) = frames_of(path)
    assert frame.error == "decode: {}: DICOM files need pydicom, which is not installed: " \
                          "pip install 'pydicom>=2.3'".format(path)
    with pytest.raises(SourceError) as info:
        open_source(path)
    assert str(info.value) == "{}: DICOM files need pydicom, which is not installed: " \
                              "pip install 'pydicom>=2.3'".format(path)


# --- sources ------------------------------------------------------------------------------------------

def test_folders_list_dicom_files_and_a_dcm_path_is_a_dicom_source(tmp_path):
    volume = np.stack([bscan(seed=i) for i in range(3)])
    oct_path = write(tmp_path, "b_oct.DCM", make_dicom(volume, "MONOCHROME2", modality="OPT", frames=3))
    op_path = write(tmp_path, "a_op.dicom", make_dicom(upright_pattern(), "RGB"))
    no_suffix = write(tmp_path, "IM000001", make_dicom(upright_pattern(), "RGB"))
    assert list_images(str(tmp_path)) == [op_path, oct_path]  # suffixes; an export without them is not listed
    folder = open_source(str(tmp_path))
    ids = [f.source_id for f in folder]
    assert ids == [op_path, oct_path + "#0", oct_path + "#1", oct_path + "#2"]
    source = open_source(oct_path)
    assert isinstance(source, DicomFile) and len(list(source)) == 3
    # a DICOM without a suffix, given by name, is recognised by its DICM mark
    (frame,) = list(open_source(no_suffix))
    assert frame.meta["dicom_modality"] == "OP" and frame.image is not None


def test_volume_tally_sums_a_volume_once_its_last_frame_is_in():
    tally = VolumeTally()
    meta = {"path": "/x/oct.dcm", "frames": 3, "modality": "oct", "dicom_modality": "OPT"}
    results = [Result("/x/oct.dcm#2", "skipped", error="m"), Result("/x/oct.dcm#0", "ok", "normal", 0.9),
               Result("/x/oct.dcm#1", "error", error="e")]
    done = [tally.add(Frame(r.path, meta=dict(meta, index=i)), r) for i, r in zip((2, 0, 1), results)]
    assert done[:2] == [None, None]
    summary = done[2]
    assert summary == {"path": "/x/oct.dcm", "modality": "oct", "dicom_modality": "OPT", "frames": 3,
                       "size_bytes": None, "mtime_ns": None, "model": None,
                       "statuses": {"skipped": 1, "ok": 1, "error": 1}, "labels": {"normal": 1},
                       "worst": {"index": 0, "source": "/x/oct.dcm#0", "label": "normal", "confidence": 0.9,
                                 "refer": None, "probs": None}}
    assert summary_line(summary) == ("volume /x/oct.dcm: 3 frames, oct (DICOM OPT): 1 ok (normal 1), 1 skipped, "
                                     "1 error; worst: frame 0 (normal 90.0%)")
    assert tally.add(Frame("/x/a.jpg", meta={"path": "/x/a.jpg"}), results[1]) is None
    assert tally.open == {}


def test_palette_colour_goes_through_its_lookup_table(tmp_path):
    index = np.array([[0, 1, 2]], np.uint8)
    lut = {"RedPaletteColorLookupTableDescriptor": [256, 0, 16], "GreenPaletteColorLookupTableDescriptor":
           [256, 0, 16], "BluePaletteColorLookupTableDescriptor": [256, 0, 16]}
    red, green, blue = (np.zeros(256, "<u2") for _ in range(3))
    red[1], green[2], blue[2] = 65535, 65535, 257 * 10
    lut.update(RedPaletteColorLookupTableData=red.tobytes(), GreenPaletteColorLookupTableData=green.tobytes(),
               BluePaletteColorLookupTableData=blue.tobytes())
    path = write(tmp_path, "pal.dcm", make_dicom(index, "PALETTE COLOR", extra=lut))
    np.testing.assert_array_equal(only_image(path).image[0], [[0, 0, 0], [255, 0, 0], [0, 255, 10]])


def test_stored_to_rgb8_refuses_what_it_does_not_know():
    with pytest.raises(ImageError, match="unsupported photometric interpretation HSV"):
        stored_to_rgb8(np.zeros((2, 2, 3), np.uint8), {}, "HSV", 8, False)



def test_a_12_bit_jpeg_opencv_cannot_read_is_one_error_row_saying_what_to_install(tmp_path):
    stream = bytearray(jpeg_bytes(upright_pattern()))
    stream[stream.index(b"\xff\xc0") + 4] = 12  # sample precision 12: OpenCV's libjpeg reads 8 bits
    path = write(tmp_path, "jpeg12.dcm", make_dicom(upright_pattern(), "YBR_FULL_422", syntax=JPEG_EXTENDED,
                                                    frames=2, encoded_frames=[bytes(stream)] * 2))
    (frame,) = frames_of(path)  # no installed decoder reads it: one row for the file, not one per frame
    if not frame.error:
        pytest.skip("a 12-bit JPEG decoder (pylibjpeg or GDCM) is installed here")
    assert frame.source_id == path
    assert frame.error.startswith("decode: {} frame 0: OpenCV cannot decode this JPEG Extended".format(path))
    assert "pip install pylibjpeg pylibjpeg-libjpeg" in frame.error


def test_a_broken_jpeg_frame_header_is_named_and_not_handed_to_other_decoders(tmp_path):
    path = write(tmp_path, "badjpeg.dcm", make_dicom(upright_pattern(), "YBR_FULL_422", syntax=JPEG_BASELINE,
                                                     encoded_frames=[b"\xff\xd8\xff\xe0garbage\xff\xd9"]))
    (frame,) = frames_of(path)
    assert frame.error == "decode: {}: truncated JPEG (segment FFE0 at byte 2 runs past the end)".format(path)


def test_a_truncated_jpeg_frame_is_an_error_row_for_that_frame_only(tmp_path):
    rgb = upright_pattern()
    good, cut = jpeg_bytes(rgb), jpeg_bytes(rgb[::-1])
    cut = cut[:len(cut) - 40]  # no end-of-image marker: OpenCV 4.6 would fill the rest grey
    path = write(tmp_path, "cut.dcm", make_dicom(rgb, "YBR_FULL_422", syntax=JPEG_BASELINE, frames=2,
                                                 encoded_frames=[good, cut + b"\x00" * (len(cut) % 2)]))
    first, second = frames_of(path)
    assert first.error == "" and first.source_id == path + "#0"
    assert second.image is None and second.source_id == path + "#1"
    assert second.error == "decode: {} frame 1: truncated JPEG (no end-of-image marker after the last scan)".format(
        path)
