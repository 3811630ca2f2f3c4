"""The results ledger: SQLite in WAL mode, one row per frame, committed as it is written.

A run that dies half way keeps every row written before it; ``runs.finished_at``
stays empty for it. Paths are stored absolute, as the run's source is.

Schema version 2 (``PRAGMA user_version``) adds the statuses ``skipped`` and
``ungradable`` and, per row, the file's identity (``file``, ``size_bytes``,
``mtime_ns``), the frame's ``frame_index`` and ``modality``; a version-1
ledger is migrated in place, in one transaction, when it is opened.

Schema version 3 adds ``frames``, the frame count of a multi-frame file (a
DICOM volume; NULL for a single image), so that a watched folder can tell a
volume screened to its last frame from one cut short by a killed process
(``screened_files``, ``screened_frames``). A version-2 ledger gains the
column (NULL in its rows) when it is opened.

Schema version 4 adds ``refer``: 1/0 at the bundle's referral point, NULL when
the bundle has none or the row is not ok (and in rows written before it). An
older ledger gains the column, its rows kept, when it is opened.

Schema version 5 (several bundles in one station) adds ``model``, the name of
the bundle that screened the row (NULL where none took it, and in older rows),
and the ``volumes`` table: one row per multi-frame file screened to its last
frame, with its frame counts per status and its worst finding (the frame
``worst_index``, its label, confidence, probabilities and referral;
``edge.io.volumes`` defines "worst"). Volume rows are not frames: ``runs.images``
and every query of ``results`` stay per frame. A run with several bundles
records their names and sha256 joined by ", " in ``runs``. An older ledger
gains the column and the table, its rows kept, when it is opened:

    SELECT file, frames, worst_index, label, confidence FROM volumes WHERE run_id = ?
"""
import json
import os
import sqlite3
import time

from edge.records import STATUSES

SCHEMA_VERSION = 5

