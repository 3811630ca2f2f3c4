"""Sources chosen by URI. Each is an iterator of Frames; a frame that could not be
read carries its error instead of an image, so one bad file never stops a run.

Implemented: an image file, a folder (recursively, one pass, sorted). Camera,
video, stream and DICOM URIs (csi://0, /dev/video0, v4l2://, rtsp://, file.mp4,
.dcm) are recognised and refused with a clear message until their issue lands.
"""
import os
from typing import NamedTuple, Optional

from edge.preprocess import IMAGE_SUFFIXES, ImageError, read_image


class Frame(NamedTuple):
    source_id: str  # file path, or camera:frame number
    image: Optional[object]  # HxWx3 uint8 RGB, or None when unreadable
    error: str  # empty when ok


class SourceError(ValueError):
    """A source URI that cannot be opened at all."""


_LATER = ("csi://", "v4l2://", "/dev/video", "rtsp://", "rtmp://", "http://", "https://")
_VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".h264", ".dcm")


class ImageFiles(object):
    """Frames from a list of image paths, decoded lazily."""

    def __init__(self, paths, uri):
        self.paths = list(paths)
        self.uri = uri

    def __len__(self):
        return len(self.paths)

    def __iter__(self):
        for path in self.paths:
            try:
                yield Frame(path, read_image(path), "")
            except ImageError as exc:
                yield Frame(path, None, "capture: {}".format(exc))
            except MemoryError:
                yield Frame(path, None, "capture: {}: out of memory decoding".format(path))


def list_images(folder):
    """Image files under ``folder``, recursively, sorted; hidden files and folders skipped."""
    found = []
    for dirpath, dirnames, files in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES):
                found.append(os.path.join(dirpath, name))
    return found


def open_source(uri):
    """Open ``uri`` as a source of frames."""
    if uri.startswith(_LATER) or uri.lower().endswith(_VIDEO_SUFFIXES):
        raise SourceError("{}: camera, video, stream and DICOM sources are not supported yet by this "
                          "build; give an image file or a folder of images".format(uri))
    if os.path.isdir(uri):
        return ImageFiles(list_images(uri), uri)
    if os.path.isfile(uri):
        return ImageFiles([uri], uri)
    raise SourceError("{}: no such file or folder".format(uri))
