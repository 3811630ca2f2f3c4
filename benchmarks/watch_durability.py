"""kill -9 a watched run at random moments, restart it, and count: every file screened exactly once?

    .venv/bin/python benchmarks/watch_durability.py                      # 20 trials x 200 files
    .venv/bin/python benchmarks/watch_durability.py --trials 3 --files 50 --seed 7 --model models/default

A script that prints what it saw, never a timed test (tests/unit/test_watch_durability.py runs a small
version of it). Each trial, in a fresh folder and ledger:

1. Half the files are in the watched folder (and its subfolders) before the first start; a feeder thread
   adds the rest while the runs come and go, some renamed into place, some written in place in two
   halves 30 ms apart (the watcher must wait for them to be complete), about 1 in 25 a broken JPEG
   (an error row, then moved to the quarantine folder).
2. ``python -m edge run DIR --watch`` is started and killed with SIGKILL after a random delay
   (uniform in [0, --kill-window] s: during start-up, between files, mid-file, mid-commit), ``--kills``
   times, each time restarted on the same folder and ledger.
3. A last run is left until the ledger holds a row for every file, then stopped with SIGTERM (exit 143).
4. ``select path, count(*) from results group by path``: each file must appear exactly once, none
   missing, none extra.

It prints one line per trial (rows in the ledger at each kill, so one sees where the kills landed)
and a total; it exits 1 if any trial lost or repeated a file.
"""
import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

import cv2
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBFOLDERS = ("", "a", os.path.join("b", "c"))


