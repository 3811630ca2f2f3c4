"""edge/io/camera.py, capture.py, video.py: cameras, streams and video files (Python 3.6, no torch).

Video files are real: AVI/MJPG files written here with cv2.VideoWriter and read back through OpenCV's
FFmpeg. A CSI camera, the Argus daemon, a V4L2 device and a GStreamer-enabled OpenCV cannot exist on
this machine: for those, ``capture.build_information`` and ``capture.open_capture`` (the two places that
touch OpenCV's video I/O) are replaced by fakes, and the pipelines they receive are checked against
jetson-utils' (camera/gstCamera.cpp: ``nvarguscamerasrc sensor-id=N ! video/x-raw(memory:NVMM), width=(int)W,
height=(int)H, framerate=R/1, format=(string)NV12 ! nvvidconv flip-method=M``; flip numbers from
video/videoOptions.h) and jetson-inference's docs/aux-streaming.md URIs.
"""
import os
import sqlite3
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest

from edge.io import camera, capture
from edge.io.sources import SourceError, open_source

COLOURS_BGR = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]
GST_YES = "Video I/O:\n    FFMPEG:                      YES\n    GStreamer:                   YES (1.16.3)\n"
GST_YES_OLD = "Video I/O:\n    FFMPEG:     NO\n    GStreamer:\n      base:        YES (ver 1.14.5)\n"  # OpenCV 4.1


def make_avi(path, frames=12, size=(64, 48)):
    """An MJPG AVI whose frame i is a flat colour COLOURS_BGR[i % 4]."""
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10, size)
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), COLOURS_BGR[i % 4], np.uint8))
    writer.release()
    return path


class FakeCamera(object):
    """Stands in for cv2.VideoCapture on a device: ``fps`` frames a second whose pixels hold their number;
    ``frames`` of them then read() fails (unplugged); ``hang`` makes read() block as a dead driver does."""

    def __init__(self, fps=200.0, frames=None, hang=False, opened=True):
        self.fps, self.frames, self.hang, self.opened = fps, frames, hang, opened
        self.sets, self.released, self.n = [], threading.Event(), 0
        self.unblock = threading.Event()

    def isOpened(self):
        return self.opened

    def set(self, prop, value):
        self.sets.append((prop, value))
        return True

    def read(self):
        if self.hang:
            self.unblock.wait(30)
            return False, None
        if self.frames is not None and self.n >= self.frames:
            return False, None
        time.sleep(1.0 / self.fps)
        image = np.full((8, 8, 3), self.n % 256, np.uint8)
        self.n += 1
        return True, image

    def release(self):
        self.released.set()


@pytest.fixture
def opened(monkeypatch):
    """Replace open_capture: returns the queued fakes in turn and records (target, api) of every open."""
    calls, queue = [], []

    def fake_open(target, api):
        calls.append((target, api))
        return queue.pop(0) if queue else FakeCamera(opened=False)
    monkeypatch.setattr(capture, "open_capture", fake_open)
    return calls, queue


def with_gstreamer(monkeypatch, argus=None, info=GST_YES):
    monkeypatch.setattr(capture, "build_information", lambda: info)
    if argus is not None:
        monkeypatch.setattr(camera, "ARGUS_SOCKET", argus)


# --- what the build can do ---------------------------------------------------------------------------

def test_build_information_is_read_for_gstreamer_ffmpeg_and_gui(monkeypatch):
    assert capture.has_ffmpeg() and not capture.has_gstreamer() and not capture.has_gui()  # pip's headless wheel
    monkeypatch.setattr(capture, "build_information", lambda: GST_YES_OLD + "  GUI: \n    GTK+:   YES (ver 2.24)\n")
    assert capture.has_gstreamer() and not capture.has_ffmpeg() and capture.has_gui()


# --- CSI ---------------------------------------------------------------------------------------------------

