"""retina-edge run: screen images from a URI with a bundle; build, run, report."""
import os
import signal
import sqlite3
import sys

from edge.commands.common import (EXIT_CODES_HELP, EXIT_OK, EXIT_SET_ASIDE, EXIT_SIGINT, EXIT_SIGTERM,
                                  add_backend_options, add_input_options, add_model_option, backend_options,
                                  bundle_dir, fail, input_options)

HELP = "screen an image, a folder, or a stream of images"
DESCRIPTION = ("Screen INPUT and print one line per image, then images/s and per-stage latency. Every result "
               "is committed to the ledger as it is made.")
EXAMPLES = """examples:
  retina-edge run samples/fundus                      screen a folder with the shipped model
  retina-edge run scan.jpg --model bundles/fundus4    one image, another bundle
  retina-edge run /data/clinic --results out.csv      also write a CSV, one row per file
  retina-edge run /data/clinic -o out.jsonl -o null:// --backend onnxruntime --precision int8
  retina-edge run /data/export --watch --quarantine /data/bad    screen files as they arrive, until Ctrl-C
  retina-edge run csi://0 -o display://0 -o annotated/           a CSI camera, shown and saved annotated

""" + EXIT_CODES_HELP


def add_arguments(p):
    p.add_argument("input", metavar="INPUT", help="image file, folder, or stream URI")
    p.add_argument("--watch", action="store_true",
                   help="keep watching the INPUT folder for new files (same as watch://INPUT)")
    add_model_option(p)
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
    p.add_argument("--headless", action="store_true", help="never open a display window")
    p.add_argument("--quiet", action="store_true", help="print only problems and the summary")


class Session(object):
    """What `run` builds before screening, and closes after it, whatever happens."""

    def __init__(self):
        self.bundle = self.source = self.backend = self.ledger = self.run_id = None
        self.outputs = []
        self.checks = []
        self.ledger_path = None
        self.backend_reason = ""

    def close(self):
        for output in self.outputs:
            output.close()
        for thing in (self.source, self.backend):
            if thing is not None:
                thing.close()


def build(args, session, log):
    """Open the bundle, the source, the backend, the ledger and the outputs; raise SetupError naming the part."""
    from edge.backends import BackendError, choose_backend, create_backend
    from edge.checks import default_checks
    from edge.home import ledger_path
    from edge.io.outputs import ConsoleOutput, LedgerOutput, OutputDisabled, OutputError, open_output
    from edge.io.sources import SourceError, open_source
    from edge.ledger import Ledger
    from models.bundle import BundleError, load_bundle

    try:
        session.bundle = load_bundle(bundle_dir(args.model))
        session.source = open_source(input_uri(args), input_options(args))
        name, session.backend_reason = choose_backend(args.backend)
        session.backend = create_backend(name, session.bundle, log=log, **backend_options(args))
    except (BundleError, SourceError, BackendError) as exc:
        raise SetupError(str(exc))
    uris = ([args.results] if args.results else []) + list(args.output)
    output_options = {"headless": args.headless, "root": getattr(session.source, "root", None),
                      "roi": session.bundle.manifest["preprocess"].get("roi")}
    for uri in uris:
        try:
            session.outputs.append(open_output(uri, session.bundle.labels, output_options))
        except OutputDisabled as exc:
            log(str(exc))
        except OutputError as exc:
            raise SetupError("results output {}".format(exc))
    session.checks = default_checks(session.bundle)
    session.ledger_path = args.ledger or ledger_path()
    try:
        session.ledger = Ledger(session.ledger_path)
        session.run_id = session.ledger.start_run(os.path.abspath(args.input) if os.path.exists(args.input)
                                                  else args.input, session.bundle, session.backend.describe())
    except (OSError, sqlite3.Error) as exc:
        raise SetupError("cannot open the ledger {}: {}".format(session.ledger_path, exc))
    session.outputs.insert(0, LedgerOutput(session.ledger, session.run_id))
    _station_wiring(args, session)
    session.outputs.append(ConsoleOutput(errors_only=args.quiet))


def _station_wiring(args, session):
    """A watched folder remembers through the ledger and skips the folders written into; the quarantine
    comes after the ledger and the other outputs (they record where the file was when screened)."""
    source = session.source
    if hasattr(source, "attach_ledger"):
        source.attach_ledger(session.ledger)
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


def input_uri(args):
    """INPUT, or watch://INPUT with --watch."""
    if args.watch and "://" not in args.input:
        return "watch://" + args.input
    return args.input


def main(args):
    session = Session()
    out = sys.stdout
    try:
        build(args, session, log=lambda line: out.write(line + "\n"))
    except SetupError as exc:
        session.close()
        return fail("run", exc)
    from edge.pipeline import Pipeline
    bundle, backend, source = session.bundle, session.backend, session.source
    out.write("model {} ({}), backend {}, input {}\n".format(
        bundle.manifest["name"], bundle.root, backend.describe(), source.describe()))
    if session.backend_reason != "asked for":
        out.write(session.backend_reason + "\n")
    pipeline = Pipeline(bundle, backend, session.outputs, checks=session.checks)
    stopped_by = _stop_on_signals(pipeline, source)
    stats = None
    try:
        stats = pipeline.run(source)
    finally:
        report = _report(pipeline, stats, stopped_by)
        try:
            session.ledger.finish_run(session.run_id, report)
        finally:
            session.ledger.close()
            session.close()
        _print_report(out, pipeline, stats, session, stopped_by)
    if stopped_by:
        return EXIT_SIGINT if stopped_by[0] == signal.SIGINT else EXIT_SIGTERM
    return EXIT_SET_ASIDE if stats.counts["error"] else EXIT_OK


def _stop_on_signals(pipeline, source):
    """SIGINT/SIGTERM stop the run after the frame in flight; a second Ctrl-C stops at once.
    The source is told too: a watched folder or a camera would otherwise wait for its next frame."""
    stopped_by = []

    def handler(signum, _frame):
        if stopped_by and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stopped_by.append(signum)
        pipeline.stop()
        getattr(source, "stop", lambda: None)()
        sys.stderr.write("\nstopping after the image in flight (Ctrl-C again to abort)\n")
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stopped_by


def _report(pipeline, stats, stopped_by):
    prof = pipeline.profiler
    counts = stats.as_dict() if stats is not None else {"interrupted": True}
    counts.update(images=counts.get("frames", prof.frames), errors=counts.get("error", 0),
                  images_per_s=prof.images_per_s(), stages=prof.summary(),
                  stopped_by=signal.Signals(stopped_by[0]).name if stopped_by else None)
    return counts


def _print_report(out, pipeline, stats, session, stopped_by):
    prof = pipeline.profiler
    if stats is not None:
        c = stats.counts
        out.write("\n{} image(s), {} ok, {} error(s){}{}; {:.1f} images/s\n".format(
            stats.frames, c["ok"], c["error"],
            ", {} skipped".format(c["skipped"]) if c["skipped"] else "",
            ", {} ungradable".format(c["ungradable"]) if c["ungradable"] else "", prof.images_per_s()))
        if stopped_by:
            out.write("stopped by {} before the input ended; every result above is kept\n".format(
                signal.Signals(stopped_by[0]).name))
        out.write(prof.report() + "\n")
    files = [o.uri.path for o in session.outputs if getattr(o, "uri", None) is not None and o.uri.path
             and o.uri.scheme not in ("display", "null")]
    out.write("ledger: {} (run {})".format(session.ledger_path, session.run_id)
              + ("; results: {}".format(", ".join(files)) if files else "") + "\n")
    out.flush()
