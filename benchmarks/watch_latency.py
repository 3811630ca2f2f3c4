"""How soon a watched folder takes a new file: from its last write to the frame leaving the source.

    .venv/bin/python benchmarks/watch_latency.py                      # 60 files, default poll/settle
    .venv/bin/python benchmarks/watch_latency.py --files 100 --poll 0.1 --settle 0.3 --background 5000

A script that prints figures, never a test. A writer thread puts files into a watched folder at
random intervals (half renamed into place, half written in place), recording when each was complete;
the source (edge.io.watch.WatchedFolder, as `retina-edge run DIR --watch` uses it) is iterated on the
main thread, each frame marked done at once (no network: this measures the watcher, not the model).
``--background N`` first fills the folder with N already-screened files, so each poll walks them too.
The target is 1 s; the bound by construction is poll + settle plus one scan (scans are spaced
at least three scan times apart, so a huge folder is picked up later rather than hogging a core). The machine may be
shared: the load average is printed.
"""
import argparse
import os
import random
import shutil
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from edge.io.sources import open_source  # noqa: E402
from edge.io.watch import POLL_S, SETTLE_S, scan  # noqa: E402

JPEG = bytes(bytearray([0xFF, 0xD8])) + os.urandom(20000) + bytes(bytearray([0xFF, 0xD9]))


def writer(folder, n, gap_s, done_at, rng):
    for i in range(n):
        time.sleep(rng.uniform(0, 2 * gap_s))
        path = os.path.join(folder, "sub{}".format(i % 3), "new_{:04d}.jpg".format(i))
        if i % 2:
            tmp = os.path.join(os.path.dirname(path), ".new.part")
            with open(tmp, "wb") as f:
                f.write(JPEG)
            os.replace(tmp, path)
        else:
            with open(path, "wb") as f:
                f.write(JPEG[:10000])
                f.flush()
                f.write(JPEG[10000:])
        done_at[path] = time.monotonic()


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100.0 * (len(values) - 1))))]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=60)
    p.add_argument("--gap", type=float, default=0.3, help="mean seconds between new files")
    p.add_argument("--poll", type=float, default=POLL_S)
    p.add_argument("--settle", type=float, default=SETTLE_S)
    p.add_argument("--background", type=int, default=0, help="files already in the folder and screened")
    args = p.parse_args(argv)
    folder = tempfile.mkdtemp(prefix="watch-latency-")
    try:
        for i in range(3):
            os.makedirs(os.path.join(folder, "sub{}".format(i)))
        for i in range(args.background):
            with open(os.path.join(folder, "sub{}".format(i % 3), "old_{:06d}.jpg".format(i)), "wb") as f:
                f.write(JPEG[:100])
        source = open_source("watch://{}?poll={}&settle={}".format(folder, args.poll, args.settle))
        source.log = lambda line: None
        old = set(path for path, _ in scan(folder))
        started = time.monotonic()
        scan_s = None
        if args.background:
            list(scan(folder))
            scan_s = time.monotonic() - started
        done_at, latencies = {}, []
        rng = random.Random(0)
        feeder = threading.Thread(target=writer, args=(folder, args.files, args.gap, done_at, rng))
        feeder.daemon = True
        backlog = len(old)
        if not backlog:
            feeder.start()
        for frame in source:
            now = time.monotonic()
            source.done(frame, None)
            path = frame.meta["path"]
            if path in old:  # the background files are screened first; then the new ones begin to arrive
                backlog -= 1
                if not backlog:
                    feeder.start()
                continue
            latencies.append(now - done_at[path])
            if len(latencies) == args.files:
                break
        source.stop()
        print("{} new files, poll {:g} s, settle {:g} s, {} background files{}; load average {}".format(
            args.files, args.poll, args.settle, args.background,
            " (one scan {:.0f} ms)".format(scan_s * 1000) if scan_s is not None else "",
            " ".join("{:.2f}".format(x) for x in os.getloadavg())))
        print("pick-up latency, last write -> frame: mean {:.0f} ms, p50 {:.0f}, p90 {:.0f}, max {:.0f} ms "
              "(bound poll + settle = {:.0f} ms + one scan)".format(
                  1000 * sum(latencies) / len(latencies), 1000 * percentile(latencies, 50),
                  1000 * percentile(latencies, 90), 1000 * max(latencies), 1000 * (args.poll + args.settle)))
        print("within 1 s: {} of {}".format(sum(l <= 1.0 for l in latencies), len(latencies)))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