def test_csi_pipeline_is_jetson_utils_own_ending_in_bgr_for_opencv():
    assert camera.csi_pipeline(1, 1920, 1080, 30, 2) == (
        "nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM), width=(int)1920, height=(int)1080, "
        "framerate=30/1, format=(string)NV12 ! nvvidconv flip-method=2 ! video/x-raw, format=(string)BGRx ! "
        "videoconvert ! video/x-raw, format=(string)BGR ! appsink drop=true max-buffers=1 sync=false")
    assert [camera.flip_method(n) for n in ("none", "counterclockwise", "rotate-180", "clockwise",
                                             "horizontal", "upper-right-diagonal", "vertical-flip",
                                             "upper-left-diagonal", "3", None)] == [0, 1, 2, 3, 4, 5, 6, 7, 3, 0]
    with pytest.raises(SourceError, match="flip='sideways': give one of none, counterclockwise"):
        camera.flip_method("sideways")


def test_csi_without_gstreamer_in_opencv_is_one_line_saying_to_use_jetpacks_opencv():
    with pytest.raises(SourceError) as info:  # the real build here: pip's wheel, GStreamer: NO
        open_source("csi://0")
    message = str(info.value)
    assert "\n" not in message and "GStreamer" in message and "cv2.getBuildInformation()" in message
    assert "JetPack's OpenCV" in message


def test_csi_with_the_argus_daemon_down_says_how_to_restart_it(tmp_path, monkeypatch):
    with_gstreamer(monkeypatch, argus=str(tmp_path / "argus_socket"))
    with pytest.raises(SourceError) as info:
        open_source("csi://0")
    assert "argus_socket is missing" in str(info.value) and "systemctl restart nvargus-daemon" in str(info.value)


def test_csi_opens_its_pipeline_with_query_and_command_line_options(tmp_path, monkeypatch, opened):
    argus = tmp_path / "argus_socket"
    argus.write_text(u"")
    with_gstreamer(monkeypatch, argus=str(argus))
    calls, queue = opened
    queue.append(FakeCamera())
    source = open_source("csi://1?width=1280&height=720&flip=rotate-180", {"width": 1920, "height": 1080})
    try:
        assert calls == [(camera.csi_pipeline(1, 1920, 1080, 30, 2), cv2.CAP_GSTREAMER)]
        assert source.live and source.name == "csi://1"
        frame = next(iter(source))
        assert frame.source_id.startswith("csi://1#") and frame.image.shape == (8, 8, 3)
        assert set(frame.meta) == {"index", "captured_at", "modality"} and frame.meta["modality"] == "fundus"
    finally:
        source.close()


def test_csi_camera_that_does_not_start_names_the_pipeline_and_how_to_test_it(tmp_path, monkeypatch, opened):
    argus = tmp_path / "argus_socket"
    argus.write_text(u"")
    with_gstreamer(monkeypatch, argus=str(argus))
    with pytest.raises(SourceError) as info:
        open_source("csi://0")
    assert "gst-launch-1.0 nvarguscamerasrc sensor-id=0 num-buffers=1 ! fakesink" in str(info.value)


# --- V4L2 --------------------------------------------------------------------------------------------------

def test_v4l2_without_the_device_says_so(monkeypatch):
    for uri in ("/dev/video57", "v4l2:///dev/video57"):
        with pytest.raises(SourceError) as info:
            open_source(uri)
        assert str(info.value).startswith("/dev/video57: no such device") and "--device /dev/video57" in str(
            info.value)
    assert camera.v4l2_target("/dev/video3") == 3
    assert camera.v4l2_target("/dev/v4l/by-id/usb-cam-video-index0") == "/dev/v4l/by-id/usb-cam-video-index0"


def test_v4l2_permission_denied_names_the_video_group(tmp_path, monkeypatch):
    device = tmp_path / "video0"
    device.write_text(u"")
    real_access = os.access
    # root (these tests' user) may open anything: deny the fake device as the kernel would a non-member
    monkeypatch.setattr(os, "access", lambda p, mode: False if p == str(device) else real_access(p, mode))
    with pytest.raises(SourceError, match="permission denied: add the user to the video group"):
        open_source("v4l2://" + str(device))


