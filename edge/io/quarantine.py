"""``--quarantine DIR``: inputs whose result is ``error`` are moved into DIR, after the ledger has their row.

The move keeps the file's path relative to the source's root (``scans/sub/x.jpg``
-> ``DIR/sub/x.jpg``) and never overwrites: a name already taken gets ``-1``,
``-2`` … before its suffix. It is a hard link then an unlink where the
filesystem allows (the link fails rather than replace an existing file, even
against another writer), else a copy to a hidden temporary name beside the
target, a rename, and an unlink. Only whole files move: a frame of a video or
of a multi-frame volume (it has an ``index``) and camera frames (no path) stay
where they are. A file that cannot be moved stays, with one line saying why;
the run goes on. The output sits after the ledger and the other outputs, so
every one of them records the path the file had when it was screened.

If the process dies between the ledger's commit and the move, the file stays
where it was and, already screened, is not screened again: move it by hand
(the ledger lists it: ``select path, error from results where status='error'``).
"""
import errno
import os
import shutil

from edge.io.sources import mark_written_folder, stderr_line


def free_name(path):
    """``path``, or the first of ``stem-1.ext``, ``stem-2.ext`` … that does not exist."""
    if not os.path.lexists(path):
        return path
    stem, suffix = os.path.splitext(path)
    n = 1
    while os.path.lexists("{}-{}{}".format(stem, n, suffix)):
        n += 1
    return "{}-{}{}".format(stem, n, suffix)


def _link_into_place(source, target):
    """Hard-link ``source`` at ``target`` (the name being free); returns the name used."""
    while True:
        target = free_name(target)
        try:
            os.link(source, target)
            return target
        except FileExistsError:  # taken since free_name looked: try the next
            continue


def move_without_overwriting(source, target):
    """Move the file ``source`` to ``target`` or the next free name beside it; returns where it went."""
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        os.makedirs(folder)
    try:
        placed = _link_into_place(source, target)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        placed = _copy_into_place(source, target)
    os.unlink(source)
    return placed


def _copy_into_place(source, target):
    """Across filesystems, or where hard links are not supported."""
    tmp = os.path.join(os.path.dirname(target), ".{}.{}.part".format(os.path.basename(target), os.getpid()))
    shutil.copy2(source, tmp)
    try:
        try:
            return _link_into_place(tmp, target)
        except OSError:
            placed = free_name(target)
            os.rename(tmp, placed)
            return placed
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


class Quarantine(object):
    """An output that moves the files of error results into ``folder``."""

    def __init__(self, folder, root=None, log=stderr_line):
        self.folder = os.path.abspath(folder)
        self.root = os.path.abspath(root) if root else None
        self.log = log
        if not os.path.isdir(self.folder):
            os.makedirs(self.folder)
        if not os.access(self.folder, os.W_OK | os.X_OK):
            raise OSError(errno.EACCES, "not writable", self.folder)
        mark_written_folder(self.folder)
        self.moved = 0

    def target(self, path):
        inside = self.root and path.startswith(os.path.join(self.root, ""))
        return os.path.join(self.folder, os.path.relpath(path, self.root) if inside else os.path.basename(path))

    def write(self, frame, result):
        path = frame.meta.get("path")
        if result.status != "error" or not path or frame.meta.get("index") is not None:
            return
        if not os.path.isfile(path):
            return  # deleted before it could be read: nothing to move
        try:
            frame.meta["quarantined_to"] = move_without_overwriting(path, self.target(path))
            self.moved += 1
        except (IOError, OSError) as exc:
            self.log("quarantine: could not move {} into {}: {}".format(path, self.folder, exc))

    def close(self):
        pass

    def describe(self):
        return "quarantine {}".format(self.folder)
