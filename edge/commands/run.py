"""retina-edge run: screen images from a URI with a bundle; build, run, report."""
import os
import signal
import sqlite3
import sys
import time

from edge.commands.common import (EXIT_CODES_HELP, EXIT_FAILED, EXIT_OK, EXIT_SET_ASIDE, EXIT_SIGINT,
                                  EXIT_SIGPIPE, EXIT_SIGTERM, add_backend_options, add_input_options,
                                  add_model_option, backend_options, fail, input_options)
from edge.commands.signals import Interrupted, PipeGuard, SignalStop, silence_stdout

HELP = "screen an image, a folder, or a stream of images"
DESCRIPTION = ("Screen INPUT and print one line per image, then images/s and per-stage latency. Every result "
               "is committed to the ledger as it is made.")
EXAMPLES = """examples:
  retina-edge run samples/fundus                      screen a folder with the shipped model
  retina-edge run scan.jpg --model bundles/fundus4    one image, another bundle
  retina-edge run /data/mixed --model fundus=bundles/fundus4 --model oct=bundles/oct4
                                                      fundus photographs and OCT scans, each to its bundle
  retina-edge run /data/clinic --results out.csv      also write a CSV, one row per file
  retina-edge run /data/clinic -o out.jsonl -o null:// --backend onnxruntime --precision int8
  retina-edge run /data/export --watch --quarantine /data/bad    screen files as they arrive, until Ctrl-C
  retina-edge run csi://0 -o display://0 -o annotated/           a CSI camera, shown and saved annotated
  retina-edge run samples/fundus -o annotated/ --explain          also a heat map per image: annotated/<name>.cam.jpg

""" + EXIT_CODES_HELP


def add_arguments(p):
    p.add_argument("input", metavar="INPUT", help="image file, folder, or stream URI")
    p.add_argument("--watch", action="store_true",
                   help="keep watching the INPUT folder for new files (same as watch://INPUT)")
    add_model_option(p, several=True)
    p.add_argument("--results", metavar="FILE.csv", default=None,
                   help="also write one CSV row per image (appends to a file with the same columns)")
    p.add_argument("-o", "--output", metavar="URI", action="append", default=[],
                   help="an output: FILE.csv, FILE.jsonl, display://0, a folder (DIR/ or images://DIR) for "
                        "annotated images, null:// (repeat for several)")
    p.add_argument("--quarantine", metavar="DIR", default=None,
                   help="move inputs that end as errors into DIR (relative paths kept, nothing overwritten), "
                        "after the ledger has their row; off by default")
    p.add_argument("--ledger", metavar="FILE.db", default=None,
                   help="SQLite results ledger (default: $RETINA_EDGE_HOME/ledger.db or ~/.retina-edge/ledger.db)")
    add_backend_options(p)
    add_input_options(p)
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="decode threads working beside the network; 0 runs every stage on one thread "
                        "(default: the CPU count minus one, at most 4)")
    p.add_argument("--headless", action="store_true", help="never open a display window")
    p.add_argument("--explain", action="store_true",
                   help="also write a class activation map of the label beside each annotated image (-o DIR/ gets "
                        "<name>.cam.jpg); needs a bundle with a feature-map output and the onnxruntime backend")
    p.add_argument("--quiet", action="store_true", help="print only problems and the summary")


class Session(object):
    """What `run` builds before screening, and closes after it, whatever happens."""

    def __init__(self):
        self.bundle = self.source = self.backend = self.ledger = self.run_id = None
        self.outputs = []
        self.lanes = []  # one edge.lanes.Lane per bundle loaded; bundle and backend are the first's
        self.checks = []
        self.ledger_path = None
        self.backend_reason = ""
        self.pipeline = None
        self.explain = False  # --explain and the bundle and backend can make heat maps
        self.stdout_closed = False
        self.started_s = time.monotonic()

    def close_stdout(self):
        """stdout went away (`| head`): stop after the frames in flight, quietly."""
        self.stdout_closed = True
        if self.pipeline is not None:
            self.pipeline.stop()

    def close(self, failed=None):
        """Close every part, whatever each raises; returns a line per part that could not close
        (``failed``, the part that already failed the run, is closed without a second word)."""
        problems = []
        backends = [lane.backend for lane in self.lanes] or [self.backend]
        for thing in self.outputs + [self.source] + backends:
            if thing is None:
                continue
            try:
                thing.close()
            except Exception as exc:  # a full disk raises again on the last flush; the others must still close
                if thing is not failed:
                    describe = getattr(thing, "describe", None)
                    problems.append("closing {}: {}: {}".format(describe() if describe else type(thing).__name__,
                                                                type(exc).__name__, exc))
        return problems


