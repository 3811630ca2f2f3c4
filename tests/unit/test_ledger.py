"""edge/ledger.py: schema version 5, the new statuses, file identity per row, migrating older ledgers, and the
queries a watched folder asks (which files and frames are screened)."""
import json
import sqlite3

import pytest

from edge.ledger import SCHEMA_VERSION, Ledger
from edge.records import Result

# The version-1 schema exactly as the walking skeleton wrote it (edge/ledger.py at commit 92c88db).
V1_SCHEMA = """
CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, started_at TEXT NOT NULL, finished_at TEXT, source TEXT NOT NULL,
    bundle_name TEXT NOT NULL, bundle_sha256 TEXT NOT NULL, backend TEXT NOT NULL,
    images INTEGER NOT NULL DEFAULT 0, errors INTEGER NOT NULL DEFAULT 0, summary TEXT);
CREATE TABLE results (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id INTEGER NOT NULL REFERENCES runs(id), path TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'error')), label TEXT, confidence REAL, probs TEXT,
    error TEXT NOT NULL DEFAULT '', latency_ms REAL, created_at TEXT NOT NULL);
CREATE INDEX results_run ON results(run_id);
INSERT INTO runs (started_at, finished_at, source, bundle_name, bundle_sha256, backend, images, errors)
    VALUES ('2026-01-01T00:00:00Z', '2026-01-01T00:01:00Z', '/data', 'b', 'abc', 'onnxruntime', 2, 1);
INSERT INTO results (run_id, path, status, label, confidence, probs, error, latency_ms, created_at)
    VALUES (1, 'scans/a.jpg', 'ok', 'normal', 0.9, '{"normal": 0.9}', '', 3.5, '2026-01-01T00:00:10Z');
INSERT INTO results (run_id, path, status, label, confidence, probs, error, latency_ms, created_at)
    VALUES (1, 'scans/b.jpg', 'error', NULL, NULL, NULL, 'capture: scans/b.jpg: empty file', NULL,
            '2026-01-01T00:00:11Z');
"""


def test_every_status_and_the_frame_identity_are_stored(tmp_path, tiny_bundle):
    path = str(tmp_path / "l.db")
    ledger = Ledger(path)
    run = ledger.start_run("/data", tiny_bundle, "fake")
    meta = {"path": "/data/a.dcm", "size_bytes": 1234, "mtime_ns": 1700000000123456789, "index": 3,
            "modality": "oct"}
    ledger.add_result(run, Result("/data/a.dcm#3", "skipped", error="an oct image; this model screens fundus"),
                      meta)
    ledger.add_result(run, Result("/data/b.jpg", "ungradable", error="too dark"), {"path": "/data/b.jpg"})
    ledger.add_result(run, Result("/data/c.jpg", "ok", "normal", 0.8, {"normal": 0.8}, "", 2.0))
    ledger.add_result(run, Result("/data/d.jpg", "error", error="decode: /data/d.jpg: bad"))
    with pytest.raises(sqlite3.IntegrityError):
        ledger.add_result(run, Result("/data/e.jpg", "maybe"))
    ledger.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
        rows = conn.execute("SELECT path, status, file, size_bytes, mtime_ns, frame_index, modality FROM results"
                            " ORDER BY id").fetchall()
        assert rows[0] == ("/data/a.dcm#3", "skipped", "/data/a.dcm", 1234, 1700000000123456789, 3, "oct")
        assert [r[1] for r in rows] == ["skipped", "ungradable", "ok", "error"]
        # the refused row rolled back whole: counters match the rows
        assert conn.execute("SELECT images, errors FROM runs").fetchone() == (4, 1)
    finally:
        conn.close()


