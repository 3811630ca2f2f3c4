"""PNG plots of a profile, with matplotlib (the optional ``plots`` extra), imported here and only here.

    latency.png       one histogram per timed stage (measured frames only)
    power.png         total power (and each rail) over time, the idle baseline
                      and the measured window shaded
    temperature.png   each thermal zone over time
"""
import os

from edge.profiling.profiler import STAGES


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or None when matplotlib is not installed
    (training's report plots use it too)."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def write_plots(out_dir, profiler, sampler, t_origin, report):
    """{"written": [file names], "skipped": reason or None, "notes": [...]}."""
    from edge.profiling.report import PLOTS_HINT
    plt = pyplot()
    if plt is None:
        return {"written": [], "skipped": PLOTS_HINT}
    written, notes = [], []
    stages = [s for s in STAGES if profiler.samples_ms[s]]
    if stages:
        _latency(plt, os.path.join(out_dir, "latency.png"), profiler, stages)
        written.append("latency.png")
    marks = report.get("marks_s", {})
    if sampler.power:
        _power(plt, os.path.join(out_dir, "power.png"), sampler, t_origin, marks)
        written.append("power.png")
    else:
        notes.append("power.png not drawn: no power samples")
    if sampler.thermal:
        _temperature(plt, os.path.join(out_dir, "temperature.png"), sampler, t_origin, marks)
        written.append("temperature.png")
    else:
        notes.append("temperature.png not drawn: no temperature samples")
    return {"written": written, "skipped": None, "notes": notes}


def _latency(plt, path, profiler, stages):
    cols = 3
    rows = (len(stages) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, stage in zip(axes.flat, stages):
        values = profiler.samples_ms[stage]
        ax.hist(values, bins=min(40, max(5, len(values) // 3)), color="#3b6ea8")
        ax.set_title("{} (n={}, p50 {:.2f} ms)".format(stage, len(values), sorted(values)[len(values) // 2]),
                     fontsize=9)
        ax.set_xlabel("ms", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(stages):]:
        ax.axis("off")
    fig.suptitle("Latency per stage, measured frames (warm-up excluded)", fontsize=10)
    _save(plt, fig, path)


def _save(plt, fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _shade(ax, marks):
    if "idle" in marks:
        ax.axvspan(marks["idle"][0], marks["idle"][1], color="#bbbbbb", alpha=0.35, label="idle baseline")
    if "window" in marks:
        ax.axvspan(marks["window"][0], marks["window"][1], color="#f2c14e", alpha=0.25, label="measured window")


def _power(plt, path, sampler, t_origin, marks):
    fig, ax = plt.subplots(figsize=(9, 4))
    ts = [t - t_origin for t, _, _ in sampler.power]
    ax.plot(ts, [mw for _, mw, _ in sampler.power], color="black", linewidth=1.4, label="total")
    rails = []
    for _, _, r in sampler.power:
        rails.extend(k for k in r if k not in rails)
    for rail in rails:
        ax.plot(ts, [r.get(rail) for _, _, r in sampler.power], linewidth=0.8, label=rail)
    _shade(ax, marks)
    ax.set_xlabel("s since the profile started")
    ax.set_ylabel("mW")
    ax.set_title("Power")
    ax.legend(fontsize=7, loc="upper left")
    _save(plt, fig, path)


def _temperature(plt, path, sampler, t_origin, marks):
    fig, ax = plt.subplots(figsize=(9, 4))
    zones = []
    for _, temps in sampler.thermal:
        zones.extend(k for k in temps if k not in zones)
    for zone in zones:
        points = [(t - t_origin, temps.get(zone)) for t, temps in sampler.thermal if temps.get(zone) is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], linewidth=1, marker=".", label=zone)
    _shade(ax, marks)
    ax.set_xlabel("s since the profile started")
    ax.set_ylabel("degC")
    ax.set_title("Temperature")
    ax.legend(fontsize=7, loc="upper left")
    _save(plt, fig, path)