def build(args, session, log):
    """Open the bundle, the source, the backend, the ledger and the outputs; raise SetupError naming the part."""
    from edge.backends import BackendError, choose_backend, create_backend
    from edge.checks import default_checks
    from edge.commands.bundles import ModelSpecError, load_models
    from edge.home import ledger_path
    from edge.io.outputs import ConsoleOutput, LedgerOutput
    from edge.io.sources import SourceError, open_source
    from edge.io.volumes import negatives_of
    from edge.lanes import Lane, RouterError, refuse_ambiguous
    from edge.ledger import Ledger
    from models.bundle import BundleError, load_bundle

    try:
        models = load_models(_model_values(args), load_bundle)
        refuse_ambiguous([(n, b.modality) for n, b in models])
        session.bundle = models[0][1]
        session.source = open_source(input_uri(args), input_options(args))
        name, session.backend_reason = choose_backend(args.backend)
        if getattr(args, "explain", False) and len(models) > 1:
            raise SetupError("--explain works with one --model: heat maps come from one bundle's classifier")
        session.explain = getattr(args, "explain", False) and _explaining_backend(args, session, name, log)
        for n, (model_name, bundle) in enumerate(models):
            backend = session.backend if n == 0 and session.explain else create_backend(
                name, bundle, log=log, **backend_options(args))
            session.lanes.append(Lane(model_name, bundle, backend))
        session.backend = session.lanes[0].backend
    except (BundleError, SourceError, BackendError, ModelSpecError, RouterError) as exc:
        raise SetupError(str(exc))
    uris = ([args.results] if args.results else []) + list(args.output)
    if getattr(args, "explain", False) and not any(_is_images_uri(u) for u in uris):
        raise SetupError("--explain writes <name>.cam.jpg beside annotated images: add an annotated-images "
                         "output, -o DIR/")
    _refuse_writing_into_the_input(session.source, uris, getattr(args, "quarantine", None))
    _open_outputs(session, uris, args, log)
    session.checks = default_checks(session.bundle)
    session.ledger_path = args.ledger or ledger_path()
    try:
        session.ledger = Ledger(session.ledger_path)
        session.run_id = session.ledger.start_run(os.path.abspath(args.input) if os.path.exists(args.input)
                                                  else args.input, [l.bundle for l in session.lanes],
                                                  describe_backends(session.lanes))
    except (OSError, sqlite3.Error) as exc:
        raise SetupError("cannot open the ledger {}: {}".format(session.ledger_path, exc))
    negatives = dict((l.name, negatives_of(l.bundle)) for l in session.lanes)
    session.outputs.insert(0, LedgerOutput(session.ledger, session.run_id, negatives))
    _station_wiring(args, session)
    console = ConsoleOutput(errors_only=args.quiet, show_model=len(session.lanes) > 1, negatives=negatives)
    session.outputs.append(PipeGuard(console, session.close_stdout))


def _model_values(args):
    """--model as a list (`run` repeats it; `profile` reuses build() with one)."""
    model = getattr(args, "model", None)
    return model if isinstance(model, list) else ([model] if model else [])


def _open_outputs(session, uris, args, log):
    """The outputs asked for; a CSV's p_ columns are the union of the bundles' classes, first bundle's first."""
    from edge.io.outputs import OutputDisabled, OutputError, open_output
    from edge.io.volumes import negatives_of
    labels = []
    for lane in session.lanes:
        labels += [l for l in lane.bundle.labels if l not in labels]
    output_options = {"headless": args.headless, "root": getattr(session.source, "root", None),
                      "roi": session.bundle.manifest["preprocess"].get("roi"), "explain": session.explain,
                      "rois": dict((l.name, l.bundle.manifest["preprocess"].get("roi")) for l in session.lanes),
                      "negatives": dict((l.name, negatives_of(l.bundle)) for l in session.lanes)}
    for uri in uris:
        try:
            session.outputs.append(open_output(uri, labels, output_options))
            if getattr(session.outputs[-1], "note", None):
                log(session.outputs[-1].note)
        except OutputDisabled as exc:
            log(str(exc))
        except OutputError as exc:
            raise SetupError("results output {}".format(exc))


def describe_backends(lanes):
    """The backend's description; with several bundles, each named."""
    if len(lanes) == 1:
        return lanes[0].backend.describe()
    return "; ".join("{}: {}".format(l.name, l.backend.describe()) for l in lanes)


