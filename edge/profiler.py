"""One profiler with fixed stage names, jetson-inference style.

CPU timestamps per stage per frame; a GPU backend may report its own device
time for the network stage later. Summaries give p50/p90/p99 in milliseconds.
"""
import time

STAGES = ("capture", "pre-process", "network", "post-process", "output", "total")


def percentile(values, q):
    """Linear-interpolated percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class Profiler(object):
    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self.samples_ms = dict((s, []) for s in STAGES)
        self._frame_start = None
        self._stage = None
        self._stage_start = None
        self.started = None
        self.finished = None

    def begin_frame(self):
        now = self.clock()
        if self.started is None:
            self.started = now
        self._frame_start = now

    def stage(self, name):
        """Context manager timing one stage of the current frame."""
        if name not in STAGES or name == "total":
            raise ValueError("unknown stage {!r}; stages are {}".format(name, STAGES))
        return _Stage(self, name)

    def end_frame(self):
        now = self.clock()
        self.samples_ms["total"].append((now - self._frame_start) * 1000.0)
        self.finished = now

    def record(self, name, latency_ms):
        self.samples_ms[name].append(latency_ms)

    @property
    def frames(self):
        return len(self.samples_ms["total"])

    def images_per_s(self):
        if not self.frames or self.finished is None or self.finished <= self.started:
            return 0.0
        return self.frames / (self.finished - self.started)

    def summary(self):
        """stage -> {n, p50_ms, p90_ms, p99_ms, mean_ms} for stages that were timed."""
        out = {}
        for name in STAGES:
            values = self.samples_ms[name]
            if values:
                out[name] = {"n": len(values), "mean_ms": sum(values) / len(values),
                             "p50_ms": percentile(values, 50), "p90_ms": percentile(values, 90),
                             "p99_ms": percentile(values, 99)}
        return out

    def report(self):
        lines = ["{:<13} {:>6} {:>9} {:>9} {:>9} {:>9}".format("stage", "n", "mean ms", "p50 ms", "p90 ms", "p99 ms")]
        for name, s in self.summary().items():
            lines.append("{:<13} {:>6d} {:>9.2f} {:>9.2f} {:>9.2f} {:>9.2f}".format(
                name, s["n"], s["mean_ms"], s["p50_ms"], s["p90_ms"], s["p99_ms"]))
        return "\n".join(lines)


class _Stage(object):
    def __init__(self, profiler, name):
        self.profiler, self.name = profiler, name

    def __enter__(self):
        self.start = self.profiler.clock()
        return self

    def __exit__(self, *exc):
        self.profiler.record(self.name, (self.profiler.clock() - self.start) * 1000.0)
        return False
