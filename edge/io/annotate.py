"""A result drawn on its frame, and the output that writes them: a folder of annotated images.

``annotate`` draws, on the frame (scaled to at most ``max_side`` pixels), the
label and confidence or the status and its reason in a banner coloured by
status, one bar per class probability, and the region of interest the
preprocessing uses (the fundus disc found by the bundle's threshold). The
display (``edge.io.display``) shows the same picture.

``AnnotatedImages`` (``out/``, ``images://out``) writes one image per frame
under the folder, mirroring the input's path relative to the source's root
(``sub/a.jpg`` -> ``out/sub/a.jpg``; a video or camera frame gets
``_frame000012``; a suffix OpenCV cannot write, such as .dcm, gets ``.jpg``
added). With the ``explain`` option (``retina-edge run --explain``) a frame
whose class activation map was made also gets ``<name>.cam.jpg`` beside it:
the heat map over the photograph (``edge.explain``). Each is written to a hidden temporary file and renamed into place,
so a reader (or a watcher of that folder) never sees half an image. A frame
with no pixels (an error before decoding) writes nothing.
"""
import os
import re
import time

import cv2
import numpy as np

from edge.io.outputs import Output, OutputError, roi_of
from edge.io.sources import mark_written_folder
from edge.preprocess import find_fundus_disc

# BGR, by status
STATUS_COLOURS = {"ok": (70, 170, 60), "ungradable": (0, 140, 255), "skipped": (150, 150, 150),
                  "error": (50, 50, 220)}
WRITABLE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
_FONT = cv2.FONT_HERSHEY_SIMPLEX


_MIN_SIDE = 640  # smaller frames are enlarged so the text stays legible


