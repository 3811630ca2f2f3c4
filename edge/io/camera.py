"""Live sources: MIPI CSI cameras (``csi://0``), V4L2 cameras (``v4l2:///dev/video0``, ``/dev/video0``)
and network streams (``rtsp://host:port/path``, ``http(s)://`` MJPEG/HLS), read with OpenCV.

Each is read on its own thread keeping only the newest frame (``edge.io.capture.LatestFrame``).
A read that brings no frame within ``timeout`` seconds (default 5; 10 for
network streams) is not waited on: the source prints one line, closes the
capture and opens it again, up to ``reconnect`` times in a row (default 3,
-1 = forever, pausing 1, 2, 4 … 30 s between tries); when they are spent it
yields one error frame saying why (so the ledger records how the run ended)
and ends. Any frame received resets the count.

The pipelines follow jetson-utils (``camera/gstCamera.cpp``, ``video/videoOptions.h``; the
URI vocabulary is jetson-inference's ``docs/aux-streaming.md``):

- CSI: ``nvarguscamerasrc sensor-id=N ! video/x-raw(memory:NVMM), width=(int)W,
  height=(int)H, framerate=R/1, format=(string)NV12 ! nvvidconv flip-method=M``, then
  ``video/x-raw, format=(string)BGRx ! videoconvert ! video/x-raw, format=(string)BGR ! appsink``
  for OpenCV. Flip names and their nvvidconv numbers are videoOptions' FlipMethod
  (none=0 … upper-left-diagonal=7). jetson-utils swaps none and rotate-180 on
  newer JetPacks for its own camera mount; we do not: ``flip=rotate-180`` if yours is upside down.
  Needs OpenCV built with GStreamer (JetPack's is, pip's wheels are not) and the Argus
  daemon (``/tmp/argus_socket``).
- V4L2: OpenCV's V4L2 backend with ``codec`` (e.g. mjpeg, the usual choice for USB cameras
  above 640x480), ``width``, ``height`` set before the first read.
- Network: GStreamer ``rtspsrc location=URL latency=MS ! decodebin ! videoconvert`` (or
  ``souphttpsrc``) where OpenCV has GStreamer, else OpenCV's FFmpeg backend.

A URI that cannot be opened is one line saying what to install or check. Credentials in
a stream URL are never printed nor stored: frame ids and messages use the URL without them.
"""
import os
import re
import time

from edge.io import capture
from edge.io.sources import Source, SourceError, stderr_line
from edge.records import Frame

ARGUS_SOCKET = "/tmp/argus_socket"

# videoOptions::FlipMethod, in order: the index is nvvidconv's flip-method number
FLIP_METHODS = ("none", "counterclockwise", "rotate-180", "clockwise", "horizontal-flip",
                "upper-right-diagonal", "vertical-flip", "upper-left-diagonal")
FOURCC = {"mjpeg": "MJPG", "mjpg": "MJPG", "yuyv": "YUYV", "yuy2": "YUYV", "h264": "H264", "h265": "HEVC",
          "raw": "YUYV"}
_MAX_PAUSE_S = 30.0


def _number(options, name, default, kind=float):
    value = options.get(name)
    if value is None or value == "":
        return default
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise SourceError("option {}={!r} is not a {}".format(name, value, "number" if kind is float else
                                                                 "whole number"))


def flip_method(value):
    """A flip name (jetson-utils' names; ``horizontal``/``vertical`` also) or 0-7 -> nvvidconv's number."""
    text = str(value or "none").strip().lower()
    if text.isdigit() and int(text) < len(FLIP_METHODS):
        return int(text)
    text = {"horizontal": "horizontal-flip", "vertical": "vertical-flip"}.get(text, text)
    if text not in FLIP_METHODS:
        raise SourceError("flip={!r}: give one of {}".format(value, ", ".join(FLIP_METHODS)))
    return FLIP_METHODS.index(text)


def csi_pipeline(sensor_id, width=1280, height=720, framerate=30, flip=0):
    """The GStreamer pipeline for a CSI camera through Argus, ending in BGR for OpenCV's appsink."""
    return ("nvarguscamerasrc sensor-id={} ! video/x-raw(memory:NVMM), width=(int){}, height=(int){}, "
            "framerate={}/1, format=(string)NV12 ! nvvidconv flip-method={} ! video/x-raw, format=(string)BGRx ! "
            "videoconvert ! video/x-raw, format=(string)BGR ! appsink drop=true max-buffers=1 sync=false"
            .format(int(sensor_id), int(width), int(height), int(framerate), int(flip)))


