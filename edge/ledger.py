"""The results ledger: SQLite in WAL mode, one row per image, committed as it is written.

A run that dies half way keeps every row written before it; ``runs.finished_at``
stays empty for it.
"""
import json
import os
import sqlite3
import time

SCHEMA = """
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
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    path TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'error')),
    label TEXT,
    confidence REAL,
    probs TEXT,
    error TEXT NOT NULL DEFAULT '',
    latency_ms REAL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS results_run ON results(run_id);
"""


def _now():
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z"


class Ledger(object):
    def __init__(self, path):
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            os.makedirs(folder)
        self.path = path
        self.conn = sqlite3.connect(path, timeout=30)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(SCHEMA)
        self.conn.commit()

    def start_run(self, source, bundle, backend):
        cur = self.conn.execute(
            "INSERT INTO runs (started_at, source, bundle_name, bundle_sha256, backend) VALUES (?, ?, ?, ?, ?)",
            (_now(), source, bundle.manifest["name"], bundle.manifest["model"]["sha256"], backend))
        self.conn.commit()
        return cur.lastrowid

    def add_result(self, run_id, result):
        probs = json.dumps(result.probs) if result.probs is not None else None
        self.conn.execute(
            "INSERT INTO results (run_id, path, status, label, confidence, probs, error, latency_ms, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (run_id, result.path, result.status, result.label, result.confidence, probs, result.error,
             result.latency_ms, _now()))
        self.conn.execute("UPDATE runs SET images = images + 1, errors = errors + ? WHERE id = ?",
                          (1 if result.status == "error" else 0, run_id))
        self.conn.commit()

    def finish_run(self, run_id, summary):
        self.conn.execute("UPDATE runs SET finished_at = ?, summary = ? WHERE id = ?",
                          (_now(), json.dumps(summary), run_id))
        self.conn.commit()

    def close(self):
        self.conn.close()
