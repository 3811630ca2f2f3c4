"""What ``retina-edge profile`` leaves behind: report.json, raw samples as CSV, plots, a printed summary.

    report.json   everything: versions, machine, backend, stage summary,
                  throughput, power/energy/thermal (or "not available" and why)
    frames.csv    per-frame stage times (ms), warm-up frames marked
    power.csv     power samples: time, total mW, each rail's mW
    thermal.csv   temperature samples: time, each zone's degC
    clocks.csv    clock-cap samples: time, each cap's MHz
    *.png         latency histograms, power and temperature over time (with the
                  ``plots`` extra: pip install '.[plots]')

Times in the CSV files are seconds from the start of the profile.
"""
import csv
import io
import json
import os
from collections import OrderedDict

from edge.profiling.profiler import STAGES, Profiler

PLOTS_HINT = ("plots skipped: matplotlib is not installed (pip install matplotlib, or the plots extra: "
              "pip install '.[plots]' in the repository)")


class RecordingProfiler(Profiler):
    """A Profiler that also keeps every frame's stage times and when it finished, for frames.csv."""

    def __init__(self, clock, warmup=0):
        super(RecordingProfiler, self).__init__(clock=clock, warmup=warmup)
        self.rows = []  # (frame number, warm-up?, t, {stage: ms})

    def add_frame(self, times_ms):
        super(RecordingProfiler, self).add_frame(times_ms)
        self.rows.append((self.seen, self.seen <= self.warmup, self.clock(), dict(times_ms)))

    def network_images_per_s(self):
        """Images per second of the network alone: measured frames / the sum of their network times."""
        network = self.samples_ms["network"]
        return len(network) / (sum(network) / 1000.0) if network and sum(network) > 0 else 0.0


def write_outputs(out_dir, report, profiler, sampler, t_origin, make_plots=True):
    """Write every file into ``out_dir``; returns report["files"] (name -> path) after adding them."""
    files = OrderedDict()
    files["frames.csv"] = _write_frames(out_dir, profiler, t_origin)
    if sampler.power:
        files["power.csv"] = _write_series(out_dir, "power.csv", "total_mw",
                                           [(t, mw, rails) for t, mw, rails in sampler.power], t_origin)
    if sampler.thermal:
        files["thermal.csv"] = _write_series(out_dir, "thermal.csv", None,
                                             [(t, None, temps) for t, temps in sampler.thermal], t_origin)
    if sampler.clocks:
        files["clocks.csv"] = _write_series(out_dir, "clocks.csv", None, [
            (t, None, dict((k, v / 1e6 if v is not None else None) for k, v in caps.items()))
            for t, caps in sampler.clocks], t_origin)
    if make_plots:
        from edge.profiling.plots import write_plots
        report["plots"] = write_plots(out_dir, profiler, sampler, t_origin, report)
    else:
        report["plots"] = {"written": [], "skipped": "plots turned off (--no-plots)"}
    for name in report["plots"]["written"]:
        files[name] = os.path.join(out_dir, name)
    files["report.json"] = os.path.join(out_dir, "report.json")
    report["files"] = OrderedDict((k, os.path.basename(v)) for k, v in files.items())
    with io.open(files["report.json"], "w", encoding="utf-8") as f:
        f.write(json.dumps(report, indent=2, default=_jsonable, allow_nan=False) + "\n")
    return files


def _jsonable(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)


def _write_frames(out_dir, profiler, t_origin):
    path = os.path.join(out_dir, "frames.csv")
    with io.open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["frame", "warmup", "t_s"] + ["{}_ms".format(s) for s in STAGES])
        for n, warm, t, times in profiler.rows:
            w.writerow([n, int(warm), "{:.4f}".format(t - t_origin)]
                       + [_num(times.get(s), "{:.3f}") for s in STAGES])
    return path


def _write_series(out_dir, name, total_column, rows, t_origin):
    """rows: (t, total or None, {column: value}); columns are the union, in first-seen order."""
    columns = []
    for _, _, values in rows:
        for key in values:
            if key not in columns:
                columns.append(key)
    path = os.path.join(out_dir, name)
    with io.open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["t_s"] + ([total_column] if total_column else []) + columns)
        for t, total, values in rows:
            w.writerow(["{:.4f}".format(t - t_origin)] + ([_num(total, "{:.1f}")] if total_column else [])
                       + [_num(values.get(c), "{:.3f}") for c in columns])
    return path


def _num(value, spec):
    return "" if value is None else spec.format(value)


def summary_lines(report):
    """The printed summary, one idea per line."""
    run, tp = report["run"], report["throughput"]
    counts = run["statuses"]
    lines = ["{} image(s) measured after {} warm-up; of all {}: {} ok, {} error(s){}{}".format(
        run["frames_measured"], run["warmup_frames"], sum(v for v in counts.values()), counts.get("ok", 0),
        counts.get("error", 0), "".join(", {} {}".format(counts[k], k) for k in ("skipped", "ungradable")
                                        if counts.get(k)),
        "; stopped by {}".format(run["stopped_by"]) if run.get("stopped_by") else "")]
    lines.append(_row("throughput", "{:.1f} images/s end to end, {:.1f} images/s network only".format(
        tp["images_per_s"], tp["network_images_per_s"])))
    lines.append("")
    lines.append("{:<15} {:>6} {:>9} {:>9} {:>9} {:>9}".format("stage", "n", "mean ms", "p50 ms", "p90 ms",
                                                               "p99 ms"))
    for name, s in report["stages"].items():
        lines.append("{:<15} {:>6d} {:>9.2f} {:>9.2f} {:>9.2f} {:>9.2f}".format(
            name, s["n"], s["mean_ms"], s["p50_ms"], s["p90_ms"], s["p99_ms"]))
    lines.append("")
    lines.extend(_power_lines(report["power"]))
    lines.extend(_thermal_lines(report["thermal"]))
    for key in ("nvpmodel", "jetson_clocks"):
        lines.append(_row(key, _board_line(key, report[key])))
    plots = report.get("plots", {})
    if plots.get("skipped"):
        lines.append(plots["skipped"])
    return lines


