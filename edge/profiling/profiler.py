"""One profiler with fixed stage names, jetson-inference style.

The pipeline hands the profiler each frame's stage times directly
(``add_frame``): CPU stages are timed with ``StageTimes`` around the work on
whichever thread did it; asynchronous GPU stages (host-to-device, network,
device-to-host, a CUDA pre-process) come from CUDA events recorded by the
backend, never from CPU clocks around a launch. ``total`` is the frame's
end-to-end latency, capture to output, queue waits included, so with
overlapped stages it is more than the sum of the others.

Throughput is frames over the wall-clock window from the end of the warm-up
to the last frame. Summaries give mean/p50/p90/p99 in milliseconds.
"""
import random
import time
from collections import OrderedDict

STAGES = ("capture", "decode", "pre-process", "host-to-device", "network", "device-to-host", "post-process",
          "output", "total")


def percentile(values, q):
    """Linear-interpolated percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def check_stage(name):
    if name not in STAGES:
        raise ValueError("unknown stage {!r}; stages are {}".format(name, STAGES))
    return name


class StageTimes(object):
    """Times CPU stages of one frame into a dict: ``with t.stage("decode"): ...``.

    A stage timed twice for one frame adds up. A stage that raises is still
    recorded, so a failing decode shows its cost.
    """

    def __init__(self, times_ms=None, clock=time.perf_counter):
        self.times_ms = times_ms if times_ms is not None else {}
        self.clock = clock

    def stage(self, name):
        return _Stage(self, check_stage(name))

    def add(self, name, latency_ms):
        self.times_ms[check_stage(name)] = self.times_ms.get(name, 0.0) + latency_ms


class _Stage(object):
    def __init__(self, owner, name):
        self.owner, self.name = owner, name

    def __enter__(self):
        self.start = self.owner.clock()
        return self

    def __exit__(self, *exc):
        self.owner.add(self.name, (self.owner.clock() - self.start) * 1000.0)
        return False


class Profiler(object):
    """Collects per-frame stage times; the first ``warmup`` frames are left out of everything.

    ``max_samples`` bounds what a long run keeps: past it, each stage keeps a
    uniform random sample of that many of its times (reservoir sampling, seeded)
    for the percentiles, while ``n`` and the mean stay exact. None keeps all.
    """

    def __init__(self, clock=time.perf_counter, warmup=0, max_samples=None):
        self.clock = clock
        self.warmup = int(warmup)
        self.max_samples = max_samples
        self.samples_ms = OrderedDict((s, []) for s in STAGES)
        self._count = dict((s, 0) for s in STAGES)
        self._sum_ms = dict((s, 0.0) for s in STAGES)
        self._random = random.Random(0)
        self.seen = 0
        self.started = None
        self.finished = None

    def start(self):
        """Open the throughput window (called when the run starts; moved to the end of the warm-up)."""
        if self.started is None:
            self.started = self.clock()

    def add_frame(self, times_ms):
        """One frame's stage times (stage -> ms); unknown stage names are refused."""
        for name in times_ms:
            check_stage(name)
        now = self.clock()
        self.seen += 1
        if self.seen <= self.warmup:
            self.started = now
            return
        if self.started is None:
            self.started = now
        for name, value in times_ms.items():
            self._keep(name, float(value))
        self.finished = now

    def _keep(self, name, value):
        self._count[name] += 1
        self._sum_ms[name] += value
        kept = self.samples_ms[name]
        if self.max_samples is None or len(kept) < self.max_samples:
            kept.append(value)
        else:
            slot = self._random.randrange(self._count[name])
            if slot < self.max_samples:
                kept[slot] = value

    @property
    def frames(self):
        return max(0, self.seen - self.warmup)

    def images_per_s(self):
        if not self.frames or self.finished is None or self.started is None or self.finished <= self.started:
            return 0.0
        return self.frames / (self.finished - self.started)

    def summary(self):
        """stage -> {n, mean_ms, p50_ms, p90_ms, p99_ms} for the stages that were timed."""
        out = OrderedDict()
        for name in STAGES:
            values = self.samples_ms[name]
            if values:
                out[name] = {"n": self._count[name], "mean_ms": self._sum_ms[name] / self._count[name],
                             "p50_ms": percentile(values, 50), "p90_ms": percentile(values, 90),
                             "p99_ms": percentile(values, 99)}
        return out

    def report(self):
        lines = ["{:<15} {:>6} {:>9} {:>9} {:>9} {:>9}".format("stage", "n", "mean ms", "p50 ms", "p90 ms", "p99 ms")]
        for name, s in self.summary().items():
            lines.append("{:<15} {:>6d} {:>9.2f} {:>9.2f} {:>9.2f} {:>9.2f}".format(
                name, s["n"], s["mean_ms"], s["p50_ms"], s["p90_ms"], s["p99_ms"]))
        return "\n".join(lines)