def image_bytes(seed, side=64):
    """A small fundus-like JPEG (a bright disc on black), different for each seed."""
    rng = np.random.RandomState(seed)
    img = np.zeros((side, side, 3), np.uint8)
    colour = tuple(int(c) for c in rng.randint(60, 255, 3))
    cv2.circle(img, (side // 2, side // 2), side // 2 - 3, colour, -1)
    img = cv2.add(img, rng.randint(0, 40, img.shape).astype(np.uint8))
    return cv2.imencode(".jpg", img)[1].tobytes()


def plan(files, rng):
    """[(relative path, bytes, how)] for a trial: how = present | rename | inplace."""
    items = []
    for i in range(files):
        rel = os.path.join(SUBFOLDERS[i % len(SUBFOLDERS)], "img_{:04d}.jpg".format(i))
        data = b"not a jpeg %d\n" % i if rng.random() < 0.04 else image_bytes(i)
        how = "present" if i < files // 2 else rng.choice(("rename", "inplace"))
        items.append((rel, data, how))
    return items


def put(folder, rel, data, how):
    path = os.path.join(folder, rel)
    if not os.path.isdir(os.path.dirname(path)):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    if how == "rename":
        tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".part")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    elif how == "inplace":
        with open(path, "wb") as f:
            f.write(data[:len(data) // 2])
            f.flush()
            time.sleep(0.03)
            f.write(data[len(data) // 2:])
    else:
        with open(path, "wb") as f:
            f.write(data)


class Feeder(threading.Thread):
    """Adds the files that are not present at the start, at random moments over ``seconds``."""

    def __init__(self, folder, items, seconds, rng):
        super(Feeder, self).__init__(name="feeder")
        self.daemon = True
        self.folder, self.items = folder, [it for it in items if it[2] != "present"]
        self.gaps = [rng.uniform(0, 2.0 * seconds / max(len(self.items), 1)) for _ in self.items]

    def run(self):
        for (rel, data, how), gap in zip(self.items, self.gaps):
            time.sleep(gap)
            put(self.folder, rel, data, how)


def ledger_rows(path):
    if not os.path.exists(path):
        return 0
    conn = sqlite3.connect(path, timeout=30)
    try:
        return conn.execute("SELECT count(*) FROM results").fetchone()[0]
    except sqlite3.Error:
        return 0
    finally:
        conn.close()


def counts(path):
    conn = sqlite3.connect(path, timeout=30)
    try:
        return dict(conn.execute("select path, count(*) from results group by path").fetchall())
    finally:
        conn.close()


def start(python, work, model):
    cmd = [python, "-m", "edge", "run", os.path.join(work, "watched"), "--watch", "--ledger",
           os.path.join(work, "ledger.db"), "-o", "null://", "--quiet", "--backend", "onnxruntime",
           "--quarantine", os.path.join(work, "quarantine")]
    if model:
        cmd += ["--model", model]
    env = dict(os.environ, PYTHONPATH=REPO, RETINA_EDGE_HOME=os.path.join(work, "home"), PYTHONDONTWRITEBYTECODE="1")
    log = open(os.path.join(work, "runs.log"), "ab")
    try:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()


def run_trial(work, files=200, kills=5, kill_window_s=3.0, seed=0, python=sys.executable, model=None,
              final_timeout_s=180.0):
    """One trial in the empty folder ``work``; returns a dict of what was counted."""
    rng = random.Random(seed)
    folder = os.path.join(work, "watched")
    os.makedirs(folder)
    items = plan(files, rng)
    for rel, data, how in items:
        if how == "present":
            put(folder, rel, data, how)
    feeder = Feeder(folder, items, kills * kill_window_s / 2.0, rng)
    feeder.start()
    ledger = os.path.join(work, "ledger.db")
    rows_at_kills = []
    began = time.time()
    for _ in range(kills):
        proc = start(python, work, model)
        time.sleep(rng.uniform(0, kill_window_s))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        rows_at_kills.append(ledger_rows(ledger))
    feeder.join()
    proc = start(python, work, model)
    deadline = time.time() + final_timeout_s
    while time.time() < deadline and len(counts(ledger) if os.path.exists(ledger) else {}) < files:
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    time.sleep(1.0)  # a repeat, were there one, would have time to show
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        final_rc = proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        final_rc = proc.wait()
    expected = set(os.path.join(folder, rel) for rel, _, _ in items)
    seen = counts(ledger)
    return {"files": files, "kills": kills, "rows_at_kills": rows_at_kills, "final_rc": final_rc,
            "missing": sorted(expected - set(seen)), "extra": sorted(set(seen) - expected),
            "repeated": sorted(p for p, n in seen.items() if n != 1), "rows": sum(seen.values()),
            "quarantined": sum(len(f) for _, _, f in os.walk(os.path.join(work, "quarantine"))),
            "seconds": round(time.time() - began, 1)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--files", type=int, default=200)
    p.add_argument("--kills", type=int, default=5, help="SIGKILLs per trial before the last run")
    p.add_argument("--kill-window", type=float, default=3.0, help="each kill comes uniformly within this many s")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--model", default=None, help="bundle (default: the shipped one)")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--keep", action="store_true", help="keep the trial folders (printed)")
    args = p.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    print("seed {}, {} trial(s) x {} files, {} kill(s) each within {:g} s, {}, load average {}".format(
        seed, args.trials, args.files, args.kills, args.kill_window, args.python,
        " ".join("{:.2f}".format(x) for x in os.getloadavg())))
    bad, totals = 0, {"rows": 0, "kills": 0}
    for trial in range(args.trials):
        work = tempfile.mkdtemp(prefix="watch-trial-")
        r = run_trial(work, args.files, args.kills, args.kill_window, seed + trial, args.python, args.model)
        ok = not (r["missing"] or r["extra"] or r["repeated"]) and r["final_rc"] == 143
        bad += not ok
        totals["rows"] += r["rows"]
        totals["kills"] += r["kills"]
        print("trial {:2d} {}: rows at each kill {}, then {} rows for {} files; missing {}, repeated {}, extra {}; "
              "quarantined {}; last run exit {}; {} s".format(
                  trial, "ok  " if ok else "FAIL", r["rows_at_kills"], r["rows"], r["files"], len(r["missing"]),
                  len(r["repeated"]), len(r["extra"]), r["quarantined"], r["final_rc"], r["seconds"]))
        if not ok:
            print(json.dumps(r, indent=1)[:4000])
        if args.keep or not ok:
            print("  kept {}".format(work))
        else:
            shutil.rmtree(work, ignore_errors=True)
    print("{} of {} trials lost or repeated nothing ({} kills, {} rows)".format(
        args.trials - bad, args.trials, totals["kills"], totals["rows"]))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
