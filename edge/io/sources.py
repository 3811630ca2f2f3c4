"""Sources chosen by URI through a scheme -> class registry. Each is an iterable of Frames.

Reading a frame (file bytes, a camera grab) is the *capture* stage; turning
bytes into pixels is the pipeline's *decode* stage (``edge.io.decode``). A
frame that could not be read carries its error instead of data, so one bad
file never stops a run.

A source class takes ``(uri, options)`` and offers ``__iter__``, ``close()``,
``describe()``, ``count()`` (the number of frames when known before the
run, else None), ``live`` (True for cameras and streams: the newest frame
wins), ``done(frame, result)``, called once the frame's result is
committed (a watched folder remembers it then), ``stop()`` (end the
iteration soon, from a signal handler or another thread: a watched folder or
a camera would otherwise wait for its next frame) and ``root`` (the folder
that input paths are relative to, for outputs that mirror them; None for
cameras and streams).

Options (``options`` merged over the URI's query): ``loop`` repeats a finite
source (-1 forever); ``width``, ``height``, ``codec`` configure cameras and
streams; ``timeout``, ``reconnect`` live reads; ``poll``, ``settle`` a
watched folder.
"""
import importlib
import os
import sys

from edge.io.decode import DICOM_SUFFIXES, IMAGE_SUFFIXES
from edge.io.imageinfo import sniff
from edge.io.uri import UriError, parse_input
from edge.records import Frame

# scheme -> (module, class); imported only when chosen, so a missing package fails only its own scheme
SOURCES = {
    "image": ("edge.io.sources", "ImageFiles"),
    "folder": ("edge.io.sources", "Folder"),
    "dicom": ("edge.io.dicom", "DicomFile"),
    "watch": ("edge.io.watch", "WatchedFolder"),
    "video": ("edge.io.video", "VideoFile"),
    "csi": ("edge.io.camera", "CsiCamera"),
    "v4l2": ("edge.io.camera", "V4l2Camera"),
    "rtsp": ("edge.io.camera", "NetworkStream"),
    "http": ("edge.io.camera", "NetworkStream"),
    "https": ("edge.io.camera", "NetworkStream"),
}

# schemes the URI parser knows whose source is not in this build: refused with a clear line
NOT_YET = {"rtp": "RTP streams"}


class SourceError(ValueError):
    """A source URI that cannot be opened at all; the message says what to install or check."""


class Source(object):
    """Base: a finite, non-live source that needs nothing on completion."""
    live = False
    root = None

    def __init__(self, uri, options=None):
        self.uri = uri
        self.options = dict(uri.options)
        self.options.update(options or {})

    def count(self):
        return None

    def done(self, frame, result):
        pass

    def stop(self):
        pass

    def close(self):
        pass

    def describe(self):
        n = self.count()
        return "{} ({})".format(self.uri.text, "{} file(s)".format(n) if n is not None else self.uri.scheme)