def _explaining_backend(args, session, name, log):
    """Set ``session.backend`` to one that keeps the feature maps; False (said in one line) where it cannot."""
    from edge.explain import ExplainUnavailable, explaining_backend
    try:
        session.backend = explaining_backend(name, session.bundle, log=log, **backend_options(args))
    except ExplainUnavailable as exc:
        log(str(exc))
        return False
    return True


def _is_images_uri(text):
    from edge.io.uri import UriError, parse_output
    try:
        return parse_output(text).scheme == "images"
    except UriError:
        return False


def _refuse_writing_into_the_input(source, uris, quarantine):
    """An annotated-images or quarantine folder that IS the input folder would overwrite the inputs with
    annotated copies, or keep renaming files the watch then takes as new: refused before anything is made.
    (One inside the input folder is fine: it is skipped, now and by later runs, through its marker file.)"""
    from edge.io.uri import UriError, parse_output
    root = getattr(source, "root", None)
    if not root:
        return
    folders = [("quarantine", quarantine)] if quarantine else []
    for uri in uris:
        try:
            parsed = parse_output(uri)
        except UriError:
            continue  # open_output reports it
        if parsed.scheme == "images":
            folders.append(("annotated images", parsed.path))
    for what, folder in folders:
        if os.path.abspath(folder) == os.path.abspath(root):
            raise SetupError("the {} folder {} is the input folder: give a folder of its own (a subfolder "
                             "is fine)".format(what, folder))


def _station_wiring(args, session):
    """A watched folder remembers through the ledger and skips the folders written into; the quarantine
    comes after the ledger and the other outputs (they record where the file was when screened)."""
    source = session.source
    if hasattr(source, "attach_ledger"):
        source.attach_ledger(session.ledger)
    if hasattr(source, "beat_to"):  # the container's HEALTHCHECK reads its age (docker/healthcheck.sh)
        from edge.home import heartbeat_path
        source.beat_to(heartbeat_path())
    quarantine = getattr(args, "quarantine", None)  # verbs that reuse build() (profile) have no --quarantine
    written = [getattr(o, "folder", None) for o in session.outputs] + [quarantine]
    for folder in (f for f in written if f and hasattr(source, "exclude")):
        source.exclude(folder)
    if quarantine:
        from edge.io.quarantine import Quarantine
        try:
            session.outputs.append(Quarantine(quarantine, root=getattr(source, "root", None)))
        except (IOError, OSError) as exc:
            raise SetupError("quarantine folder {}: {}".format(quarantine, exc))


class SetupError(RuntimeError):
    pass


def pipeline_options(args):
    """The Pipeline keyword options from parsed ``args`` (the batch comes from the backend)."""
    workers = getattr(args, "workers", None)
    return {"workers": default_workers() if workers is None else max(0, workers)}


def default_workers():
    """One decode thread per CPU core the network leaves: the CPU count minus one, 1 to 4."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def input_uri(args):
    """INPUT, or watch://INPUT with --watch."""
    if args.watch and "://" not in args.input:
        return "watch://" + args.input
    return args.input


def main(args):
    session = Session()
    signals = SignalStop()
    try:
        try:
            build(args, session, log=lambda line: _say(session, line))
        except SetupError as exc:
            session.close()
            return fail("run", exc)
        return screen(args, session, signals)
    except Interrupted as exc:  # before screening began: nothing to keep but the ledger's word of it
        _finish_ledger(session, {"images": 0, "stopped_by": signal.Signals(exc.signum).name})
        session.close()
        sys.stderr.write("\nretina-edge run: stopped by {} before screening began; nothing screened\n".format(
            signal.Signals(exc.signum).name))
        return EXIT_SIGINT if exc.signum == signal.SIGINT else EXIT_SIGTERM
    finally:
        signals.restore()


