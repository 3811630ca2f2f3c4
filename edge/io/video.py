"""Video files (``clip.mp4``, ``file://clip.avi``): every frame in order, ``loop`` times more (-1 forever).

Read with OpenCV (FFmpeg in pip's wheels, GStreamer or FFmpeg in JetPack's).
A file is not live: no frame is dropped, and reading it is the capture
stage of the frame that results. Frame ids are ``/abs/clip.mp4#N``;
the ledger row keeps the file's identity and ``frame_index``.
"""
import os

from edge.io import capture
from edge.io.sources import Source, SourceError, loop_count
from edge.records import Frame


class VideoFile(Source):

    def __init__(self, uri, options=None):
        super(VideoFile, self).__init__(uri, options)
        self.path = os.path.abspath(uri.path)
        self.root = os.path.dirname(self.path)
        self.loops = loop_count(self.options, uri.text)
        self._stopping = False
        if not os.path.isfile(self.path):
            raise SourceError("{}: no such video file".format(uri.path))
        if not os.access(self.path, os.R_OK):
            raise SourceError("{}: permission denied".format(uri.path))
        cap = self._open()
        self.frames_per_pass = capture.frame_count(cap)
        cap.release()

    def _open(self):
        cap = capture.open_capture(self.path, capture.apis()["any"])
        if not cap.isOpened():
            cap.release()
            raise SourceError("{}: OpenCV cannot read this video (its FFmpeg/GStreamer lacks the codec or the file "
                              "is damaged; cv2.getBuildInformation() lists the Video I/O backends)".format(self.uri.path))
        return cap

    def count(self):
        if self.loops < 0 or not self.frames_per_pass:
            return None
        return self.frames_per_pass * (self.loops + 1)

    def describe(self):
        n = self.count()
        return "{} (video, {})".format(self.uri.text, "{} frame(s)".format(n) if n else "frame count unknown")

    def stop(self):
        self._stopping = True

    def __iter__(self):
        st = os.stat(self.path)
        meta = {"path": self.path, "size_bytes": st.st_size, "mtime_ns": st.st_mtime_ns,
                "modality": "fundus"}  # as for image files: a video carries no modality; the model's is assumed
        index, passes = 0, 0
        while not self._stopping and (self.loops < 0 or passes <= self.loops):
            cap = self._open()
            try:
                read_any = False
                while not self._stopping:
                    ok, bgr = cap.read()
                    if not ok or bgr is None:
                        break
                    read_any = True
                    frame_meta = dict(meta, index=index)
                    yield Frame("{}#{}".format(self.path, index), image=capture.bgr_to_rgb(bgr), meta=frame_meta)
                    index += 1
            finally:
                cap.release()
            if not read_any:  # a file OpenCV opens but yields nothing from would loop forever with -1
                return
            passes += 1
