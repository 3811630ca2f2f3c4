"""Thermal zones and clock caps, and what they say about throttling during a run.

Facts, and where they come from:
- ``/sys/devices/virtual/thermal/thermal_zoneN/{type,temp}``, temp in
  millidegrees Celsius (shared/docs/DESIGN.md; jetson_stats
  ``jtop/core/temperature.py``). A sensor that is off reads -256 degC on Orin
  (jetson_stats ``TEMPERATURE_OFFLINE``; tegrastats prints ``CV0@-256C``).
  ``PMIC-Die`` reads a constant 100 degC on the Nano/TX1 (tegrastats prints
  ``PMIC@100C``; jetson_stats skips it): not a measurement, left out.
- Trip points: ``trip_point_K_temp`` (millidegrees) and ``trip_point_K_type``
  (passive / active / hot / critical). At a *passive* trip the kernel starts
  cooling by lowering clocks; at *critical* it shuts down (Linux
  Documentation/driver-api/thermal/sysfs-api.rst).
- Clock caps: cpufreq ``policyN/scaling_max_freq`` (kHz) and devfreq
  ``/sys/class/devfreq/*/max_freq`` (Hz; the Jetson GPU is a devfreq device,
  e.g. ``57000000.gpu`` on the Nano, ``17000000.ga10b``/``17000000.gpu`` on Orin).
  nvpmodel sets these caps; a thermal or over-current cap lowers them further.

How throttling is noticed (``assess_throttling``): (1) a zone's hottest sample
came within ``margin_c`` of its lowest passive trip point (or passed it); (2) a
clock cap fell during the run below its value at the start. Neither sees
hardware throttling that does not show in sysfs (e.g. Orin's over-current
events), and a clock that only drops because the load is light is not a cap.
"""
import os
import re
from collections import OrderedDict

from edge.profiling.sysfs import read_int, read_text

THERMAL_GLOB = "/sys/devices/virtual/thermal/thermal_zone*"
CPU_POLICY_GLOB = "/sys/devices/system/cpu/cpufreq/policy*"
CPU_GLOB = "/sys/devices/system/cpu/cpu[0-9]*/cpufreq"
DEVFREQ_GLOB = "/sys/class/devfreq/*"
OFFLINE_BELOW_C = -100.0  # -256 degC means "sensor off"
MARGIN_C = 5.0


class ThermalZones(object):
    """The readable thermal zones: name -> degC, with their trip points."""

    def __init__(self, root):
        self.root = root
        self.zones = []  # (name, temp path, [(trip type, degC)])
        names = []
        for zone in root.glob(THERMAL_GLOB):
            kind, temp_path = read_text(os.path.join(zone, "type")), os.path.join(zone, "temp")
            first = read_int(temp_path)
            if not kind or first is None or first / 1000.0 < OFFLINE_BELOW_C or "PMIC" in kind.upper():
                continue
            names.append(kind)
            self.zones.append([kind, temp_path, _trips(zone), os.path.basename(zone)])
        for z in self.zones:  # two zones of the same type are told apart by their folder
            if names.count(z[0]) > 1:
                z[0] = "{} ({})".format(z[0], z[3])
        if not self.zones:
            self.reason = "no readable thermal zone under {}".format(THERMAL_GLOB)
        else:
            self.reason = ""

    @property
    def available(self):
        return bool(self.zones)

    def read(self):
        out = OrderedDict()
        for name, path, _, _ in self.zones:
            value = read_int(path)
            out[name] = value / 1000.0 if value is not None and value / 1000.0 >= OFFLINE_BELOW_C else None
        return out

    def trips(self):
        """name -> [{"type": ..., "temp_c": ...}] for the report."""
        return OrderedDict((z[0], [{"type": t, "temp_c": c} for t, c in z[2]]) for z in self.zones)

    def passive_trip_c(self, name):
        passive = [c for t, c in self._zone(name)[2] if t == "passive"]
        return min(passive) if passive else None

    def _zone(self, name):
        for z in self.zones:
            if z[0] == name:
                return z
        raise KeyError(name)


def _trips(zone):
    trips = []
    for path in sorted(os.listdir(zone)):
        m = re.match(r"^trip_point_(\d+)_temp$", path)
        if not m:
            continue
        temp = read_int(os.path.join(zone, path))
        kind = read_text(os.path.join(zone, "trip_point_{}_type".format(m.group(1))))
        if temp is not None and kind:
            trips.append((kind, temp / 1000.0))
    return sorted(trips, key=lambda t: t[1])


class ClockCaps(object):
    """The highest clock each CPU policy and devfreq device (the GPU) may run at now, in Hz."""

    def __init__(self, root):
        self.caps = []  # (name, path, scale to Hz)
        policies = root.glob(CPU_POLICY_GLOB) or root.glob(CPU_GLOB)
        for folder in policies:
            self.caps.append(("cpu " + _short(folder), os.path.join(folder, "scaling_max_freq"), 1000))
        for folder in root.glob(DEVFREQ_GLOB):
            self.caps.append(("devfreq " + os.path.basename(folder), os.path.join(folder, "max_freq"), 1))
        self.caps = [c for c in self.caps if read_int(c[1]) is not None]

    @property
    def available(self):
        return bool(self.caps)

    def read(self):
        out = OrderedDict()
        for name, path, scale in self.caps:
            value = read_int(path)
            out[name] = value * scale if value is not None else None
        return out


def _short(folder):
    base = os.path.basename(folder)
    return os.path.basename(os.path.dirname(folder)) if base == "cpufreq" else base


def assess_throttling(zones, thermal_samples, clock_samples, margin_c=MARGIN_C):
    """(throttled: bool or None, findings: [str], method: str) over the run's samples.

    ``thermal_samples`` and ``clock_samples`` are lists of (t, {name: value}).
    None means nothing could be checked.
    """
    findings, checked = [], False
    if zones is not None and zones.available and thermal_samples:
        checked = True
        for name, _, _, _ in zones.zones:
            values = [s[name] for _, s in thermal_samples if s.get(name) is not None]
            trip = zones.passive_trip_c(name)
            if values and trip is not None and max(values) >= trip - margin_c:
                findings.append("{} reached {:.1f} degC, {} its passive trip point {:.1f} degC (where the kernel "
                                "lowers clocks)".format(name, max(values),
                                                        "past" if max(values) >= trip else "within {:.0f} degC of"
                                                        .format(margin_c), trip))
    if clock_samples:
        checked = True
        first = clock_samples[0][1]
        for name in first:
            values = [s.get(name) for _, s in clock_samples if s.get(name) is not None]
            if first[name] is not None and values and min(values) < first[name]:
                findings.append("{} max clock fell from {:.0f} MHz to {:.0f} MHz during the run".format(
                    name, first[name] / 1e6, min(values) / 1e6))
    method = ("a zone within {:.0f} degC of (or past) its passive trip point, or a cpufreq/devfreq max clock "
              "lower than at the start".format(margin_c))
    return (bool(findings) if checked else None), findings, method