def screen(args, session, signals):
    """Run the pipeline over the built session; finish the ledger and print the summary whatever happens."""
    from edge.explain import ExplainingPipeline
    from edge.pipeline import Pipeline, PipelineFailed
    bundle, backend, source = session.bundle, session.backend, session.source
    make = ExplainingPipeline if session.explain else Pipeline  # the same, plus each frame's heat map
    pipeline = session.pipeline = make(bundle, backend, session.outputs, lanes=session.lanes,
                                       **pipeline_options(args))
    if len(session.lanes) == 1:
        _say(session, "model {} ({}), backend {}, input {}".format(
            bundle.manifest["name"], bundle.root, backend.describe(), source.describe()))
    else:
        _say(session, "models {}, input {}".format("; ".join("{} = {} {} ({}), backend {}".format(
            l.name, l.modality, l.bundle.manifest["name"], l.bundle.root, l.backend.describe())
            for l in session.lanes), source.describe()))
    if session.backend_reason != "asked for":
        _say(session, session.backend_reason)
    signals.attach(pipeline)
    failure = None
    try:
        if not session.stdout_closed:
            pipeline.run(source)
    except PipelineFailed as exc:
        failure = exc
    except KeyboardInterrupt:  # not from our handler (it aborts the pipeline instead): a Ctrl-C from code
        signals.aborted = True  # that replaced it, e.g. a backend's own; the run still finishes its ledger
    finally:
        signals.finishing()
        report = _report(pipeline, signals, failure, session.stdout_closed)
        problems = [str(failure)] if failure else []
        problems += filter(None, [_finish_ledger(session, report)])
        problems += session.close(failed=failure.part if failure else None)
        _print_report(session, pipeline, signals, report)
    for problem in problems:
        fail("run", problem)
    if problems:
        return EXIT_FAILED
    if signals.signum is not None:
        return EXIT_SIGINT if signals.signum == signal.SIGINT else EXIT_SIGTERM
    if session.stdout_closed:
        return EXIT_SIGPIPE
    return EXIT_SET_ASIDE if pipeline.stats.counts["error"] else EXIT_OK


def _say(session, line):
    """A line on stdout; a closed stdout stops the run quietly rather than raising."""
    if session.stdout_closed:
        return
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        silence_stdout()
        session.close_stdout()


def _finish_ledger(session, report):
    """Record the run's end and close the ledger; returns an error line, or None."""
    if session.ledger is None:
        return None
    try:
        if session.run_id is not None:
            session.ledger.finish_run(session.run_id, report)
        return None
    except (OSError, sqlite3.Error) as exc:
        return "the ledger {} could not record the end of run {}: {}".format(session.ledger_path, session.run_id, exc)
    finally:
        session.ledger.close()


def _report(pipeline, signals, failure, stdout_closed):
    prof = pipeline.profiler
    counts = pipeline.stats.as_dict()
    stopped_by = signals.name or ("SIGPIPE" if stdout_closed else None)
    counts.update(images=counts["frames"], errors=counts["error"], images_per_s=prof.images_per_s(),
                  stages=prof.summary(), stopped_by=stopped_by, aborted=signals.aborted,
                  failure=str(failure) if failure else None)
    counts["interrupted"] = bool(counts["interrupted"] or signals.aborted or failure or stopped_by)
    return counts


def _rate(session, pipeline, report):
    """images/s, except for a watched folder: its run mostly waits for files, so images/s would measure the
    clinic's pace, not the device's; say how long it watched instead (`retina-edge profile` measures speed)."""
    uri = getattr(session.source, "uri", None)
    if uri is None or uri.scheme != "watch":
        return "{:.1f} images/s".format(report["images_per_s"])
    return "watched for {}".format(_duration(time.monotonic() - session.started_s))


def _duration(seconds):
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return "{}h {:02d}m {:02d}s".format(hours, minutes, secs) if hours else "{}m {:02d}s".format(minutes, secs)


def _print_report(session, pipeline, signals, report):
    c = pipeline.stats.counts
    referred = (", {} to refer".format(report["referred"])
                if any(l.bundle.referral is not None for l in session.lanes) else "")
    lines = ["", "{} image(s), {} ok{}, {} error(s){}{}; {}".format(
        report["frames"], c["ok"], referred, c["error"], ", {} skipped".format(c["skipped"]) if c["skipped"] else "",
        ", {} ungradable".format(c["ungradable"]) if c["ungradable"] else "", _rate(session, pipeline, report))]
    if signals.aborted:
        lines.append("aborted by a second Ctrl-C; the results listed above are kept")
    elif report["stopped_by"]:
        lines.append("stopped by {} before the input ended; every result above is kept".format(report["stopped_by"]))
    elif report["failure"]:
        lines.append("stopped early: a part of the run failed (below); every result above is kept")
    if pipeline.profiler.frames:
        lines.append(pipeline.profiler.report())
    files = [o.uri.path for o in session.outputs if getattr(o, "uri", None) is not None and o.uri.path
             and o.uri.scheme not in ("display", "null")]
    lines.append("ledger: {} (run {})".format(os.path.abspath(session.ledger_path), session.run_id)
                 + ("; results: {}".format(", ".join(os.path.abspath(f) for f in files)) if files else ""))
    for line in lines:
        _say(session, line)
