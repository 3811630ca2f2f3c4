"""Memory over a long run: screen a looping source for many thousands of frames and print RSS over time.

    .venv/bin/python benchmarks/long_run_memory.py                 # 20,000 frames, shipped model
    .venv/bin/python benchmarks/long_run_memory.py --frames 100000 --every-s 10

The source loops over real fundus images, reading each file's bytes again
for every frame (as a camera or a busy export folder would hand over new
data), so every frame is decoded, checked, prepared, screened and written
to a real ledger and CSV in a temporary folder, exactly as `retina-edge run`
does (its build() and pipeline options). A sampler thread reads VmRSS from
/proc/self/status. RSS should rise while the first frames warm the caches,
then stay flat: the script prints the growth over the second half of the
run per 1,000 frames, which should be near zero.

Linux only (/proc). A script that prints figures, never a test.
"""
import argparse
import csv
import os
import random
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


class LoopingFiles(object):
    """``frames`` frames read from ``paths`` in turn; fresh bytes from disk for every frame."""

    live = False

    def __init__(self, paths, frames):
        self.paths, self.frames = paths, frames
        self.done_count = 0

    def __iter__(self):
        from edge.io.sources import read_file_frame
        for i in range(self.frames):
            yield read_file_frame(self.paths[i % len(self.paths)], index=i)

    def count(self):
        return self.frames

    def done(self, frame, result):
        self.done_count += 1

    def close(self):
        pass

    def describe(self):
        return "{} frames looping over {} files".format(self.frames, len(self.paths))


def pick(split_csv, data, split, count, seed):
    with open(split_csv, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == split]
    return [os.path.join(data, r["path"]) for r in random.Random(seed).sample(rows, min(count, len(rows)))]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=20000, help="frames to screen (default %(default)s)")
    p.add_argument("--every-s", type=float, default=5.0, help="seconds between RSS samples (default %(default)s)")
    p.add_argument("--images", type=int, default=64, help="distinct files the source loops over (default %(default)s)")
    p.add_argument("--data", default=os.path.normpath(os.path.join(REPO, "..", "shared", "data", "fundus4")),
                   help="fundus4 root (default %(default)s)")
    p.add_argument("--model", default=None, help="bundle (default: the shipped one)")
    p.add_argument("--workers", type=int, default=None, help="decode workers (default: retina-edge run's)")
    p.add_argument("--batch", type=int, default=1, help="network batch, up to (default %(default)s)")
    args = p.parse_args(argv)

    from edge.cli import build_parser
    from edge.commands.run import Session, build, pipeline_options
    from edge.pipeline import Pipeline

    paths = pick(os.path.join(REPO, "models", "default", "split.csv"), args.data, "val", args.images, 0)
    tmp = tempfile.mkdtemp(prefix="long-run-")
    argv = ["run", paths[0], "--quiet", "--backend", "onnxruntime", "--batch", str(args.batch),
            "--results", os.path.join(tmp, "results.csv"), "--ledger", os.path.join(tmp, "ledger.db")]
    argv += (["--model", args.model] if args.model else []) + (
        ["--workers", str(args.workers)] if args.workers is not None else [])
    run_args = build_parser().parse_args(argv)
    session = Session()
    build(run_args, session, log=lambda line: None)
    session.source.close()
    session.source = LoopingFiles(paths, args.frames)
    pipeline = Pipeline(session.bundle, session.backend, session.outputs, checks=session.checks,
                        **pipeline_options(run_args))
    samples = []  # (seconds, frames done, RSS MB)
    finished = threading.Event()
    t0 = time.perf_counter()

    def sample():  # during the run only: what is freed after it says nothing about a long run
        while not finished.wait(args.every_s):
            samples.append((time.perf_counter() - t0, pipeline.stats.frames, rss_mb()))
    print("{} frames over {} files from {}; {} worker(s), batch {}; ledger and CSV in {}; RSS before the run "
          "{:.1f} MB".format(args.frames, len(paths), args.data, pipeline.workers, pipeline.batch, tmp, rss_mb()),
          flush=True)
    sampler = threading.Thread(target=sample, name="rss-sampler")
    sampler.daemon = True
    sampler.start()
    try:
        stats = pipeline.run(session.source)
    finally:
        finished.set()
        sampler.join()
        session.ledger.finish_run(session.run_id, pipeline.stats.as_dict())
        session.ledger.close()
        session.close()
    report(samples, stats, pipeline, os.path.getsize(os.path.join(tmp, "ledger.db")))
    return 0


def report(samples, stats, pipeline, ledger_bytes):
    print("\n{:>8} {:>9} {:>9}".format("seconds", "frames", "RSS MB"))
    step = max(1, len(samples) // 40)
    for t, n, mb in samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else []):
        print("{:>8.0f} {:>9d} {:>9.1f}".format(t, n, mb))
    half = [s for s in samples if s[1] >= stats.frames / 2.0]
    print("\n{} frames ({} ok, {} error), {:.1f} images/s; RSS during the run: min {:.1f} MB, max {:.1f} MB, "
          "last {:.1f} MB".format(stats.frames, stats.counts["ok"], stats.counts["error"],
                                   pipeline.profiler.images_per_s(), min(s[2] for s in samples),
                                   max(s[2] for s in samples), samples[-1][2]))
    if len(half) >= 3:
        print("second half of the run ({} samples, frames {} to {}): RSS {:.1f} to {:.1f} MB, least-squares slope "
              "{:+.3f} MB per 1,000 frames".format(len(half), half[0][1], half[-1][1], half[0][2], half[-1][2],
                                                     slope([s[1] for s in half], [s[2] for s in half]) * 1000.0))
    print("the ledger file on disk: {:.1f} MB (disk, not memory)".format(ledger_bytes / 1e6))


def slope(xs, ys):
    n = float(len(xs))
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


if __name__ == "__main__":
    sys.exit(main())
