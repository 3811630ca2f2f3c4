"""Stream URIs, parsed once, in jetson-inference's vocabulary (docs/aux-streaming.md).

Inputs:  csi://0, v4l2:///dev/video0 (or a bare /dev/video0), rtsp://host:port/path,
         file://clip.mp4, clip.mp4, image.jpg, scan.dcm, a folder, watch://FOLDER
Outputs: display://0, file://results.csv, results.csv, results.jsonl, ledger.db,
         a folder of annotated images (out/), null://

``parse_input`` and ``parse_output`` turn a string into a ``Uri`` whose
``scheme`` is a key of the source or output registry; plain paths are classified
by what they name. Query options (``csi://0?width=1280&flip=rotate-180``) land in
``options``; command-line options are merged over them by the caller.
"""
import os
from typing import NamedTuple

from urllib.parse import parse_qsl, urlsplit

from edge.io.decode import DICOM_SUFFIXES, IMAGE_SUFFIXES

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".h264", ".h265", ".webm", ".mjpeg", ".mjpg")
TABLE_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".db": "ledger", ".sqlite": "ledger", ".sqlite3": "ledger"}

# explicit schemes a user may type; "file" is resolved to a kind by its path
INPUT_SCHEMES = ("csi", "v4l2", "rtsp", "rtp", "http", "https", "file", "watch")
OUTPUT_SCHEMES = ("display", "file", "null", "images")


class UriError(ValueError):
    """A URI that cannot be understood; the message names it and says what would be."""


class Uri(NamedTuple):
    scheme: str   # registry key: image, folder, watch, video, dicom, csi, v4l2, rtsp, display, csv, ...
    path: str     # file or folder path, device path, sensor index, or the whole network URL
    options: dict  # query options, strings
    text: str     # as the user typed it


def _split_query(text):
    if "?" not in text:
        return text, {}
    head, query = text.split("?", 1)
    return head, dict(parse_qsl(query, keep_blank_values=True))


def _explicit_scheme(text):
    if "://" not in text:
        return None
    return text.split("://", 1)[0].lower()


def parse_input(text):
    """A source URI -> Uri; raises UriError naming it when it cannot be understood."""
    if not text:
        raise UriError("empty input URI")
    scheme = _explicit_scheme(text)
    if scheme in ("rtsp", "rtp", "http", "https"):
        parts = urlsplit(text)
        return Uri("rtsp" if scheme == "rtsp" else scheme, text, dict(parse_qsl(parts.query)), text)
    head, options = _split_query(text)
    if scheme is None:
        if head.startswith("/dev/video"):
            return Uri("v4l2", head, options, text)
        return Uri(_classify_input_path(head), head, options, text)
    rest = head.split("://", 1)[1]
    if scheme == "csi":
        return Uri("csi", rest or "0", options, text)
    if scheme == "v4l2":
        return Uri("v4l2", rest if rest.startswith("/") else "/dev/video" + (rest or "0"), options, text)
    if scheme == "file":
        return Uri(_classify_input_path(rest), rest, options, text)
    if scheme == "watch":
        return Uri("watch", rest, options, text)
    raise UriError("{}: unknown input scheme {!r}; inputs are {}, a file or a folder".format(
        text, scheme + "://", ", ".join(s + "://" for s in INPUT_SCHEMES)))


def _classify_input_path(path):
    lower = path.lower()
    if os.path.isdir(path):
        return "folder"
    if lower.endswith(VIDEO_SUFFIXES):
        return "video"
    if lower.endswith(DICOM_SUFFIXES):
        return "dicom"
    return "image"


def parse_output(text):
    """An output URI -> Uri (display, csv, jsonl, ledger, images, null)."""
    if not text:
        raise UriError("empty output URI")
    scheme = _explicit_scheme(text)
    head, options = _split_query(text)
    if scheme == "display":
        return Uri("display", head.split("://", 1)[1] or "0", options, text)
    if scheme == "null":
        return Uri("null", "", options, text)
    if scheme in ("file", "images"):
        path = head.split("://", 1)[1]
        if scheme == "images":
            return Uri("images", path, options, text)
    elif scheme is None:
        path = head
    else:
        raise UriError("{}: unknown output scheme {!r}; outputs are display://0, null://, a .csv, .jsonl or .db "
                       "file, or a folder for annotated images".format(text, scheme + "://"))
    suffix = os.path.splitext(path)[1].lower()
    if suffix in TABLE_SUFFIXES:
        return Uri(TABLE_SUFFIXES[suffix], path, options, text)
    if path.endswith(("/", os.sep)) or os.path.isdir(path) or not suffix:
        return Uri("images", path, options, text)
    raise UriError("{}: cannot tell what to write from the suffix {!r}; give a .csv, .jsonl or .db file, "
                   "or a folder (ending in /) for annotated images".format(text, suffix))
