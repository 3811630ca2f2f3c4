"""``display://0``: an OpenCV window showing each frame with its label, probabilities and region of interest.

It opens only where a window can: not with ``--headless`` (the output is left
out with a line saying so), not with an OpenCV built without a GUI
(opencv-python-headless, which the device requirements install: install
opencv-python in its place, or use JetPack's OpenCV), and not without a
display server (no DISPLAY or WAYLAND_DISPLAY: from ssh, ``export
DISPLAY=:0`` to use the Jetson's screen). These are checked before OpenCV's
GUI is touched: a Qt build aborts the whole process when it finds no display.

The window is created on first use, on the thread that writes (HighGUI wants
one thread). Pressing q or Esc, or closing the window, ends the run the way
Ctrl-C does (after the frame in flight, outputs flushed), as closing
jetson-inference's display ends its apps.
"""
import os
import signal

import cv2

from edge.io import capture
from edge.io.annotate import annotate
from edge.io.outputs import Output, OutputDisabled, OutputError

_QUIT_KEYS = (ord("q"), 27)


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
        self._window = False
        self._quit = False

    def _open_window(self):
        try:
            cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)
        except cv2.error as exc:
            raise OutputError("{}: OpenCV could not open a window: {}".format(self.uri.text, str(exc).strip()))
        self._window = True

    def write(self, frame, result):
        if frame.image is None or self._quit:
            return
        if not self._window:
            self._open_window()
        cv2.imshow(self.title, annotate(frame.image, result, self.labels, self.roi))
        key = cv2.waitKey(1) & 0xFF
        self.shown += 1
        closed = cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1
        if key in _QUIT_KEYS or closed:
            self._quit = True
            os.kill(os.getpid(), signal.SIGINT)  # the run's handler stops after this frame, as Ctrl-C does

    def close(self):
        if self._window:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)
            self._window = False
