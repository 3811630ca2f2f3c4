"""A sampler thread for power, temperature and clock caps, and the energy arithmetic over its samples.

Power is read every ``interval_s`` (monotonic timestamps, the same clock as
the Profiler's throughput window); temperatures and clock caps every
``thermal_interval_s``. A read that fails is counted, not fatal.

Energy: the total power between samples is taken as the straight line
joining them (held flat before the first and after the last), so the energy
over a window [t0, t1] is the trapezoid rule over the samples inside it plus
the interpolated values at t0 and t1; exact for a piecewise-linear series.
Energy per image = that energy / images. Net of idle = (energy - idle mean
power x window length) / images, the idle mean power being measured the same
way over a quiet stretch before the run.
"""
import bisect
import threading
import time


class Sampler(object):
    def __init__(self, meter=None, zones=None, caps=None, interval_s=0.05, thermal_interval_s=0.5,
                 clock=time.monotonic):
        self.meter, self.zones, self.caps = meter, zones, caps
        self.interval_s = max(0.005, float(interval_s))
        self.thermal_interval_s = max(self.interval_s, float(thermal_interval_s))
        self.clock = clock
        self.power = []     # (t, total_mw, {rail: mW})
        self.thermal = []   # (t, {zone: degC})
        self.clocks = []    # (t, {cap: Hz})
        self.read_errors = 0
        self.last_error = ""
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        self.sample_thermal()
        self._thread = threading.Thread(target=self._loop, name="power-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """End sampling (once; later calls do nothing), with a last temperature sample."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self._thread = None
        self.sample_thermal()

    def _loop(self):
        next_thermal = self.clock() + self.thermal_interval_s
        next_power = self.clock()
        while not self._stop.is_set():
            self.sample_power()
            now = self.clock()
            if now >= next_thermal:
                self.sample_thermal()
                next_thermal = now + self.thermal_interval_s
            next_power += self.interval_s
            if next_power < now:  # fell behind (a slow read): skip ahead rather than burst
                next_power = now + self.interval_s
            self._stop.wait(max(0.0, next_power - self.clock()))

    def sample_power(self):
        if self.meter is None:
            return
        try:
            reading = self.meter.read()
        except Exception as exc:  # a sensor that fails once must not end the profile; counted and reported
            self.read_errors += 1
            self.last_error = "{}: {}".format(type(exc).__name__, exc)
            return
        if reading.total_mw is None:
            self.read_errors += 1
            return
        t = reading.t if reading.t is not None else self.clock()
        if self.power and t <= self.power[-1][0]:
            return  # the same tegrastats line again
        self.power.append((t, reading.total_mw, dict(reading.rails_mw)))
        if reading.temps_c:
            self.thermal.append((t, dict(reading.temps_c)))

    def sample_thermal(self):
        t = self.clock()
        if self.zones is not None and self.zones.available:
            self.thermal.append((t, self.zones.read()))
        if self.caps is not None and self.caps.available:
            self.clocks.append((t, self.caps.read()))

    def series(self):
        """[(t, total_mw)] for the energy functions."""
        return [(t, mw) for t, mw, _ in self.power]


def power_at(series, t):
    """Total power at time t: linear between samples, held flat outside them."""
    times = [s[0] for s in series]
    i = bisect.bisect_right(times, t)
    if i == 0:
        return series[0][1]
    if i == len(series):
        return series[-1][1]
    (ta, pa), (tb, pb) = series[i - 1], series[i]
    return pa + (pb - pa) * (t - ta) / (tb - ta)


def energy_mj(series, t0, t1):
    """Energy in mJ (mW x s) over [t0, t1] from [(t, mW)] samples sorted by t."""
    if not series or t1 <= t0:
        return 0.0
    points = [(t0, power_at(series, t0))] + [s for s in series if t0 < s[0] < t1] + [(t1, power_at(series, t1))]
    return sum((tb - ta) * (pa + pb) / 2.0 for (ta, pa), (tb, pb) in zip(points, points[1:]))


def mean_power_mw(series, t0, t1):
    return energy_mj(series, t0, t1) / (t1 - t0) if t1 > t0 and series else None


def samples_in(series, t0, t1):
    return sum(1 for t, _ in series if t0 <= t <= t1)


def energy_summary(series, window, images, idle=None, min_samples=2):
    """Energy over the measured window, per image, gross and net of the idle baseline.

    ``window`` and ``idle`` are (t0, t1). Returns a dict; ``available`` False with
    ``reason`` when the window holds fewer than ``min_samples`` power samples.
    """
    t0, t1 = window
    n = samples_in(series, t0, t1)
    out = {"window_s": t1 - t0, "samples_in_window": n, "images": images}
    if n < min_samples or not images or t1 <= t0:
        out.update(available=False, reason="{} power sample(s) in a {:.2f} s window for {} image(s); measure "
                   "longer (--frames/--seconds) or sample faster".format(n, t1 - t0, images))
        return out
    total = energy_mj(series, t0, t1)
    out.update(available=True, mean_power_mw=total / (t1 - t0), energy_mj=total,
               energy_per_image_mj=total / images)
    if idle is not None and samples_in(series, idle[0], idle[1]) >= min_samples:
        idle_mw = mean_power_mw(series, idle[0], idle[1])
        net = total - idle_mw * (t1 - t0)
        out.update(idle_power_mw=idle_mw, idle_s=idle[1] - idle[0],
                   idle_samples=samples_in(series, idle[0], idle[1]),
                   net_energy_mj=net, net_energy_per_image_mj=net / images)
    else:
        out.update(idle_power_mw=None, net_energy_per_image_mj=None,
                   idle_reason="no idle baseline (--idle-seconds 0, or too few samples in it)")
    return out