_RUNS = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    source TEXT NOT NULL,
    bundle_name TEXT NOT NULL,
    bundle_sha256 TEXT NOT NULL,
    backend TEXT NOT NULL,
    images INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    summary TEXT
);
"""

_RESULTS = """
CREATE TABLE IF NOT EXISTS {name} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    path TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ({statuses})),
    label TEXT,
    confidence REAL,
    probs TEXT,
    error TEXT NOT NULL DEFAULT '',
    latency_ms REAL,
    created_at TEXT NOT NULL,
    file TEXT,
    size_bytes INTEGER,
    mtime_ns INTEGER,
    frame_index INTEGER,
    modality TEXT,
    frames INTEGER,
    refer INTEGER CHECK (refer IN (0, 1)),
    model TEXT
);
"""

_VOLUMES = """
CREATE TABLE IF NOT EXISTS volumes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    file TEXT NOT NULL,
    size_bytes INTEGER,
    mtime_ns INTEGER,
    frames INTEGER NOT NULL,
    modality TEXT,
    model TEXT,
    statuses TEXT NOT NULL,
    worst_index INTEGER,
    label TEXT,
    confidence REAL,
    probs TEXT,
    refer INTEGER CHECK (refer IN (0, 1)),
    created_at TEXT NOT NULL
);
"""

_INDEXES = """
CREATE INDEX IF NOT EXISTS results_run ON results(run_id);
CREATE INDEX IF NOT EXISTS results_file ON results(file, size_bytes, mtime_ns);
CREATE INDEX IF NOT EXISTS volumes_run ON volumes(run_id);
"""

# a file identity's rows cover it: a whole-file row, or every frame of a volume (rows written before
# schema 3 have no frame count and count as complete)
_COMPLETE = ("(SUM(frame_index IS NULL) > 0 OR COUNT(*) > 0 AND"
             " COUNT(DISTINCT frame_index) >= MAX(COALESCE(frames, 0)))")

_V1_COLUMNS = "id, run_id, path, status, label, confidence, probs, error, latency_ms, created_at"
# the columns each version added to results, to add in place when a ledger of an older version is opened
_ADDED_COLUMNS = {3: ("frames INTEGER",), 4: ("refer INTEGER CHECK (refer IN (0, 1))",), 5: ("model TEXT",)}


def _now():
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z"


def _results_sql(name="results"):
    return _RESULTS.format(name=name, statuses=", ".join("'{}'".format(s) for s in STATUSES))


class Ledger(object):
    def __init__(self, path):
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            os.makedirs(folder)
        self.path = path
        # explicit transactions; opened on the main thread, written by the pipeline's output thread
        # (one thread at a time: the run hands it over and back), so the same-thread check is off
        self.conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    def _migrate(self):
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError("{}: ledger schema version {} is newer than this retina-edge knows ({})"
                                        .format(self.path, version, SCHEMA_VERSION))
        has_results = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'results'").fetchone()
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute(_RUNS)
            self.conn.execute(_VOLUMES)
            if has_results and version >= 2:
                for added in range(version + 1, SCHEMA_VERSION + 1):
                    for column in _ADDED_COLUMNS.get(added, ()):
                        self.conn.execute("ALTER TABLE results ADD COLUMN " + column)
            elif has_results:  # version 1: copy rows into the new table, absolute paths kept as they were
                self.conn.execute(_results_sql("results_v2"))
                self.conn.execute("INSERT INTO results_v2 ({0}) SELECT {0} FROM results".format(_V1_COLUMNS))
                self.conn.execute("DROP TABLE results")
                self.conn.execute("ALTER TABLE results_v2 RENAME TO results")
            else:
                self.conn.execute(_results_sql())
            for statement in _INDEXES.strip().split(";"):
                if statement.strip():
                    self.conn.execute(statement)
            self.conn.execute("PRAGMA user_version = {}".format(SCHEMA_VERSION))
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:  # SQLite has already rolled back after e.g. SQLITE_FULL (disk full)
                self.conn.execute("ROLLBACK")
            raise

    def start_run(self, source, bundle, backend):
        """A new run; ``bundle`` may be a list of bundles (a station with several), recorded joined by ", "."""
        bundles = bundle if isinstance(bundle, (list, tuple)) else [bundle]
        cur = self.conn.execute(
            "INSERT INTO runs (started_at, source, bundle_name, bundle_sha256, backend) VALUES (?, ?, ?, ?, ?)",
            (_now(), source, ", ".join(b.manifest["name"] for b in bundles),
             ", ".join(b.manifest["model"]["sha256"] for b in bundles), backend))
        return cur.lastrowid

    def add_result(self, run_id, result, meta=None):
        """Insert one row and bump the run's counters in one transaction."""
        meta = meta or {}
        probs = json.dumps(result.probs) if result.probs is not None else None
        self.conn.execute("BEGIN")
        try:
            self.conn.execute(
                "INSERT INTO results (run_id, path, status, label, confidence, probs, error, latency_ms, created_at,"
                " file, size_bytes, mtime_ns, frame_index, modality, frames, refer, model)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, result.path, result.status, result.label, result.confidence, probs, result.error,
                 result.latency_ms, _now(), meta.get("path"), meta.get("size_bytes"), meta.get("mtime_ns"),
                 meta.get("index"), meta.get("modality"), meta.get("frames") if "index" in meta else None,
                 None if result.refer is None else int(bool(result.refer)), result.model))
            self.conn.execute("UPDATE runs SET images = images + 1, errors = errors + ? WHERE id = ?",
                              (1 if result.status == "error" else 0, run_id))
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:  # SQLite has already rolled back after e.g. SQLITE_FULL (disk full)
                self.conn.execute("ROLLBACK")
            raise

    def add_volume(self, run_id, volume):
        """One ``volumes`` row from a ``VolumeTally`` summary (its own transaction; the run's counts untouched)."""
        worst = volume.get("worst") or {}
        refer = worst.get("refer")
        self.conn.execute(
            "INSERT INTO volumes (run_id, file, size_bytes, mtime_ns, frames, modality, model, statuses,"
            " worst_index, label, confidence, probs, refer, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (run_id, volume["path"], volume.get("size_bytes"), volume.get("mtime_ns"), volume["frames"],
             volume.get("modality"), volume.get("model"), json.dumps(volume["statuses"], sort_keys=True),
             worst.get("index"), worst.get("label"), worst.get("confidence"),
             json.dumps(worst["probs"]) if worst.get("probs") is not None else None,
             None if refer is None else int(bool(refer)), _now()))

    def screened_files(self, folder):
        """{file: {(size_bytes, mtime_ns), ...}}: the file identities under ``folder`` screened completely.

        Complete: a row for the whole file (no frame index: an image, or a file
        that failed as a whole), or as many frames as its ``frames`` says. One
        range scan of the ``results_file`` index: the files of ``folder`` sort
        between ``folder/`` and ``folder0`` ('0' follows '/').
        """
        prefix = os.path.join(os.path.abspath(folder), "")
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        found = {}
        for file, size_bytes, mtime_ns in self.conn.execute(
                "SELECT file, size_bytes, mtime_ns FROM results WHERE file >= ? AND file < ?"
                " AND size_bytes IS NOT NULL AND mtime_ns IS NOT NULL GROUP BY file, size_bytes, mtime_ns"
                " HAVING " + _COMPLETE, (prefix, upper)):
            found.setdefault(file, set()).add((size_bytes, mtime_ns))
        return found

    def is_screened(self, file, size_bytes, mtime_ns):
        """True if this file identity (absolute path, size, mtime in ns) was screened completely."""
        row = self.conn.execute("SELECT " + _COMPLETE + " FROM results WHERE file = ? AND size_bytes = ? AND"
                                " mtime_ns = ?", (file, size_bytes, mtime_ns)).fetchone()
        return bool(row and row[0])

    def screened_frames(self, file, size_bytes, mtime_ns):
        """The frame indices of this file identity that have a row (a volume cut short resumes after them)."""
        return set(row[0] for row in self.conn.execute(
            "SELECT DISTINCT frame_index FROM results WHERE file = ? AND size_bytes = ? AND mtime_ns = ?"
            " AND frame_index IS NOT NULL", (file, size_bytes, mtime_ns)))

    def finish_run(self, run_id, summary):
        self.conn.execute("UPDATE runs SET finished_at = ?, summary = ? WHERE id = ?",
                          (_now(), json.dumps(summary), run_id))

    def close(self):
        self.conn.close()