def test_a_version_1_ledger_is_migrated_keeping_its_rows(tmp_path, tiny_bundle):
    path = str(tmp_path / "old.db")
    conn = sqlite3.connect(path)
    conn.executescript(V1_SCHEMA)
    conn.commit()
    conn.close()

    ledger = Ledger(path)
    run = ledger.start_run("/data2", tiny_bundle, "fake")
    ledger.add_result(run, Result("/data2/x.jpg", "ungradable", error="blurred"))
    ledger.close()
    Ledger(path).close()  # opening again is a no-op

    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 5
        rows = conn.execute("SELECT id, run_id, path, status, label, probs, error, file FROM results ORDER BY id"
                            ).fetchall()
        assert rows[:2] == [(1, 1, "scans/a.jpg", "ok", "normal", '{"normal": 0.9}', "", None),
                            (2, 1, "scans/b.jpg", "error", None, None, "capture: scans/b.jpg: empty file", None)]
        assert rows[2][1:4] == (2, "/data2/x.jpg", "ungradable")
        assert json.loads(rows[0][5]) == {"normal": 0.9}
        indexes = set(r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'"))
        assert {"results_run", "results_file"} <= indexes
    finally:
        conn.close()


def test_a_ledger_from_a_newer_retina_edge_is_refused(tmp_path):
    path = str(tmp_path / "new.db")
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 9")
    conn.close()
    with pytest.raises(sqlite3.DatabaseError, match="schema version 9 is newer"):
        Ledger(path)


# The version-2 results table as ledger.py wrote it before the frame count (commit ec7ab67).
V2_RESULTS = """
CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, started_at TEXT NOT NULL, finished_at TEXT, source TEXT NOT NULL,
    bundle_name TEXT NOT NULL, bundle_sha256 TEXT NOT NULL, backend TEXT NOT NULL,
    images INTEGER NOT NULL DEFAULT 0, errors INTEGER NOT NULL DEFAULT 0, summary TEXT);
CREATE TABLE results (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id INTEGER NOT NULL REFERENCES runs(id), path TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'error', 'skipped', 'ungradable')), label TEXT,
    confidence REAL, probs TEXT, error TEXT NOT NULL DEFAULT '', latency_ms REAL, created_at TEXT NOT NULL,
    file TEXT, size_bytes INTEGER, mtime_ns INTEGER, frame_index INTEGER, modality TEXT);
CREATE INDEX results_run ON results(run_id);
CREATE INDEX results_file ON results(file, size_bytes, mtime_ns);
INSERT INTO runs (started_at, source, bundle_name, bundle_sha256, backend) VALUES ('t', '/w', 'b', 'abc', 'ort');
INSERT INTO results (run_id, path, status, created_at, file, size_bytes, mtime_ns, frame_index)
    VALUES (1, '/w/v.dcm#0', 'skipped', 't', '/w/v.dcm', 10, 20, 0);
PRAGMA user_version = 2;
"""


def test_a_version_2_ledger_gains_the_frame_count_and_its_volume_rows_count_as_screened(tmp_path):
    path = str(tmp_path / "v2.db")
    conn = sqlite3.connect(path)
    conn.executescript(V2_RESULTS)
    conn.close()
    ledger = Ledger(path)
    try:
        columns = [r[1] for r in ledger.conn.execute("PRAGMA table_info(results)")]
        assert columns[-3:] == ["frames", "refer", "model"]
        assert ledger.conn.execute("PRAGMA user_version").fetchone()[0] == 5
        # no frame count was recorded before version 3: such a volume is taken as complete, not redone
        assert ledger.is_screened("/w/v.dcm", 10, 20)
    finally:
        ledger.close()


# The version-3 results table as ledger.py wrote it before the referral column (commit 8e5f3bf).
V3_RESULTS = """
CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, started_at TEXT NOT NULL, finished_at TEXT, source TEXT NOT NULL,
    bundle_name TEXT NOT NULL, bundle_sha256 TEXT NOT NULL, backend TEXT NOT NULL,
    images INTEGER NOT NULL DEFAULT 0, errors INTEGER NOT NULL DEFAULT 0, summary TEXT);
CREATE TABLE results (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id INTEGER NOT NULL REFERENCES runs(id), path TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'error', 'skipped', 'ungradable')), label TEXT,
    confidence REAL, probs TEXT, error TEXT NOT NULL DEFAULT '', latency_ms REAL, created_at TEXT NOT NULL,
    file TEXT, size_bytes INTEGER, mtime_ns INTEGER, frame_index INTEGER, modality TEXT, frames INTEGER);
CREATE INDEX results_run ON results(run_id);
CREATE INDEX results_file ON results(file, size_bytes, mtime_ns);
INSERT INTO runs (started_at, source, bundle_name, bundle_sha256, backend, images)
    VALUES ('t', '/w', 'b', 'abc', 'ort', 2);
INSERT INTO results (run_id, path, status, label, confidence, probs, created_at, file, size_bytes, mtime_ns)
    VALUES (1, '/w/a.jpg', 'ok', 'glaucoma', 0.7, '{"glaucoma": 0.7}', 't', '/w/a.jpg', 10, 20);
INSERT INTO results (run_id, path, status, created_at, file, size_bytes, mtime_ns, frame_index, frames)
    VALUES (1, '/w/v.dcm#0', 'skipped', 't', '/w/v.dcm', 30, 40, 0, 1);
PRAGMA user_version = 3;
"""


def test_a_version_3_ledger_gains_the_refer_column_keeping_its_rows(tmp_path, tiny_bundle):
    path = str(tmp_path / "v3.db")
    conn = sqlite3.connect(path)
    conn.executescript(V3_RESULTS)
    conn.close()
    ledger = Ledger(path)
    try:
        assert ledger.conn.execute("PRAGMA user_version").fetchone()[0] == 5
        assert ledger.is_screened("/w/a.jpg", 10, 20) and ledger.is_screened("/w/v.dcm", 30, 40)
        run = ledger.start_run("/w", tiny_bundle, "ort")
        ledger.add_result(run, Result("/w/b.jpg", "ok", "glaucoma", 0.6, {"glaucoma": 0.6}, "", 1.0, True))
        ledger.add_result(run, Result("/w/c.jpg", "ok", "normal", 0.9, {"normal": 0.9}, "", 1.0, False))
        ledger.add_result(run, Result("/w/d.jpg", "ok", "normal", 0.9, {"normal": 0.9}, "", 1.0))
        rows = ledger.conn.execute("SELECT path, status, label, probs, frames, refer FROM results ORDER BY id"
                                   ).fetchall()
    finally:
        ledger.close()
    assert rows == [("/w/a.jpg", "ok", "glaucoma", '{"glaucoma": 0.7}', None, None),
                    ("/w/v.dcm#0", "skipped", None, None, 1, None),
                    ("/w/b.jpg", "ok", "glaucoma", '{"glaucoma": 0.6}', None, 1),
                    ("/w/c.jpg", "ok", "normal", '{"normal": 0.9}', None, 0),
                    ("/w/d.jpg", "ok", "normal", '{"normal": 0.9}', None, None)]
    Ledger(path).close()  # opening again is a no-op


# The version-4 results table as ledger.py wrote it before the model column (commit c9b6842).
V4_RESULTS = V3_RESULTS.replace("frames INTEGER);", "frames INTEGER, refer INTEGER CHECK (refer IN (0, 1)));").replace(
    "PRAGMA user_version = 3;", "PRAGMA user_version = 4;")


def test_a_version_4_ledger_gains_the_model_column_and_the_volumes_table_keeping_its_rows(tmp_path, tiny_bundle):
    path = str(tmp_path / "v4.db")
    conn = sqlite3.connect(path)
    conn.executescript(V4_RESULTS)
    conn.close()
    ledger = Ledger(path)
    try:
        assert ledger.conn.execute("PRAGMA user_version").fetchone()[0] == 5
        columns = [r[1] for r in ledger.conn.execute("PRAGMA table_info(results)")]
        assert columns[-3:] == ["frames", "refer", "model"]
        assert ledger.is_screened("/w/a.jpg", 10, 20)
        run = ledger.start_run("/w", [tiny_bundle, tiny_bundle], "ort; ort")
        ledger.add_result(run, Result("/w/b.jpg", "ok", "glaucoma", 0.6, {"glaucoma": 0.6}, "", 1.0, None, "fundus"))
        volume = {"path": "/w/v.dcm", "size_bytes": 5, "mtime_ns": 6, "frames": 3, "modality": "oct",
                  "model": "oct", "statuses": {"ok": 2, "ungradable": 1},
                  "worst": {"index": 2, "label": "CNV", "confidence": 0.8, "refer": True, "probs": {"CNV": 0.8}}}
        ledger.add_volume(run, volume)
        ledger.add_volume(run, dict(volume, path="/w/u.dcm", statuses={"skipped": 3}, worst=None))
        rows = ledger.conn.execute("SELECT path, label, model FROM results ORDER BY id").fetchall()
        volumes = ledger.conn.execute("SELECT file, frames, modality, model, statuses, worst_index, label, confidence,"
                                      " probs, refer FROM volumes ORDER BY id").fetchall()
        images, name, sha = ledger.conn.execute("SELECT images, bundle_name, bundle_sha256 FROM runs WHERE id = ?",
                                                (run,)).fetchone()
    finally:
        ledger.close()
    assert rows == [("/w/a.jpg", "glaucoma", None), ("/w/v.dcm#0", None, None), ("/w/b.jpg", "glaucoma", "fundus")]
    assert volumes == [("/w/v.dcm", 3, "oct", "oct", '{"ok": 2, "ungradable": 1}', 2, "CNV", 0.8, '{"CNV": 0.8}', 1),
                       ("/w/u.dcm", 3, "oct", "oct", '{"skipped": 3}', None, None, None, None, None)]
    assert images == 1  # a volume row is not an image
    assert name == "tiny4-test, tiny4-test" and sha.count(",") == 1
    Ledger(path).close()  # opening again is a no-op


def add(ledger, run, path, size, mtime, index=None, frames=None, status="ok"):
    meta = {"path": path, "size_bytes": size, "mtime_ns": mtime}
    if index is not None:
        meta.update(index=index, frames=frames)
    rid = path if index is None else "{}#{}".format(path, index)
    ledger.add_result(run, Result(rid, status, "normal" if status == "ok" else None, error=""), meta)


def test_a_file_is_screened_by_its_path_size_and_mtime_and_a_volume_by_all_its_frames(tmp_path, tiny_bundle):
    ledger = Ledger(str(tmp_path / "l.db"))
    run = ledger.start_run("/w", tiny_bundle, "fake")
    add(ledger, run, "/w/a.jpg", 100, 1)
    add(ledger, run, "/w/sub/b.jpg", 200, 2, status="error")
    add(ledger, run, "/w/bad.dcm", 300, 3, status="error")       # a volume that failed as a whole
    for index in (0, 1):                                          # a 4-frame volume cut short after 2 frames
        add(ledger, run, "/w/cut.dcm", 400, 4, index, 4, status="skipped")
    for index in (0, 1, 2):                                       # a complete 3-frame volume
        add(ledger, run, "/w/vol.dcm", 500, 5, index, 3, status="skipped")
    add(ledger, run, "/w2/c.jpg", 100, 1)                         # beside the folder: '/w2' sorts after '/w/'
    add(ledger, run, "/wx.jpg", 100, 1)
    ledger.conn.execute("INSERT INTO results (run_id, path, status, created_at) VALUES (?, 'scans/old.jpg', 'ok',"
                        " 't')", (run,))                          # a version-1 row: no identity
    try:
        assert ledger.screened_files("/w") == {"/w/a.jpg": {(100, 1)}, "/w/sub/b.jpg": {(200, 2)},
                                               "/w/bad.dcm": {(300, 3)}, "/w/vol.dcm": {(500, 5)}}
        assert ledger.screened_files("/w/sub/") == {"/w/sub/b.jpg": {(200, 2)}}
        assert ledger.is_screened("/w/a.jpg", 100, 1)
        assert not ledger.is_screened("/w/a.jpg", 100, 2)   # rewritten: a new mtime
        assert not ledger.is_screened("/w/a.jpg", 101, 1)
        assert not ledger.is_screened("/w/nothing.jpg", 1, 1)
        assert not ledger.is_screened("/w/cut.dcm", 400, 4)
        assert ledger.is_screened("/w/vol.dcm", 500, 5)
        assert ledger.screened_frames("/w/cut.dcm", 400, 4) == {0, 1}
        assert ledger.screened_frames("/w/a.jpg", 100, 1) == set()
        frames = ledger.conn.execute("SELECT frames FROM results WHERE file = '/w/cut.dcm'").fetchall()
        assert frames == [(4,), (4,)]
        assert ledger.conn.execute("SELECT frames FROM results WHERE file = '/w/a.jpg'").fetchone() == (None,)
    finally:
        ledger.close()
