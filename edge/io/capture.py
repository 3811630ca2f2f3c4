"""OpenCV video capture: what this OpenCV build can open, and a reader thread that keeps only the newest frame.

Cameras and network streams are read on their own thread (``LatestFrame``):
the pipeline takes the newest frame when it is ready for one, frames it had
no time for are dropped (counted), and a read that brings nothing within the
source's timeout returns None instead of waiting or spinning. This is
jetson-utils' gstCamera model (a ring buffer written by the GStreamer
callback; ``Capture(timeout)`` returns the latest frame not yet retrieved, or
false on timeout) carried over to ``cv2.VideoCapture``.

``build_information`` and ``open_capture`` are the only two places that touch
OpenCV's video I/O, so tests replace them to stand in for a CSI camera or a
V4L2 device, which cannot exist on a machine without them.
"""
import re
import threading
import time

import cv2

# slice in which waits notice stop(); not a poll of the camera (the reader thread blocks in read())
_WAKE_S = 0.1


def build_information():
    """``cv2.getBuildInformation()``: the Video I/O and GUI sections tell what this OpenCV can do."""
    return cv2.getBuildInformation()


def _has(feature):
    """True if the build information says YES for ``feature``, on its line or, where that line is
    empty (OpenCV 3.x/4.1, JetPack's: ``GStreamer:`` then ``base: YES (ver 1.14.5)``), on the next."""
    lines = build_information().splitlines()
    for i, line in enumerate(lines):
        head, _, value = line.strip().partition(":")
        if head == feature:
            if not value.strip() and i + 1 < len(lines):
                value = lines[i + 1]
            return "YES" in value.upper()
    return False


def has_gstreamer():
    """True if this OpenCV was built with GStreamer (JetPack's is; pip's opencv-python wheels are not)."""
    return _has("GStreamer")


def has_ffmpeg():
    return _has("FFMPEG")


def has_gui():
    """False for opencv-python-headless and other builds whose GUI section says NONE."""
    return not re.search(r"^[ \t]*GUI:[ \t]*NONE", build_information(), re.MULTILINE)


def open_capture(target, api):
    """``cv2.VideoCapture(target, api)``; the caller checks ``isOpened()``. OpenCV's own log lines (GStreamer
    and FFmpeg warnings) are silenced first, as for decoding: the sources say what failed in one line."""
    from edge.io.decode import quiet_opencv
    quiet_opencv()
    return cv2.VideoCapture(target, api)


def apis():
    """OpenCV's backend ids, looked up when needed so importing this module asks nothing of cv2."""
    return {"gstreamer": cv2.CAP_GSTREAMER, "ffmpeg": cv2.CAP_FFMPEG, "v4l2": cv2.CAP_V4L2, "any": cv2.CAP_ANY}


def frame_count(cap):
    """The frame count a video container declares; 0 when it does not say."""
    return max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0)


def set_format(cap, fourcc_code=None, width=None, height=None):
    """Ask a V4L2 capture for a pixel format (first: some drivers offer large sizes only in MJPEG) and a size."""
    if fourcc_code:
        cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*fourcc_code))
    if width:
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, int(width))
    if height:
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, int(height))


def bgr_to_rgb(image):
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class LatestFrame(object):
    """Reads an opened capture on a daemon thread and keeps only its newest frame.

    ``get(timeout_s)`` returns ``(index, bgr, captured_at)`` for the newest frame
    not yet taken, waiting at most ``timeout_s``; None on timeout, when the
    capture ended (``ended``: read() returned no frame) or after ``stop()``.
    ``dropped`` counts frames overwritten before anyone took them; indices
    count every frame read, from ``start_index``; ``next_index`` is the next one's.
    """

    def __init__(self, capture, name="capture", start_index=0):
        self.capture = capture
        self.next_index = start_index
        self.dropped = 0
        self.ended = False
        self._cond = threading.Condition()
        self._latest = None      # (index, bgr, captured_at)
        self._taken = -1         # index of the last frame handed out
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="read " + name)
        self._thread.daemon = True  # a read stuck in a driver must not keep the process alive
        self._thread.start()

    def _run(self):
        try:
            while not self._stopped.is_set():
                ok, image = self.capture.read()
                if self._stopped.is_set():
                    break
                with self._cond:
                    if not ok or image is None:
                        self.ended = True
                        self._cond.notify_all()
                        break
                    if self._latest is not None and self._latest[0] > self._taken:
                        self.dropped += 1
                    self._latest = (self.next_index, image, time.time())
                    self.next_index += 1
                    self._cond.notify_all()
        finally:
            self.capture.release()  # on this thread: releasing while another thread reads is unsafe

    def get(self, timeout_s):
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                latest = self._latest
                if latest is not None and latest[0] > self._taken:
                    self._taken = latest[0]
                    return latest
                remaining = deadline - time.monotonic()
                if self.ended or self._stopped.is_set() or remaining <= 0:
                    return None
                self._cond.wait(min(remaining, _WAKE_S))

    def stop(self):
        """Ask the reader to end; safe from a signal handler (sets an event, takes no lock)."""
        self._stopped.set()

    def close(self, join_s=1.0):
        """Stop and wait briefly for the reader; one stuck in read() is left to die with the process."""
        self.stop()
        self._thread.join(join_s)
        return not self._thread.is_alive()