def stderr_line(line):
    """How a source says something mid-run (waiting, reconnecting): one line on stderr."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def read_file_frame(path, index=None):
    """A Frame holding the bytes of ``path`` (the capture stage); an unreadable file is an error frame."""
    path = os.path.abspath(path)
    meta = {"path": path}
    if index is not None:
        meta["index"] = index
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
    except (IOError, OSError) as exc:
        return Frame(path, error="capture: {}: cannot read file ({})".format(path, exc), meta=meta)
    meta.update(size_bytes=len(data), mtime_ns=st.st_mtime_ns)
    return Frame(path, data=data, meta=meta)


def loop_count(options, text):
    """The ``loop`` option as an int: 0 once, N = N more passes, -1 forever (jetson-inference's --input-loop)."""
    value = options.get("loop", 0)
    try:
        loops = int(value)
    except (TypeError, ValueError):
        raise SourceError("{}: loop={!r} is not a whole number (-1 = forever)".format(text, value))
    if loops < -1:
        raise SourceError("{}: loop={} must be -1 (forever), 0 (once) or more".format(text, loops))
    return loops


def file_frames(path):
    """The frames of one file: one for an image (modality fundus), one per frame for a DICOM volume.

    A file is DICOM by its suffix or by the ``DICM`` mark after its 128-byte preamble.
    """
    return frames_of(read_file_frame(path))


def frames_of(frame):
    """The frames of a file already read into ``frame`` (see ``file_frames``)."""
    path = frame.meta.get("path", frame.source_id)
    if path.lower().endswith(DICOM_SUFFIXES) or (frame.data is not None and sniff(frame.data) == "dicom"):
        from edge.io.dicom import dicom_frames
        return dicom_frames(frame)
    frame.meta.setdefault("modality", "fundus")  # a station serving OCT too guesses it from the pixels (edge.lanes)
    return iter([frame])


class ImageFiles(Source):
    """Frames from a list of image files, read one at a time (constant memory); ``loop`` repeats the list."""

    def __init__(self, uri, options=None, paths=None):
        super(ImageFiles, self).__init__(uri, options)
        if paths is None:
            if not os.path.isfile(uri.path):
                raise SourceError("{}: no such file or folder".format(uri.path))
            paths = [uri.path]
            self.root = os.path.dirname(os.path.abspath(uri.path))
        self.paths = [os.path.abspath(p) for p in paths]
        self.loops = loop_count(self.options, uri.text)
        self._stop = False

    def count(self):
        return None if self.loops < 0 else len(self.paths) * (self.loops + 1)

    def __len__(self):
        return len(self.paths)

    def stop(self):
        self._stop = True

    def __iter__(self):
        passes = 0
        while not self._stop and (self.loops < 0 or passes <= self.loops):
            for path in self.paths:
                if self._stop:
                    return
                for frame in file_frames(path):
                    yield frame
            passes += 1


class Folder(ImageFiles):
    """One pass over the image files under a folder, recursively, sorted."""

    def __init__(self, uri, options=None):
        if not os.path.isdir(uri.path):
            raise SourceError("{}: no such folder".format(uri.path))
        super(Folder, self).__init__(uri, options, paths=list_images(uri.path))
        self.root = os.path.abspath(uri.path)
        if not self.paths:
            raise SourceError("{}: no image files ({}) found".format(
                uri.path, ", ".join(s.lstrip(".") for s in IMAGE_SUFFIXES + DICOM_SUFFIXES)))


# A folder retina-edge writes into (annotated images, quarantine) holds this hidden file, so no later
# run, with whatever options, screens what it wrote there (an annotated copy, a file set aside).
WRITTEN_MARKER = ".retina-edge-output"


def mark_written_folder(folder):
    """Leave the marker in an output folder (best effort: a read-only folder fails its own checks)."""
    try:
        with open(os.path.join(folder, WRITTEN_MARKER), "a") as f:
            f.write("")
    except (IOError, OSError):
        pass


def list_images(folder, suffixes=IMAGE_SUFFIXES + DICOM_SUFFIXES):
    """Image and DICOM files under ``folder``, recursively, sorted; hidden files and folders skipped,
    and folders retina-edge wrote into (they hold WRITTEN_MARKER)."""
    found = []
    for dirpath, dirnames, files in os.walk(folder):
        if WRITTEN_MARKER in files:
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and name.lower().endswith(suffixes):
                found.append(os.path.join(dirpath, name))
    return found


def open_source(text, options=None):
    """Open the input URI ``text`` (see edge.io.uri) as a Source; raises SourceError naming it."""
    try:
        uri = parse_input(text)
    except UriError as exc:
        raise SourceError(str(exc))
    if uri.scheme in NOT_YET and uri.scheme not in SOURCES:
        raise SourceError("{}: {} are not supported yet by this build; give an image file or a folder of "
                          "images".format(text, NOT_YET[uri.scheme]))
    if uri.scheme == "image" and not os.path.exists(uri.path):
        raise SourceError("{}: no such file or folder".format(uri.path))
    module_name, class_name = SOURCES[uri.scheme]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SourceError("{}: {} need a package that is not installed: {}".format(
            text, uri.scheme, exc))
    return getattr(module, class_name)(uri, options)
