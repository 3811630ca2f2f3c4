"""retina-edge profile: latency per stage, images/s, power and energy per image, thermal state, a report."""
import datetime
import os
import signal
import sys
import time
from argparse import Namespace
from collections import OrderedDict

from edge import home
from edge.commands.common import (EXIT_OK, EXIT_SET_ASIDE, EXIT_SIGINT, EXIT_SIGTERM, add_backend_options,
                                  add_input_options, add_model_option, fail)

HELP = "measure latency per stage, images/s, power and energy per image"
DESCRIPTION = ("Screen --input over and over (looping a folder) until N images or S seconds have been measured "
               "after a warm-up, with a power and temperature sampler running, after an idle baseline. Writes "
               "report.json, per-frame and per-sample CSV files and PNG plots into --out, and prints a summary. "
               "Results go to a ledger inside --out, not to your ledger, unless --ledger names one.")
EXAMPLES = """examples:
  retina-edge profile                                  the shipped model on samples/fundus, 100 images
  retina-edge profile --input /data/clinic --seconds 60 --idle-seconds 10
  retina-edge profile --model bundles/fundus4 --backend tensorrt --precision fp16 --frames 500
  retina-edge profile --input csi://0 --seconds 30     a camera, live

power: the INA3221 on a Jetson (sysfs), else tegrastats, else NVML on a desktop GPU (pip install
nvidia-ml-py); elsewhere the report says "not available" and why. Plots need matplotlib
(pip install '.[plots]' in the repository).
"""



