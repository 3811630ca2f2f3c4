"""A watched folder (``watch://DIR`` or ``retina-edge run DIR --watch``): an export folder
that keeps receiving files, subfolders included, screened as they arrive.

When a file is taken
    Only when it is complete: its size and mtime (ns) are the same on two scans
    at least ``settle`` seconds apart (default 0.4 s). A file renamed into place
    (the safe way to export) is taken ``settle`` seconds after it appears; one
    written in place once its writer has been quiet for ``settle`` seconds
    (give ``watch://DIR?settle=5`` for a copy over a slow network that stalls). An empty file waits
    ``empty_settle`` (default 5 s): writers create a file before they fill it,
    and an empty file that stays empty is still screened (as an error row).
    Names that writers use while writing are never taken: hidden names
    (``.x.jpg``, rsync's ``.x.jpg.Ab12Cd``), ``~x`` (lock files), ``x~``, and
    .part .partial .tmp .temp .crdownload .filepart .download; only image and
    DICOM suffixes are taken at all. Hidden folders and folders given to
    ``exclude`` (the quarantine, annotated-image outputs inside DIR) are not walked.
    The folder is scanned every ``poll`` seconds (default 0.2) rather than
    watched with inotify: OCT and fundus-camera export folders are often
    SMB/NFS mounts, where inotify does not see other machines' writes, and
    polling needs no extra package. A new file is taken within poll + settle
    (0.6 s by default) of its last write, plus one scan. A scan stats every
    file (about 5 ms per 1,000 files here); when scans take more than a third
    of ``poll``, the interval grows to three scans, so a very large folder
    costs at most a third of a core and is picked up later rather than the
    device slowed down (benchmarks/watch_latency.py measures both).

What "already screened" means
    A file's identity is (absolute path, size in bytes, mtime in ns), the key
    of the ledger's ``results_file`` index. Chosen over a content hash because
    it costs one stat per file where a hash reads every byte of every file at
    each start (a clinic folder of 100,000 photographs is tens of GB), and
    because a file rewritten by the export (new mtime) should be screened
    again. The price: ``touch`` rescreens a file, a folder moved or mounted
    elsewhere is screened again (its paths changed), and a file whose only
    change is its permissions (chmod changes ctime, not mtime) is not retried.

Durability
    A file counts as done once its row is committed to the ledger: the ledger
    is the first output and ``done`` is called after every output. At the start
    of each run the rows already in the ledger for this folder are loaded, and a
    file first seen later is looked up there, so a file whose row was
    committed is never screened again, and a file in flight when the process
    was killed has no row and is screened on the next start: after ``kill -9``
    at any moment, a restart screens every remaining file exactly once. The
    ledger is read through a connection of this source's own (WAL readers do
    not block the writer), opened on the thread that iterates.

Liveness
    Once ``beat_to(path)`` is given (``retina-edge run`` gives ``$RETINA_EDGE_HOME/heartbeat``), the scan
    loop touches that file at most every ``HEARTBEAT_S`` seconds: after each scan of a folder that is
    there, and as each frame is taken. A loop that is stuck (the pipeline no longer takes frames) or
    waiting for a folder that is gone stops touching it, so its age tells a supervisor (the container's
    HEALTHCHECK, docker/healthcheck.sh) that nothing arriving would be screened. The file is removed when
    the watch ends. One line if it cannot be written; the watch goes on.

A folder that does not exist is refused at start, with a line saying so: a
typing mistake would otherwise wait forever while looking healthy; a service
that starts before its share is mounted should order itself after the mount
(systemd ``RequiresMountsFor=``) or be restarted by its manager. A folder
that disappears during the run (an unmounted share) is waited for, with one
line, and nothing in it is screened again when it comes back.
"""
import os
import threading
import time

from edge.io.decode import DICOM_SUFFIXES, IMAGE_SUFFIXES
from edge.io.sources import WRITTEN_MARKER, Source, SourceError, frames_of, read_file_frame, stderr_line

WATCH_SUFFIXES = IMAGE_SUFFIXES + DICOM_SUFFIXES
TEMP_PREFIXES = (".", "~")
TEMP_SUFFIXES = ("~", ".part", ".partial", ".tmp", ".temp", ".crdownload", ".filepart", ".download")