def _row(label, text):
    return "{:<13} {}".format(label, text)


def _power_lines(power):
    if not power["available"]:
        return [_row("power", "not available:")] + [_row("", "- " + reason) for reason in power["tried"]]
    e = power["energy"]
    lines = [_row("power", "{}: {}; {} samples every {:.0f} ms{}".format(
        power["kind"], ", ".join(power["rails"]), power["samples"], power["interval_s"] * 1000,
        ", {} failed reads".format(power["read_errors"]) if power["read_errors"] else "")),
        _row("", "total = " + power["total_rule"]), _row("", "measures " + power["scope"])]
    if not e["available"]:
        return lines + [_row("energy", "not available: " + e["reason"])]
    idle = ("idle {:.0f} mW over {:.1f} s, ".format(e["idle_power_mw"], e["idle_s"])
            if e.get("idle_power_mw") is not None else "")
    lines.append(_row("", "{}{:.0f} mW while screening".format(idle, e["mean_power_mw"])))
    net = ("; {:.1f} mJ net of idle".format(e["net_energy_per_image_mj"])
           if e.get("net_energy_per_image_mj") is not None else "; net of idle: " + e.get("idle_reason", ""))
    lines.append(_row("energy", "{:.1f} mJ per image{} ({:.2f} J over {:.2f} s, {} images)".format(
        e["energy_per_image_mj"], net, e["energy_mj"] / 1000.0, e["window_s"], e["images"])))
    return lines


def _thermal_lines(thermal):
    if not thermal["available"]:
        lines = [_row("thermal", "not available: " + thermal["reason"])]
    else:
        lines = [_row("thermal" if i == 0 else "", "{} {:.1f} -> {:.1f} degC (max {:.1f})".format(
            n, z["start_c"], z["end_c"], z["max_c"])) for i, (n, z) in enumerate(thermal["zones"].items())]
    t = thermal["throttling"]
    if t["detected"] is None:
        lines.append(_row("throttling", "not checked (no thermal zones or clock caps to read)"))
    elif t["detected"]:
        lines.extend(_row("throttling" if i == 0 else "", f) for i, f in enumerate(t["findings"]))
    else:
        lines.append(_row("throttling", "none seen (looked for {})".format(t["method"])))
    return lines


def _board_line(key, info):
    if not info.get("available"):
        return "not available: " + info.get("reason", "")
    if key == "nvpmodel":
        return "{} (mode {})".format(info["mode"], info["id"])
    return "active (clocks pinned at their maximum)" if info["active"] else "not active (clocks scale with load)"


def power_section(meter, tried, sampler, energy):
    """report["power"]: the meter, its scope, sample counts and the energy figures; or why there are none."""
    if meter is None:
        return OrderedDict([("available", False), ("tried", tried),
                            ("reason", "; ".join(tried) or "no power meter")])
    return OrderedDict([("available", True), ("meter", meter.describe()), ("kind", meter.name),
                        ("rails", [r[0] for r in meter.rails]),
                        ("scope", meter.scope), ("total_rule", meter.total_rule), ("tried", tried),
                        ("interval_s", max(sampler.interval_s, meter.min_interval_s)),
                        ("samples", len(sampler.power)), ("read_errors", sampler.read_errors),
                        ("last_error", sampler.last_error or None), ("energy", energy)])


def thermal_section(zones, sampler, window, extra_findings=()):
    """report["thermal"]: per zone start/max/end over the measured window, trip points, throttling."""
    from edge.profiling.thermal import assess_throttling
    t0, t1 = window
    in_window = [(t, s) for t, s in sampler.thermal if t0 <= t <= t1] or sampler.thermal
    out = OrderedDict([("available", bool(sampler.thermal)),
                       ("reason", zones.reason if not sampler.thermal else None), ("zones", OrderedDict())])
    names = []
    for _, temps in in_window:
        names.extend(k for k in temps if k not in names)
    trips = zones.trips() if zones.available else {}
    for name in names:
        values = [s[name] for _, s in in_window if s.get(name) is not None]
        if values:
            out["zones"][name] = OrderedDict([("start_c", values[0]), ("max_c", max(values)),
                                              ("end_c", values[-1]), ("trips", trips.get(name, []))])
    clocks = [(t, s) for t, s in sampler.clocks if t0 <= t <= t1] or sampler.clocks
    detected, findings, method = assess_throttling(zones, in_window, clocks)
    if extra_findings:  # e.g. clock slowdown reasons NVML reported
        detected, findings = True, list(findings) + list(extra_findings)
    out["clock_caps_mhz"] = OrderedDict((k, v / 1e6 if v is not None else None)
                                        for k, v in (clocks[0][1].items() if clocks else []))
    out["throttling"] = OrderedDict([("detected", detected), ("findings", findings), ("method", method)])
    return out