def _scaled(rgb, max_side):
    h, w = rgb.shape[:2]
    side = max(h, w)
    target = min(side, max_side) if max_side else side
    target = max(target, _MIN_SIDE)
    if target != side:
        scale = float(target) / side
        rgb = cv2.resize(rgb, (max(1, int(round(w * scale))), max(1, int(round(h * scale)))),
                         interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    return rgb


def _text(img, text, org, scale, colour, thickness):
    cv2.putText(img, text, org, _FONT, scale, (0, 0, 0), thickness + 1, cv2.LINE_AA)
    cv2.putText(img, text, org, _FONT, scale, colour, thickness, cv2.LINE_AA)


def headline(result):
    if result.status == "ok":
        refer = getattr(result, "refer", None)  # None: the bundle has no referral point
        return "{}{} {:.1%}".format("REFER  " if refer else "", result.label, result.confidence)
    reason = result.error.split(": ")[-1] if result.error else ""
    return "{}: {}".format(result.status, reason)[:80] if reason else result.status


def annotate(rgb, result, labels, roi=None, max_side=1024):
    """The frame (HxWx3 RGB) with ``result`` drawn on it, as BGR uint8 ready for imshow/imencode."""
    rgb = _scaled(rgb, max_side)
    img = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    h, w = img.shape[:2]
    colour = STATUS_COLOURS.get(result.status, (255, 255, 255))
    unit = max(w, h) / 640.0
    scale, thick = 0.7 * unit, max(1, int(round(1.5 * unit)))
    roi = roi or {"kind": "fundus_disc", "threshold": 10}
    if roi.get("kind") == "fundus_disc":
        box = find_fundus_disc(rgb, roi.get("threshold", 10))
        if box is not None:
            cv2.rectangle(img, (box[0], box[1]), (box[2] - 1, box[3] - 1), colour, thick)
    cv2.rectangle(img, (0, 0), (w, int(36 * unit)), colour, -1)
    _text(img, headline(result), (int(10 * unit), int(26 * unit)), scale, (255, 255, 255), thick)
    if result.probs:
        row = int(24 * unit)
        top = max(h - row * len(labels) - int(8 * unit), 0)
        panel = img[top:, :int(320 * unit)]
        panel[:] = (panel * 0.45).astype(np.uint8)  # darken behind the text, whatever the fundus's brightness
        for i, label in enumerate(labels):
            p = float(result.probs.get(label, 0.0))
            y = top + i * row
            cv2.rectangle(img, (int(8 * unit), y + 3), (int(8 * unit + p * 300 * unit), y + row - 3), colour, -1)
            _text(img, label[:24], (int(12 * unit), y + row - 7), 0.5 * unit, (255, 255, 255), thick)
            _text(img, "{:.1%}".format(p), (int(250 * unit), y + row - 7), 0.5 * unit, (255, 255, 255), thick)
    return img


def mirrored_name(frame, root=None):
    """The relative file name an annotated image of ``frame`` gets (see the module's docstring)."""
    path = frame.meta.get("path")
    if path:
        inside = root and os.path.abspath(path).startswith(os.path.join(os.path.abspath(root), ""))
        rel = os.path.relpath(path, root) if inside else os.path.basename(path)
    else:
        rel = re.sub(r"[^A-Za-z0-9._-]+", "_", frame.source_id.split("#")[0]).strip("_") or "frame"
    stem, suffix = os.path.splitext(rel)
    if suffix.lower() not in WRITABLE_SUFFIXES:
        stem, suffix = rel, ".jpg"
    captured_at = frame.meta.get("captured_at")
    if not path and captured_at is not None:  # a camera's frame numbers restart with every run: add the time
        stem += time.strftime("_%Y%m%d-%H%M%S", time.gmtime(captured_at)) + "{:03d}".format(
            int((captured_at % 1) * 1000))
    index = frame.meta.get("index")
    if index is not None:
        stem += "_frame{:06d}".format(int(index))
    return stem + suffix


def write_atomically(path, data):
    """Write ``data`` to ``path`` through a hidden temporary file in the same folder and a rename."""
    folder, name = os.path.split(path)
    if not os.path.isdir(folder):
        os.makedirs(folder)
    tmp = os.path.join(folder, ".{}.{}.tmp".format(name, os.getpid()))
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class AnnotatedImages(Output):
    """``out/`` or ``images://out``: one annotated image per frame. Options: max_side (px, 0 = full size), quality."""

    def __init__(self, uri, labels, options=None):
        super(AnnotatedImages, self).__init__(uri, labels, options)
        self.folder = os.path.abspath(uri.path)
        self.root = self.options.get("root")
        self.roi = self.options.get("roi")
        self.explain = bool(self.options.get("explain"))
        try:
            self.max_side = int(self.options.get("max_side", 1024))
            self.quality = int(self.options.get("quality", 90))
        except ValueError as exc:
            raise OutputError("{}: {}".format(uri.text, exc))
        if not os.path.isdir(self.folder):
            os.makedirs(self.folder)
        if not os.access(self.folder, os.W_OK):
            raise OutputError("{}: the folder is not writable".format(uri.path))
        mark_written_folder(self.folder)
        self.written = 0

    def write(self, frame, result):
        if frame.image is None:
            return
        name = mirrored_name(frame, self.root)
        suffix = os.path.splitext(name)[1].lower()
        params = [cv2.IMWRITE_JPEG_QUALITY, self.quality] if suffix in (".jpg", ".jpeg") else []
        ok, encoded = cv2.imencode(suffix, annotate(frame.image, result, self.labels, roi_of(self.options, result), self.max_side),
                                   params)
        if not ok:
            raise OutputError("{}: OpenCV could not encode {}".format(self.uri.text, name))
        write_atomically(os.path.join(self.folder, name), encoded.tobytes())
        self.written += 1
        cam = frame.meta.get("cam") if self.explain else None
        if cam is not None:
            self._write_cam(frame, os.path.splitext(name)[0] + ".cam.jpg", cam)

    def _write_cam(self, frame, name, cam):
        from edge.explain import cam_overlay
        bgr = cv2.cvtColor(np.ascontiguousarray(_scaled(frame.image, self.max_side)), cv2.COLOR_RGB2BGR)
        overlay = cam_overlay(bgr, frame.image, cam["map"], self.roi or {}, cam["label"])
        ok, encoded = cv2.imencode(".jpg", overlay, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise OutputError("{}: OpenCV could not encode {}".format(self.uri.text, name))
        write_atomically(os.path.join(self.folder, name), encoded.tobytes())

    def describe(self):
        return "{} (annotated images)".format(self.uri.text)