def network_pipeline(url, latency_ms=2000):
    """The GStreamer pipeline for an RTSP or HTTP stream (decodebin picks the decoder: nvv4l2decoder on a Jetson)."""
    head = ("rtspsrc location={} latency={}".format(url, int(latency_ms)) if url.lower().startswith("rtsp")
            else "souphttpsrc location={} is-live=true".format(url))
    return (head + " ! decodebin ! videoconvert ! video/x-raw, format=(string)BGR ! "
            "appsink drop=true max-buffers=1 sync=false")


def v4l2_target(device):
    """What OpenCV's V4L2 backend opens: the index N for /dev/videoN (every OpenCV takes it; not every
    version takes a path), else the path (a udev name such as /dev/v4l/by-id/...)."""
    match = re.match(r"^/dev/video(\d+)$", device)
    return int(match.group(1)) if match else device


def redact(url):
    """The URL without ``user:password@``."""
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@", r"\1", url)


class LiveSource(Source):
    """Base for cameras and streams: newest frame wins, reads time out, the capture is reopened."""
    live = True
    default_timeout_s = 5.0

    def __init__(self, uri, options=None):
        super(LiveSource, self).__init__(uri, options)
        self.timeout_s = _number(self.options, "timeout", self.default_timeout_s)
        self.reconnect = _number(self.options, "reconnect", 3, int)
        self.log = stderr_line
        self.reader = None
        self._stopping = False
        self.check()
        self._start()

    # subclasses: name (for ids and messages), check() (raises SourceError), open() -> capture, why_not_open()
    name = "camera"

    def check(self):
        pass

    def open(self):
        raise NotImplementedError

    def why_not_open(self):
        return "{}: could not be opened".format(self.name)

    def _start(self, start_index=0):
        cap = self.open()
        if cap is None or not cap.isOpened():
            if cap is not None:
                cap.release()
            raise SourceError(self.why_not_open())
        self.reader = capture.LatestFrame(cap, self.name, start_index)

    def describe(self):
        return "{} (live: newest frame first, {:g} s read timeout)".format(self.name, self.timeout_s)

    def stop(self):
        self._stopping = True
        if self.reader is not None:
            self.reader.stop()

    def close(self):
        self._stopping = True
        if self.reader is not None:
            self.reader.close()

    def __iter__(self):
        tries = 0  # reconnects in a row without a frame
        while not self._stopping:
            item = self.reader.get(self.timeout_s)
            if item is None:
                if self._stopping:
                    return
                why = "the stream ended" if self.reader.ended else "no frame in {:g} s".format(self.timeout_s)
                tries = self._recover(why, tries)
                if tries is None:
                    if not self._stopping:
                        yield Frame(self.name, error="capture: {}: {}; gave up after {} reconnect(s)".format(
                            self.name, why, max(self.reconnect, 0)), meta={"index": self.reader.next_index})
                    return
                continue
            tries = 0
            index, bgr, captured_at = item
            yield Frame("{}#{}".format(self.name, index), image=capture.bgr_to_rgb(bgr),
                        meta={"index": index, "captured_at": captured_at, "modality": "fundus"})

    def _recover(self, why, tries):
        """Close and reopen the capture after ``why``; the tries made so far, or None once they are spent
        (``reconnect`` in a row without a frame) or a stop was asked."""
        start_index = self.reader.next_index
        self.reader.close(join_s=0.2)
        while not self._stopping and (self.reconnect < 0 or tries < self.reconnect):
            tries += 1
            pause_s = min(2.0 ** (tries - 1), _MAX_PAUSE_S)
            self.log("{}: {}; reconnecting in {:g} s (try {}{})".format(
                self.name, why, pause_s, tries, "" if self.reconnect < 0 else " of {}".format(self.reconnect)))
            if self._sleep(pause_s):
                return None
            try:
                self._start(start_index)
                return tries
            except SourceError as exc:
                why = str(exc)
        return None

    def _sleep(self, seconds):
        """Sleep in short slices; True if a stop was asked meanwhile."""
        end = time.monotonic() + seconds
        while not self._stopping and time.monotonic() < end:
            time.sleep(min(0.1, max(end - time.monotonic(), 0)))
        return self._stopping


def _need_gstreamer(what):
    if not capture.has_gstreamer():
        raise SourceError("{} needs OpenCV built with GStreamer, and this one is not (cv2.getBuildInformation() "
                          "says GStreamer: NO; pip's opencv-python wheels never are): on a Jetson use JetPack's "
                          "OpenCV (python3-opencv from apt, or the l4t container) instead of pip's".format(what))