POLL_S = 0.2
SETTLE_S = 0.4
EMPTY_SETTLE_S = 5.0
HEARTBEAT_S = 10.0


def takes_name(name):
    """True if a file of this name may be screened (an image or DICOM, not a temporary name)."""
    lower = name.lower()
    return (not name.startswith(TEMP_PREFIXES) and not lower.endswith(TEMP_SUFFIXES)
            and lower.endswith(WATCH_SUFFIXES))


def _seconds(options, name, default):
    try:
        value = float(options.get(name, default))
    except (TypeError, ValueError):
        raise SourceError("watch option {}={!r} is not a number of seconds".format(name, options.get(name)))
    if value < 0:
        raise SourceError("watch option {}={} must not be negative".format(name, value))
    return value


class WatchedFolder(Source):
    """Frames from the complete files that appear under a folder, each file once, until ``stop()``."""

    def __init__(self, uri, options=None):
        super(WatchedFolder, self).__init__(uri, options)
        self.folder = self.root = os.path.abspath(uri.path or ".")
        if not os.path.isdir(self.folder):
            raise SourceError("{}: no such folder to watch; create it first (mkdir -p {}) or check that its "
                              "share is mounted".format(uri.path, uri.path))
        self.poll_s = _seconds(self.options, "poll", POLL_S)
        self.settle_s = _seconds(self.options, "settle", SETTLE_S)
        self.empty_settle_s = _seconds(self.options, "empty_settle", EMPTY_SETTLE_S)
        self.log = stderr_line  # one line per event (start, folder gone/back); a test may replace it
        self.ledger_path = None
        self.excluded = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._screened = {}    # path -> {(size_bytes, mtime_ns)}: known to be in the ledger
        self._in_flight = {}   # path -> (size_bytes, mtime_ns) as scanned: yielded, not done yet
        self._pending = {}     # path -> ((size_bytes, mtime_ns), first seen with this key, monotonic s)
        self.taken = 0
        self.heartbeat = None  # a Heartbeat once beat_to() is given

    # --- wiring ---------------------------------------------------------------------------------
    def attach_ledger(self, ledger):
        """Remember files across restarts through this ledger (its path; a connection is opened per run)."""
        self.ledger_path = ledger if isinstance(ledger, str) else ledger.path

    def beat_to(self, path):
        """Touch ``path`` at most every HEARTBEAT_S seconds while the scan loop is alive (see Liveness)."""
        self.heartbeat = Heartbeat(path, log=lambda line: self.log(line))

    def exclude(self, folder):
        """Never walk ``folder`` (an output or quarantine folder inside the watched one)."""
        self.excluded.add(os.path.abspath(folder))

    def stop(self):
        """End the iteration within one poll interval (safe from a signal handler or another thread)."""
        self._stop.set()

    def describe(self):
        return "{} (watching for new files every {:g} s)".format(self.uri.text, self.poll_s)

    # --- the pipeline's side ----------------------------------------------------------------------
    def done(self, frame, result):
        """Every output, the ledger first, has the frame's result: the file is screened (a volume: at its last frame)."""
        path, meta = frame.meta.get("path"), frame.meta
        if "index" in meta and meta.get("index") != meta.get("frames", 1) - 1:
            return
        with self._lock:
            scanned = self._in_flight.pop(path, None)
            key = (frame.meta.get("size_bytes"), frame.meta.get("mtime_ns"))
            if None in key:
                key = scanned
            if key is not None:
                self._screened.setdefault(path, set()).add(key)

    def __iter__(self):
        ledger = self._open_ledger()
        try:
            if ledger is not None:
                self._screened.update(ledger.screened_files(self.folder))
            self.log("watching {} for new files ({} already screened); Ctrl-C to stop".format(
                self.folder, sum(len(keys) for keys in self._screened.values())))
            for frame in self._frames(ledger):
                yield frame
        finally:
            if self.heartbeat is not None:
                self.heartbeat.clear()
            if ledger is not None:
                ledger.close()

    def _open_ledger(self):
        if self.ledger_path is None:
            return None
        from edge.ledger import Ledger
        return Ledger(self.ledger_path)

    def _frames(self, ledger):
        missing = False
        while not self._stop.is_set():
            if not os.path.isdir(self.folder):
                if not missing:
                    self.log("{} is gone (unmounted?); waiting for it to come back".format(self.folder))
                missing = True
                self._stop.wait(max(self.poll_s, 1.0))
                continue
            if missing:
                self.log("{} is back; watching it again".format(self.folder))
                missing = False
            began = time.monotonic()
            ready = self._ready(ledger)
            scan_s = time.monotonic() - began
            self._beat()
            for path, key in ready:
                for frame in self._read(path, key, ledger):
                    if self._stop.is_set():
                        return
                    self._beat()
                    yield frame
            # scans start every poll_s (not poll_s after the last one ended), but never more than a third of
            # the time goes to scanning: a folder of 100,000 files is polled less often rather than hogging a core
            self._stop.wait(max(began + max(self.poll_s, 3 * scan_s) - time.monotonic(), 0.01))

    def _beat(self):
        if self.heartbeat is not None:
            self.heartbeat.beat()

    def _ready(self, ledger):
        """One scan: the files complete since the last ones and not screened, oldest first."""
        now = time.monotonic()
        seen, ready = set(), []
        for path, key in scan(self.folder, self.excluded):
            seen.add(path)
            with self._lock:
                if path in self._in_flight or key in self._screened.get(path, ()):
                    continue
            before = self._pending.get(path)
            if before is None or before[0] != key:
                self._pending[path] = (key, now)
                continue
            settle_s = self.empty_settle_s if key[0] == 0 else self.settle_s
            if now - before[1] < settle_s:
                continue
            del self._pending[path]
            if ledger is not None and ledger.is_screened(path, key[0], key[1]):
                with self._lock:
                    self._screened.setdefault(path, set()).add(key)
                continue
            ready.append((key[1], path, key))
        self._forget(seen)
        return [(path, key) for _, path, key in sorted(ready)]

    def _forget(self, seen):
        """Drop what is known of files no longer there, so memory follows the folder, not the run's length."""
        for path in [p for p in self._pending if p not in seen]:
            del self._pending[path]
        with self._lock:
            for path in [p for p in self._screened if p not in seen]:
                del self._screened[path]

    def _read(self, path, key, ledger):
        """The frames of one file; of a volume cut short by a killed run, those without a row yet."""
        with self._lock:
            self._in_flight[path] = key
        self.taken += 1
        frame = read_file_frame(path)
        if frame.error:  # deleted or unreadable since the scan: its row carries the identity scanned
            frame.meta.update(size_bytes=key[0], mtime_ns=key[1])
            return [frame]
        done = set()
        if ledger is not None:
            done = ledger.screened_frames(path, frame.meta["size_bytes"], frame.meta["mtime_ns"])
        return (f for f in frames_of(frame) if f.meta.get("index") not in done)