def test_v4l2_asks_for_the_codec_before_the_size(tmp_path, opened):
    device = tmp_path / "video0"
    device.write_text(u"")
    calls, queue = opened
    fake = FakeCamera()
    queue.append(fake)
    source = open_source("v4l2://{}?codec=mjpeg".format(device), {"width": 1280, "height": 720})
    try:
        assert calls == [(str(device), cv2.CAP_V4L2)]
        assert fake.sets == [(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG")),
                             (cv2.CAP_PROP_FRAME_WIDTH, 1280), (cv2.CAP_PROP_FRAME_HEIGHT, 720)]
        assert next(iter(source)).image is not None
    finally:
        source.close()
    with pytest.raises(SourceError, match="codec='vp9'"):
        open_source("v4l2://{}?codec=vp9".format(device))


# --- live reading: newest frame, timeouts, reconnects ----------------------------------------------------------

def live(tmp_path, opened, *fakes, **query):
    device = tmp_path / "video0"
    device.write_text(u"")
    calls, queue = opened
    queue.extend(fakes)
    source = open_source("v4l2://{}?{}".format(device, "&".join("{}={}".format(k, v) for k, v in query.items())))
    lines = []
    source.log = lines.append
    return source, lines, calls


def test_a_slow_consumer_gets_the_newest_frame_and_the_rest_are_dropped(tmp_path, opened):
    source, _, _ = live(tmp_path, opened, FakeCamera(fps=200))
    try:
        indices = []
        for frame in source:
            indices.append(frame.meta["index"])
            assert frame.image[0, 0, 0] == frame.meta["index"] % 256  # the pixels of that very frame
            time.sleep(0.05)  # a network far slower than the camera
            if len(indices) == 8:
                break
        assert indices == sorted(set(indices))  # never an old frame again
        assert indices[-1] - indices[0] > len(indices)  # frames were skipped to stay current
        assert source.reader.dropped > 0
    finally:
        source.close()


def test_a_read_that_brings_nothing_times_out_reconnects_and_then_ends_with_an_error_frame(tmp_path, opened):
    hung, hung_again = FakeCamera(hang=True), FakeCamera(hang=True)
    source, lines, calls = live(tmp_path, opened, hung, hung_again, timeout="0.2", reconnect="1")
    started = time.monotonic()
    frames = list(source)
    assert time.monotonic() - started < 15
    assert len(calls) == 2
    (frame,) = frames
    assert frame.error == "capture: v4l2://{}: no frame in 0.2 s; gave up after 1 reconnect(s)".format(
        tmp_path / "video0")
    assert lines == ["v4l2://{}: no frame in 0.2 s; reconnecting in 1 s (try 1 of 1)".format(tmp_path / "video0")]
    hung.unblock.set()
    hung_again.unblock.set()
    assert hung.released.wait(5)  # released by its own reader thread once read() returned


def test_a_stream_that_ends_is_reopened_and_its_frame_numbers_go_on(tmp_path, opened):
    source, lines, _ = live(tmp_path, opened, FakeCamera(fps=50, frames=3), FakeCamera(fps=50, frames=3),
                            timeout="2", reconnect="1")
    try:
        indices = []
        for frame in source:
            if frame.error:
                break
            indices.append(frame.meta["index"])
            if indices[-1] >= 4:
                break
        assert indices[-1] >= 4 and indices == sorted(set(indices))
        assert lines and "the stream ended; reconnecting" in lines[0]
    finally:
        source.close()


def test_stop_ends_a_live_source_waiting_for_a_frame(tmp_path, opened):
    hung = FakeCamera(hang=True)
    source, _, _ = live(tmp_path, opened, hung, timeout="30")
    threading.Timer(0.3, source.stop).start()
    started = time.monotonic()
    assert list(source) == []
    assert time.monotonic() - started < 5
    hung.unblock.set()


# --- network streams -------------------------------------------------------------------------------------------

def test_rtsp_through_ffmpeg_that_cannot_connect_is_one_line_without_the_password():
    with pytest.raises(SourceError) as info:  # nothing listens on port 9: refused at once
        open_source("rtsp://admin:secret@127.0.0.1:9/stream1")
    message = str(info.value)
    assert message.startswith("rtsp://127.0.0.1:9/stream1: FFmpeg could not open the stream")
    assert "secret" not in message and "admin" not in message and "\n" not in message


def test_rtsp_uses_gstreamer_where_opencv_has_it(monkeypatch, opened):
    with_gstreamer(monkeypatch)
    calls, queue = opened
    queue.append(FakeCamera())
    source = open_source("rtsp://cam.local:554/live?latency=200")
    try:
        assert calls == [("rtspsrc location=rtsp://cam.local:554/live?latency=200 latency=200 ! decodebin ! "
                          "videoconvert ! video/x-raw, format=(string)BGR ! appsink drop=true max-buffers=1 "
                          "sync=false", cv2.CAP_GSTREAMER)]
        assert source.timeout_s == 10.0
    finally:
        source.close()


def test_a_stream_with_neither_gstreamer_nor_ffmpeg_says_what_to_install(monkeypatch):
    monkeypatch.setattr(capture, "build_information", lambda: "Video I/O:\n  FFMPEG: NO\n  GStreamer: NO\n")
    with pytest.raises(SourceError, match="neither GStreamer nor FFmpeg"):
        open_source("http://cam.local/mjpeg")


# --- video files -------------------------------------------------------------------------------------------------

def test_a_video_file_yields_every_frame_in_order_upright_in_rgb_and_loops(tmp_path):
    path = make_avi(str(tmp_path / "clip.avi"))
    for uri, options, n in ((path, None, 12), ("file://" + path, {"loop": 1}, 24)):
        source = open_source(uri, options)
        assert not source.live and source.count() == n and source.root == str(tmp_path)
        frames = list(source)
        assert [f.meta["index"] for f in frames] == list(range(n))
        assert [f.source_id for f in frames[:2]] == [path + "#0", path + "#1"]
        for f in frames:
            b, g, r = COLOURS_BGR[f.meta["index"] % 4]
            assert np.abs(f.image[24, 32].astype(int) - (r, g, b)).max() < 40  # RGB, not BGR
            assert f.meta["path"] == path and f.meta["size_bytes"] == os.path.getsize(path)


def test_video_files_that_cannot_be_read_are_one_line(tmp_path):
    with pytest.raises(SourceError, match="no such video file"):
        open_source(str(tmp_path / "missing.mp4"))
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a movie")
    with pytest.raises(SourceError, match="OpenCV cannot read this video"):
        open_source(str(broken))
    with pytest.raises(SourceError, match="loop='twice'"):
        open_source(make_avi(str(tmp_path / "ok.avi")), {"loop": "twice"})


def test_the_cli_screens_a_video_with_input_loop_into_ledger_rows_per_frame(tmp_path, tiny_bundle, subprocess_env):
    path = make_avi(str(tmp_path / "clip.avi"), frames=5)
    ledger = str(tmp_path / "l.db")
    proc = subprocess.Popen([sys.executable, "-m", "edge", "run", path, "--input-loop", "1", "--model",
                             tiny_bundle.root, "--ledger", ledger, "-o", str(tmp_path / "annotated") + "/",
                             "--quiet"], cwd=str(tmp_path), env=subprocess_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    conn = sqlite3.connect(ledger)
    rows = conn.execute("select path, file, frame_index from results order by id").fetchall()
    conn.close()
    assert rows == [("{}#{}".format(path, i), path, i) for i in range(10)]
    assert sorted(os.listdir(str(tmp_path / "annotated"))) == [".retina-edge-output"] + [
        "clip.avi_frame{:06d}.jpg".format(i) for i in range(10)]