class CsiCamera(LiveSource):
    """``csi://N``: a MIPI CSI camera through nvarguscamerasrc. Options: width, height, framerate, flip."""

    def __init__(self, uri, options=None):
        try:
            self.sensor_id = int(uri.path or 0)
        except ValueError:
            raise SourceError("{}: a CSI camera is csi://N with N the sensor number (csi://0)".format(uri.text))
        self.name = "csi://{}".format(self.sensor_id)
        opts = dict(uri.options)
        opts.update(options or {})
        self.pipeline = csi_pipeline(self.sensor_id, _number(opts, "width", 1280, int),
                                     _number(opts, "height", 720, int), _number(opts, "framerate", 30, int),
                                     flip_method(opts.get("flip")))
        super(CsiCamera, self).__init__(uri, options)

    def check(self):
        _need_gstreamer(self.name)
        if not os.path.exists(ARGUS_SOCKET):
            raise SourceError("{}: the Argus camera daemon is not running ({} is missing): sudo systemctl restart "
                              "nvargus-daemon; in a container, mount it: -v {}:{}".format(
                                  self.name, ARGUS_SOCKET, ARGUS_SOCKET, ARGUS_SOCKET))

    def open(self):
        return capture.open_capture(self.pipeline, capture.apis()["gstreamer"])

    def why_not_open(self):
        return ("{}: GStreamer could not start the camera (is a camera on sensor-id {}? `gst-launch-1.0 "
                "nvarguscamerasrc sensor-id={} num-buffers=1 ! fakesink` says why); pipeline: {}".format(
                    self.name, self.sensor_id, self.sensor_id, self.pipeline))


class V4l2Camera(LiveSource):
    """``v4l2:///dev/videoN`` or ``/dev/videoN``: a USB (UVC) or other V4L2 camera. Options: width, height, codec."""

    def __init__(self, uri, options=None):
        self.device = uri.path or "/dev/video0"
        self.name = "v4l2://" + self.device
        super(V4l2Camera, self).__init__(uri, options)

    def check(self):
        if not os.path.exists(self.device):
            raise SourceError("{}: no such device (is the camera plugged in? `ls /dev/video*` lists them; in a "
                              "container pass --device {})".format(self.device, self.device))
        if not os.access(self.device, os.R_OK | os.W_OK):
            raise SourceError("{}: permission denied: add the user to the video group (sudo usermod -aG video "
                              "$USER, then log in again)".format(self.device))
        codec = self.options.get("codec")
        if codec and str(codec).lower() not in FOURCC:
            raise SourceError("{}: codec={!r}: give one of {}".format(self.device, codec, ", ".join(sorted(FOURCC))))

    def open(self):
        cap = capture.open_capture(v4l2_target(self.device), capture.apis()["v4l2"])
        if cap is not None and cap.isOpened():
            codec = self.options.get("codec")
            capture.set_format(cap, FOURCC[str(codec).lower()] if codec else None,
                               _number(self.options, "width", None, int), _number(self.options, "height", None, int))
        return cap

    def why_not_open(self):
        return ("{}: OpenCV's V4L2 backend could not open it (in use by another program? `v4l2-ctl -d {} "
                "--list-formats-ext` lists what it offers)".format(self.device, self.device))


class NetworkStream(LiveSource):
    """``rtsp://…`` and ``http(s)://…`` streams. Options: latency (ms, RTSP through GStreamer), timeout, reconnect."""
    default_timeout_s = 10.0

    def __init__(self, uri, options=None):
        self.url = uri.path
        self.name = redact(self.url)
        super(NetworkStream, self).__init__(uri, options)

    def check(self):
        if not (capture.has_gstreamer() or capture.has_ffmpeg()):
            raise SourceError("{}: this OpenCV has neither GStreamer nor FFmpeg (cv2.getBuildInformation(), Video "
                              "I/O): install opencv-python-headless from pip (FFmpeg) or use JetPack's OpenCV "
                              "(GStreamer)".format(self.name))

    def open(self):
        if capture.has_gstreamer():
            self.backend = "GStreamer"
            pipeline = network_pipeline(self.url, _number(self.options, "latency", 2000, int))
            return capture.open_capture(pipeline, capture.apis()["gstreamer"])
        self.backend = "FFmpeg"
        return capture.open_capture(self.url, capture.apis()["ffmpeg"])

    def why_not_open(self):
        return ("{}: {} could not open the stream (check the address, the credentials and that it is reachable: "
                "`ffprobe URL` or `gst-launch-1.0 rtspsrc location=URL ! fakesink`)".format(self.name, self.backend))