def add_arguments(p):
    from edge.profiling.power import CHOICES
    add_model_option(p)
    p.add_argument("--input", metavar="URI", default=None,
                   help="image file, folder or stream URI, looped as needed (default: $RETINA_EDGE_SAMPLES, else "
                        "the repository's samples/fundus; an installed package has none, so give --input)")
    limit = p.add_mutually_exclusive_group()
    limit.add_argument("--frames", type=int, default=None, metavar="N",
                       help="images to measure after the warm-up (default 100)")
    limit.add_argument("--seconds", type=float, default=None, metavar="S",
                       help="measure for about S seconds after the warm-up instead")
    p.add_argument("--warmup", type=int, default=5, metavar="N",
                   help="images screened first and left out of every figure (default %(default)s)")
    p.add_argument("--idle-seconds", type=float, default=3.0, metavar="S",
                   help="idle baseline measured before the run, model loaded (default %(default)s; 0 = none)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="folder for report.json, CSV files and plots (default profile-YYYYmmdd-HHMMSS)")
    p.add_argument("--power-meter", default="auto", choices=CHOICES,
                   help="auto = INA3221 sysfs, then tegrastats, then NVML (default %(default)s)")
    p.add_argument("--sample-ms", type=float, default=50.0, metavar="MS",
                   help="power sampling interval (default %(default)s; tegrastats 100 at least)")
    p.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    p.add_argument("--ledger", metavar="FILE.db", default=None,
                   help="also record the results in this ledger (default: OUT/ledger.db, private to the profile)")
    p.add_argument("-o", "--output", metavar="URI", action="append", default=[],
                   help="an extra output to include in the timing (FILE.csv, FILE.jsonl, null://)")
    add_backend_options(p)
    add_input_options(p)


def default_input():
    """The sample folder of a source checkout; None when retina-edge was installed without it."""
    samples = home.samples_dir()
    return samples if os.path.isdir(samples) else None


class Limited(object):
    """The source, looped when it ends, until ``warmup + frames`` frames or ``seconds`` after the warm-up.

    Other attributes (done, live, count, describe) are the source's.
    """

    def __init__(self, source, warmup, frames=None, seconds=None, clock=time.monotonic):
        self.source, self.warmup, self.frames, self.seconds, self.clock = source, warmup, frames, seconds, clock
        self.passes = 0

    def __getattr__(self, name):
        return getattr(self.source, name)

    def __iter__(self):
        self.yielded, self.measure_from = 0, None
        while not self._done():
            self.passes += 1
            frames, got = iter(self.source), 0
            while not self._done():  # asked before a frame is read, so none is read and thrown away
                frame = next(frames, _END)
                if frame is _END:
                    break
                got += 1
                self.yielded += 1
                yield frame
            if got == 0 or getattr(self.source, "live", False):
                return  # an empty pass, or a live stream that ended: nothing more will come

    def _done(self):
        if self.seconds is None:
            return self.yielded >= self.warmup + self.frames
        if self.measure_from is None and self.yielded >= self.warmup:
            self.measure_from = self.clock()
        return self.measure_from is not None and self.clock() - self.measure_from >= self.seconds


_END = object()


def run_args(args, out_dir):
    """The namespace ``edge.commands.run.build`` expects, for this profile."""
    fields = dict(vars(args))
    fields.update(input=args.input, watch=False, results=None, output=list(args.output), headless=True,
                  quiet=True, ledger=args.ledger or os.path.join(out_dir, "ledger.db"))
    return Namespace(**fields)


def main(args):
    out = sys.stdout
    args.input = args.input or default_input()
    if args.input is None:
        return fail("profile", "no --input given, and the sample folder {} is not here (an installed package "
                               "does not ship samples/; set {} or give --input FOLDER, FILE or URI)".format(
                                   home.samples_dir(), home.SAMPLES_ENV))
    if args.frames is None and args.seconds is None:
        args.frames = 100
    if (args.frames is not None and args.frames < 1) or (args.seconds is not None and args.seconds <= 0):
        return fail("profile", "--frames must be at least 1 and --seconds more than 0")
    out_dir = args.out or datetime.datetime.now().strftime("profile-%Y%m%d-%H%M%S")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        return fail("profile", "{}: exists and is not empty; give a new --out".format(out_dir))
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        return fail("profile", "cannot create {}: {}".format(out_dir, exc))
    return Profile(args, out_dir, out).run()


class Profile(object):
    """Build, measure the idle baseline, run, write the report; every part closed whatever happens."""

    def __init__(self, args, out_dir, out):
        self.args, self.out_dir, self.out = args, out_dir, out
        self.clock = time.monotonic
        self.stopped_by = []

    def log(self, line):
        self.out.write(line + "\n")
        self.out.flush()

    def run(self):
        from edge.commands.run import Session, SetupError, build
        session = Session()
        try:
            build(run_args(self.args, self.out_dir), session, log=self.log)
        except SetupError as exc:
            session.close()
            return fail("profile", exc)
        sampler = meter = None
        try:
            meter, tried, zones, sampler = self.start_sampler()
            return self.measure(session, meter, tried, zones, sampler)
        finally:
            if sampler is not None:
                sampler.stop()
            if meter is not None:
                meter.close()
            session.ledger.close()
            session.close()

    def start_sampler(self):
        from edge.profiling.power import open_power_meter
        from edge.profiling.sampler import Sampler
        from edge.profiling.sysfs import SysRoot
        from edge.profiling.thermal import ClockCaps, ThermalZones
        self.root = SysRoot()
        meter, tried = open_power_meter(self.args.power_meter, self.root, self.args.sample_ms / 1000.0)
        zones, caps = ThermalZones(self.root), ClockCaps(self.root)
        sampler = Sampler(meter, zones, caps, interval_s=self.args.sample_ms / 1000.0, clock=self.clock)
        self.t_origin = self.clock()
        return meter, tried, zones, sampler.start()

    def measure(self, session, meter, tried, zones, sampler):
        from edge.pipeline import Pipeline
        from edge.profiling.report import RecordingProfiler
        a = self.args
        self.log("profile: model {}, backend {}, input {}".format(
            session.bundle.manifest["name"], session.backend.describe(), session.source.describe()))
        self.log("power meter: {}".format(meter.describe() if meter else "not available (why: at the end)"))
        idle = self.idle_baseline(meter, sampler)
        profiler = RecordingProfiler(clock=self.clock, warmup=a.warmup)
        pipeline = Pipeline(session.bundle, session.backend, session.outputs, profiler=profiler,
                            checks=session.checks)
        source = Limited(session.source, a.warmup, a.frames, a.seconds, clock=self.clock)
        self._stop_on_signals(pipeline)
        limit = "{} image(s)".format(a.frames) if a.frames else "{:g} s".format(a.seconds)
        self.log("measuring {} after {} warm-up image(s); results in {} ...".format(limit, a.warmup, self.out_dir))
        stats = None
        try:
            stats = pipeline.run(source)
        finally:
            sampler.stop()
            report = self.report(session, meter, tried, zones, sampler, profiler, stats, idle, source)
            session.ledger.finish_run(session.run_id, {"profile": os.path.abspath(self.out_dir),
                                                       "images": profiler.frames,
                                                       "images_per_s": profiler.images_per_s()})
            self.write(report, profiler, sampler)
        if self.stopped_by:
            return EXIT_SIGINT if self.stopped_by[0] == signal.SIGINT else EXIT_SIGTERM
        return EXIT_SET_ASIDE if stats.counts["error"] else EXIT_OK

    def idle_baseline(self, meter, sampler):
        """(t0, t1) of a quiet stretch with the model loaded, or None when there is nothing to measure."""
        seconds = self.args.idle_seconds
        if seconds <= 0 or meter is None:
            return None
        self.log("idle baseline: {:g} s, keep the machine quiet ...".format(seconds))
        t0 = self.clock()
        time.sleep(seconds)
        return (t0, self.clock())

    def report(self, session, meter, tried, zones, sampler, profiler, stats, idle, source):
        from edge.profiling import board
        from edge.profiling.report import power_section, thermal_section
        from edge.profiling.sampler import energy_summary
        window = (profiler.started or self.clock(), profiler.finished or self.clock())
        energy = energy_summary(sampler.series(), window, profiler.frames, idle) if meter else None
        r = OrderedDict()
        r["schema"], r["schema_version"] = "retina-edge/profile", 1
        r["created"] = datetime.datetime.now().isoformat(timespec="seconds")
        r["command"] = " ".join(["retina-edge"] + sys.argv[1:])
        r["machine"], r["versions"] = board.machine(self.root), board.versions()
        r["model"] = OrderedDict([("name", session.bundle.manifest["name"]), ("root", session.bundle.root),
                                  ("sha256", session.bundle.manifest["model"]["sha256"])])
        r["backend"] = OrderedDict([("describe", session.backend.describe()), ("chosen", session.backend_reason),
                                    ("batch", getattr(session.backend, "max_batch", None))])
        r["input"] = OrderedDict([("describe", session.source.describe()), ("passes", source.passes),
                                  ("note", "a folder is looped: after the first pass its files come from the page "
                                           "cache, so capture is faster than from a cold disk or a camera")])
        r["run"] = OrderedDict([
            ("frames_measured", profiler.frames), ("warmup_frames", min(profiler.seen, profiler.warmup)),
            ("statuses", dict(stats.counts) if stats is not None else {}),
            ("window_s", window[1] - window[0]),
            ("stopped_by", signal.Signals(self.stopped_by[0]).name if self.stopped_by else None),
            ("ledger", session.ledger_path), ("ledger_run", session.run_id)])
        r["throughput"] = OrderedDict([("images_per_s", profiler.images_per_s()),
                                       ("network_images_per_s", profiler.network_images_per_s())])
        r["stages"] = profiler.summary()
        r["power"] = power_section(meter, tried, sampler, energy)
        reasons = sorted(getattr(meter, "reasons_seen", ()))
        r["thermal"] = thermal_section(zones, sampler, window,
                                       ["NVML reported clock slowdown: " + x for x in reasons])
        r["nvpmodel"], r["jetson_clocks"] = board.nvpmodel(), board.jetson_clocks()
        r["marks_s"] = OrderedDict([("window", [window[0] - self.t_origin, window[1] - self.t_origin])])
        if idle is not None:
            r["marks_s"]["idle"] = [idle[0] - self.t_origin, idle[1] - self.t_origin]
        return r

    def write(self, report, profiler, sampler):
        from edge.profiling.report import summary_lines, write_outputs
        files = write_outputs(self.out_dir, report, profiler, sampler, self.t_origin,
                              make_plots=not self.args.no_plots)
        self.log("")
        for line in summary_lines(report):
            self.log(line)
        self.log("{:<13} {} (with {})".format("report", files["report.json"],
                                              ", ".join(k for k in files if k != "report.json")))

    def _stop_on_signals(self, pipeline):
        """SIGINT/SIGTERM end the measurement after the frame in flight, a second Ctrl-C at once (an event,
        not an exception that could cut the report); the report is still written."""
        def handler(signum, _frame):
            if self.stopped_by and signum == signal.SIGINT:  # the second: abort, still writing the report
                pipeline.abort()
                return
            self.stopped_by.append(signum)
            pipeline.stop()
            sys.stderr.write("\nstopping after the image in flight; the report covers what was measured\n")
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)
