"""kill -9 a watched `retina-edge run` at random moments, restart it, count: every file exactly once.

Real subprocess runs of ``python -m edge run DIR --watch`` on the tiny test bundle, killed with SIGKILL
after random delays while a feeder adds files (some renamed into place, some written in place in
halves, a few broken), then one last run stopped with SIGTERM; the ledger is counted with
``select path, count(*) from results group by path``. The trial itself lives in
benchmarks/watch_durability.py, which runs the full 20 trials x 200 files and prints the counts; here it
runs RETINA_EDGE_DURABILITY_TRIALS trials (default 2) of 40 files to keep the suite's cost near 20 s.
"""
import os
import random

from benchmarks.watch_durability import run_trial

TRIALS = int(os.environ.get("RETINA_EDGE_DURABILITY_TRIALS", "2"))


def test_after_kill_9_at_random_moments_every_file_is_screened_exactly_once(tmp_path, tiny_bundle):
    seed = random.randrange(1 << 30)
    for trial in range(TRIALS):
        work = str(tmp_path / "trial{}".format(trial))
        os.makedirs(work)
        r = run_trial(work, files=40, kills=3, kill_window_s=2.0, seed=seed + trial, model=tiny_bundle.root)
        where = "seed {} trial {}: {}".format(seed, trial, r)
        assert r["missing"] == [] and r["repeated"] == [] and r["extra"] == [], where
        assert r["rows"] == 40 and r["final_rc"] == 143, where
