"""``display://0``: an OpenCV window showing each frame with its label, probabilities and region of interest.

It opens only where a window can: not with ``--headless`` (the output is left
out with a line saying so), not with an OpenCV built without a GUI
(opencv-python-headless, which the device requirements install: install
opencv-python in its place, or use JetPack's OpenCV), and not without a
display server (no DISPLAY or WAYLAND_DISPLAY: from ssh, ``export
DISPLAY=:0`` to use the Jetson's screen). These are checked before OpenCV's
GUI is touched: a Qt build aborts the whole process when it finds no display.

The window belongs to a thread of its own, which makes every HighGUI call
(HighGUI wants one thread) and keeps the window responsive between frames, as
a watched folder may wait minutes for its next file. ``write`` draws the
frame on the caller's thread and hands the picture over, newest only: a slow
screen never holds the pipeline back. Pressing q or Esc in the window, or
closing it, ends the run the way Ctrl-C does (after the frame in flight,
outputs flushed), as closing jetson-inference's display ends its apps.
"""
import os
import signal
import threading

import cv2

from edge.io import capture
from edge.io.annotate import annotate
from edge.io.outputs import Output, OutputDisabled, OutputError, roi_of

_QUIT_KEYS = (ord("q"), 27)
_WAIT_MS = 30


class DisplayOutput(Output):

    def __init__(self, uri, labels, options=None):
        super(DisplayOutput, self).__init__(uri, labels, options)
        if self.options.get("headless"):
            raise OutputDisabled("{}: not opened (--headless)".format(uri.text))
        if not capture.has_gui():
            raise OutputError("{}: this OpenCV has no GUI (cv2.getBuildInformation() says GUI: NONE; "
                              "opencv-python-headless never has one): pip install opencv-python==<the same "
                              "version> in its place, or use JetPack's OpenCV; or pass --headless".format(uri.text))
        if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise OutputError("{}: no display to open a window on (DISPLAY is not set): run on the desktop, "
                              "`export DISPLAY=:0` from ssh, or pass --headless".format(uri.text))
        self.title = "retina-edge {}".format(uri.text)
        self.roi = self.options.get("roi")
        self.shown = 0
        self.quit = False
        self._latest = None
        self._error = None
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._thread = None

    def write(self, frame, result):
        if self._error:
            raise OutputError(self._error)
        if frame.image is None or self.quit:
            return
        picture = annotate(frame.image, result, self.labels, roi_of(self.options, result))
        with self._lock:
            self._latest = picture
        if self._thread is None:
            self._thread = threading.Thread(target=self._window, name="display")
            self._thread.daemon = True
            self._thread.start()

    def _window(self):
        try:
            cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)
        except cv2.error as exc:
            self._error = "{}: OpenCV could not open a window: {}".format(self.uri.text, str(exc).strip())
            return
        try:
            while not self._closing.is_set():
                with self._lock:
                    picture, self._latest = self._latest, None
                if picture is not None:
                    if not self.shown:
                        cv2.resizeWindow(self.title, picture.shape[1], picture.shape[0])
                    cv2.imshow(self.title, picture)
                    self.shown += 1
                key = cv2.waitKey(_WAIT_MS) & 0xFF
                closed = self.shown and cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1
                if key in _QUIT_KEYS or closed:
                    self.quit = True
                    os.kill(os.getpid(), signal.SIGINT)  # the run's handler stops after this frame, as Ctrl-C does
                    break
        finally:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)

    def close(self):
        self._closing.set()
        if self._thread is not None:
            self._thread.join(2.0)