class Heartbeat(object):
    """A file whose mtime says when the loop last went round; written at most every ``every_s`` seconds."""

    def __init__(self, path, every_s=HEARTBEAT_S, log=stderr_line):
        self.path, self.every_s, self.log = path, every_s, log
        self._last = None
        self._warned = False

    def beat(self):
        now = time.monotonic()
        if self._last is not None and now - self._last < self.every_s:
            return
        self._last = now
        try:
            folder = os.path.dirname(self.path)
            if folder and not os.path.isdir(folder):
                os.makedirs(folder)
            with open(self.path, "a"):
                pass
            os.utime(self.path, None)
        except (IOError, OSError) as exc:
            if not self._warned:
                self.log("heartbeat {} not written ({}); a healthcheck reading it will call this watch "
                         "stuck".format(self.path, exc))
            self._warned = True

    def clear(self):
        try:
            os.remove(self.path)
        except OSError:
            pass


def scan(folder, excluded=()):
    """(absolute path, (size_bytes, mtime_ns)) of the takeable files under ``folder``, recursively.

    Hidden folders, excluded folders, folders retina-edge wrote into (they hold
    WRITTEN_MARKER: annotated images, quarantine, from any earlier run) and
    symbolic links to folders are not walked; a file or folder that vanishes
    during the scan is skipped.
    """
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError:
            continue
        if current != folder and any(e.name == WRITTEN_MARKER for e in entries):
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if not entry.name.startswith(".") and entry.path not in excluded:
                        stack.append(entry.path)
                elif takes_name(entry.name) and entry.is_file():
                    st = entry.stat()
                    yield entry.path, (st.st_size, st.st_mtime_ns)
            except OSError:
                continue
