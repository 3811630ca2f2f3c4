"""edge/io/watch.py: a watched folder takes complete files once, across restarts (Python 3.6, no torch).

The folder is iterated on a thread as the pipeline would: each frame's row committed to a real SQLite
ledger, then ``done``. Waits are generous upper bounds, never timings: how fast files are picked up is
measured by benchmarks/watch_latency.py.
"""
import os
import re
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest

from edge.io.sources import SourceError, open_source
from edge.io.watch import WatchedFolder, scan, takes_name
from edge.ledger import Ledger
from edge.records import Result

FAST = {"poll": "0.05", "settle": "0.2"}
QUIET_S = 1.0  # several poll + settle cycles: what would have been taken has been by then


def jpeg(seed, side=48):
    rng = np.random.RandomState(seed)
    img = np.zeros((side, side, 3), np.uint8)
    cv2.circle(img, (side // 2, side // 2), side // 2 - 2, tuple(int(c) for c in rng.randint(80, 255, 3)), -1)
    return cv2.imencode(".jpg", img)[1].tobytes()


def write(folder, rel, data):
    path = os.path.join(str(folder), rel)
    if not os.path.isdir(os.path.dirname(path)):
        os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(data)
    return path


def put(folder, rel, data):
    """Write beside, then rename into place (how a careful exporter writes)."""
    path = os.path.join(str(folder), rel)
    tmp = write(folder, os.path.join(os.path.dirname(rel), "." + os.path.basename(rel) + ".part"), data)
    os.replace(tmp, path)
    return path


class Watching(object):
    """A WatchedFolder iterated on a thread: each frame committed to ``ledger_path`` (if given), then done()."""

    def __init__(self, folder, ledger_path=None, commit=True, **options):
        opts = dict(FAST)
        opts.update(options)
        self.source = open_source("watch://" + str(folder), opts)
        self.lines = []
        self.source.log = self.lines.append
        if ledger_path:
            self.source.attach_ledger(ledger_path)
        self.ledger_path, self.commit = ledger_path, commit
        self.frames = queue.Queue()
        self.failure = []
        self.thread = threading.Thread(target=self._run)
        self.thread.daemon = True
        self.thread.start()

    def _run(self):
        ledger = Ledger(self.ledger_path) if self.ledger_path else None
        try:
            run = ledger.start_run("watch", _Bundle, "test") if ledger else None
            for frame in self.source:
                result = Result(frame.source_id, "error" if frame.error else "ok", error=frame.error)
                if self.commit:
                    if ledger:
                        ledger.add_result(run, result, frame.meta)
                    self.source.done(frame, result)
                self.frames.put(frame)
        except Exception as exc:  # reported by take()/stop()
            self.failure.append(exc)
        finally:
            if ledger:
                ledger.close()

    def take(self, timeout_s=15.0):
        try:
            return self.frames.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError("no frame within {} s; failure: {}".format(timeout_s, self.failure))

    def take_until(self, path, timeout_s=15.0):
        """Frames up to and including the one for ``path``."""
        taken = []
        while not taken or taken[-1].meta.get("path") != path:
            taken.append(self.take(timeout_s))
        return taken

    def quiet(self, seconds=QUIET_S):
        """Nothing more comes within ``seconds``."""
        time.sleep(seconds)
        extra = []
        while not self.frames.empty():
            extra.append(self.frames.get().source_id)
        assert extra == []

    def stop(self):
        self.source.stop()
        self.thread.join(10)
        assert not self.thread.is_alive(), "the watch did not end within 10 s of stop()"
        assert self.failure == []


class _Bundle(object):
    manifest = {"name": "test", "model": {"sha256": "0" * 64}}


def test_names_a_writer_uses_while_writing_are_never_taken():
    for name in ("a.jpg", "A.JPEG", "b.png", "c.tif", "scan.dcm", "x.DICOM", "d.bmp"):
        assert takes_name(name), name
    for name in (".a.jpg", ".a.jpg.Ab12Cd", "~a.jpg", "a.jpg~", "a.jpg.part", "a.jpg.tmp", "a.jpg.crdownload",
                 "a.jpg.filepart", "a.partial", "notes.txt", "a.jpg.download", "clip.mp4"):
        assert not takes_name(name), name


def test_a_folder_that_does_not_exist_is_refused_with_a_line_saying_so(tmp_path):
    with pytest.raises(SourceError) as info:
        open_source("watch://" + str(tmp_path / "no-such"))
    assert "no such folder to watch" in str(info.value) and "mkdir -p" in str(info.value)
    with pytest.raises(SourceError, match="settle"):
        open_source("watch://{}?settle=soon".format(tmp_path))


def test_new_files_in_subfolders_are_taken_once_each_with_their_identity(tmp_path):
    folder = tmp_path / "export"
    before = write(folder, "before.jpg", jpeg(0))
    w = Watching(folder)
    try:
        first = w.take()
        assert first.meta["path"] == before
        later = put(folder, os.path.join("p1", "visit2", "later.jpg"), jpeg(1))
        frame = w.take()
        assert frame.source_id == later and frame.error == "" and frame.data == jpeg(1)
        st = os.stat(later)
        assert (frame.meta["size_bytes"], frame.meta["mtime_ns"]) == (st.st_size, st.st_mtime_ns)
        assert frame.meta["modality"] == "fundus"
        w.quiet()
    finally:
        w.stop()
    assert w.source.root == str(folder)


def test_a_file_written_in_place_is_taken_only_once_complete(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    data = jpeg(2, side=160)
    w = Watching(folder, settle="1.0")
    try:
        path = str(folder / "slow.jpg")
        with open(path, "wb") as f:  # pieces 0.2 s apart: quiet for several polls, never for the 1 s settle time
            for i in range(5):
                f.write(data[i * len(data) // 5:(i + 1) * len(data) // 5])
                f.flush()
                time.sleep(0.2)
        frame = w.take()
        assert frame.meta["path"] == path and frame.data == data
        w.quiet()
    finally:
        w.stop()


def test_temporary_hidden_and_excluded_names_are_skipped_until_renamed_into_place(tmp_path):
    folder = tmp_path / "export"
    for rel in (".hidden.jpg", "x.jpg.part", "~lock.jpg", "y.jpg.tmp", "notes.txt", os.path.join(".cache", "c.jpg"),
                os.path.join("quarantine", "q.jpg"), os.path.join("annotated", "a.jpg")):
        write(folder, rel, jpeg(3))
    w = Watching(folder)
    w.source.exclude(str(folder / "quarantine"))
    w.source.exclude(str(folder / "annotated"))
    try:
        sentinel = put(folder, "sentinel.jpg", jpeg(4))
        assert [f.meta["path"] for f in w.take_until(sentinel)] == [sentinel]
        os.replace(str(folder / "x.jpg.part"), str(folder / "x.jpg"))
        assert w.take().meta["path"] == str(folder / "x.jpg")
        w.quiet()
    finally:
        w.stop()
    assert sorted(p for p, _ in scan(str(folder), {str(folder / "quarantine")})) == sorted(
        [str(folder / "annotated" / "a.jpg"), sentinel, str(folder / "x.jpg")])


def test_screened_files_are_not_screened_again_after_a_restart_unless_they_change(tmp_path):
    folder, ledger = tmp_path / "export", str(tmp_path / "ledger.db")
    a, b = write(folder, "a.jpg", jpeg(5)), write(folder, os.path.join("s", "b.jpg"), jpeg(6))
    w = Watching(folder, ledger)
    try:
        assert sorted(w.take().meta["path"] for _ in range(2)) == [a, b]
    finally:
        w.stop()
    w = Watching(folder, ledger)  # a restart: the ledger remembers
    try:
        c = put(folder, "c.jpg", jpeg(7))
        assert [f.meta["path"] for f in w.take_until(c)] == [c]
        later = time.time() + 5
        os.utime(a, (later, later))
        assert w.take().meta["path"] == a  # touched: a new identity, screened again
        w.quiet()
    finally:
        w.stop()
    conn = sqlite3.connect(ledger)
    assert dict(conn.execute("select path, count(*) from results group by path")) == {a: 2, b: 1, c: 1}
    conn.close()


def test_a_file_in_flight_when_the_process_died_is_screened_on_the_restart(tmp_path):
    folder, ledger = tmp_path / "export", str(tmp_path / "ledger.db")
    a = write(folder, "a.jpg", jpeg(8))
    w = Watching(folder, ledger, commit=False)  # taken, but never committed: as if killed mid-frame
    try:
        assert w.take().meta["path"] == a
        w.quiet()  # nor taken twice by the same run while in flight
    finally:
        w.stop()
    w = Watching(folder, ledger)
    try:
        assert w.take().meta["path"] == a
        w.quiet()
    finally:
        w.stop()


def test_an_unreadable_file_is_one_error_row_carrying_the_identity_scanned(tmp_path, monkeypatch):
    folder, ledger = tmp_path / "export", str(tmp_path / "ledger.db")
    a = write(folder, "a.jpg", jpeg(9))
    import edge.io.watch as watch

    def unreadable(path, index=None):
        frame = real(path)
        frame.data, frame.error = None, "capture: {}: cannot read file (Permission denied)".format(path)
        frame.meta = {"path": path}
        return frame
    real = watch.read_file_frame
    monkeypatch.setattr(watch, "read_file_frame", unreadable)  # root reads any file: chmod cannot show it here
    w = Watching(folder, ledger)
    try:
        frame = w.take()
        assert frame.error.startswith("capture: {}: cannot read file".format(a))
        st = os.stat(a)
        assert (frame.meta["size_bytes"], frame.meta["mtime_ns"]) == (st.st_size, st.st_mtime_ns)
        w.quiet()
    finally:
        w.stop()
    ledger_ = Ledger(ledger)
    assert ledger_.is_screened(a, st.st_size, st.st_mtime_ns)
    ledger_.close()


def test_a_folder_that_goes_away_is_waited_for_and_nothing_is_repeated_when_it_returns(tmp_path):
    folder, away = tmp_path / "export", tmp_path / "away"
    a = write(folder, "a.jpg", jpeg(10))
    w = Watching(folder, poll="0.05")
    try:
        assert w.take().meta["path"] == a
        os.rename(str(folder), str(away))
        time.sleep(1.5)
        os.rename(str(away), str(folder))
        b = put(folder, "b.jpg", jpeg(11))
        assert [f.meta["path"] for f in w.take_until(b, timeout_s=20)] == [b]
        w.quiet()
    finally:
        w.stop()
    assert any("is gone" in line for line in w.lines) and any("is back" in line for line in w.lines)


def test_a_volume_cut_short_resumes_at_its_first_frame_without_a_row(tmp_path):
    pytest.importorskip("pydicom", reason="pydicom is not installed (pip install 'pydicom>=2.3')")
    from synthetic import bscan, make_dicom
    folder, ledger_path = tmp_path / "export", str(tmp_path / "ledger.db")
    cut = write(folder, "cut.dcm", make_dicom(np.stack([bscan(seed=i) for i in range(4)]), "MONOCHROME2",
                                               modality="OPT", frames=4))
    whole = write(folder, "whole.dcm", make_dicom(np.stack([bscan(seed=i) for i in range(3)]), "MONOCHROME2",
                                                   modality="OPT", frames=3))
    ledger = Ledger(ledger_path)
    run = ledger.start_run("watch", _Bundle, "test")
    for path, indices, frames in ((cut, (0, 1), 4), (whole, (0, 1, 2), 3)):
        st = os.stat(path)
        for i in indices:  # what a run killed after frame 1 of cut.dcm had committed
            ledger.add_result(run, Result("{}#{}".format(path, i), "skipped", error="oct"),
                              {"path": path, "size_bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "index": i,
                               "frames": frames})
    ledger.close()
    w = Watching(folder, ledger_path)
    try:
        assert [w.take().source_id for _ in range(2)] == ["{}#2".format(cut), "{}#3".format(cut)]
        w.quiet()
    finally:
        w.stop()
    conn = sqlite3.connect(ledger_path)
    assert conn.execute("select count(*), count(distinct path) from results").fetchone() == (7, 7)
    conn.close()


def test_stop_ends_an_idle_watch(tmp_path):
    w = Watching(tmp_path)
    time.sleep(0.3)
    w.stop()  # asserts the thread ended


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_watched_run_screens_new_files_and_ends_on_a_signal_with_its_summary(
        tmp_path, tiny_bundle, subprocess_env, signum, code):
    folder, ledger = tmp_path / "export", str(tmp_path / "ledger.db")
    write(folder, "a.jpg", jpeg(12))
    proc = subprocess.Popen([sys.executable, "-m", "edge", "run", str(folder), "--watch", "--model", tiny_bundle.root,
                             "--ledger", ledger, "--backend", "onnxruntime"], cwd=str(tmp_path), env=subprocess_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        b = put(folder, os.path.join("later", "b.jpg"), jpeg(13))
        deadline = time.time() + 60
        while time.time() < deadline and _rows(ledger) < 2:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    out, err = out.decode(), err.decode()
    assert proc.returncode == code, err
    assert "watching {}".format(folder) in err and "Traceback" not in err
    assert "2 image(s)" in out and "stopped by {}".format(signal.Signals(signum).name) in out
    # a watched run mostly waits for files: it says how long it watched, not a meaningless images/s
    assert re.search(r"2 image\(s\), .*; watched for 0m \d\ds\n", out) and "images/s" not in out
    conn = sqlite3.connect(ledger)
    assert sorted(r[0] for r in conn.execute("select path from results")) == [str(folder / "a.jpg"), b]
    finished, summary = conn.execute("select finished_at, summary from runs").fetchone()
    conn.close()
    assert finished and '"stopped_by": "{}"'.format(signal.Signals(signum).name) in summary


def _rows(ledger):
    if not os.path.exists(ledger):
        return 0
    conn = sqlite3.connect(ledger, timeout=30)
    try:
        return conn.execute("select count(*) from results").fetchone()[0]
    except sqlite3.Error:
        return 0
    finally:
        conn.close()
