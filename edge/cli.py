"""retina-edge: screen fundus images on the device with a model bundle."""
import os
import sqlite3
import sys

from edge.cliutil import Parser

EXAMPLES = """examples:
  retina-edge run samples/fundus                      screen a folder with the shipped model
  retina-edge run scan.jpg --model bundles/fundus4    one image, another bundle
  retina-edge run /data/clinic --results out.csv      also write a CSV, one row per file
"""


def default_ledger():
    home = os.environ.get("RETINA_EDGE_HOME") or os.path.join(os.path.expanduser("~"), ".retina-edge")
    return os.path.join(home, "ledger.db")


def build_parser():
    parser = Parser(prog="retina-edge", description="Retinal screening aid on the edge (not a diagnosis).",
                    epilog=EXAMPLES)
    sub = parser.add_subparsers(dest="verb")
    p = sub.add_parser("run", help="screen an image or a folder of images", description=(
        "Screen PATH (an image, or a folder searched recursively) and print one line per image, "
        "then images/s and per-stage latency."), epilog=EXAMPLES, formatter_class=parser.formatter_class)
    p.set_defaults(_parser=p, verb="run")
    p.add_argument("path", metavar="PATH", help="image file or folder")
    p.add_argument("--model", metavar="BUNDLE_DIR", default=None, help="model bundle folder (default: shipped)")
    p.add_argument("--results", metavar="FILE.csv", default=None, help="write per-image results to this CSV")
    p.add_argument("--ledger", metavar="FILE.db", default=None,
                   help="SQLite results ledger (default: $RETINA_EDGE_HOME/ledger.db or ~/.retina-edge/ledger.db)")
    p.add_argument("--backend", default="onnxruntime", help="inference backend (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="print only errors and the summary")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb != "run":
        parser.print_help()
        return 2
    return run(args)


def run(args):
    from edge.backends import BackendError, create_backend
    from edge.ledger import Ledger
    from edge.pipeline import Pipeline
    from edge.preprocess import IMAGE_SUFFIXES
    from edge.sinks import ConsoleSink, CsvSink, LedgerSink
    from edge.sources import SourceError, open_source
    from models.bundle import BundleError, default_bundle_dir, load_bundle

    err = sys.stderr
    try:
        bundle = load_bundle(args.model or default_bundle_dir())
        source = open_source(args.path)
        backend = create_backend(args.backend, bundle)
    except (BundleError, SourceError, BackendError) as exc:
        err.write("retina-edge run: error: {}\n".format(exc))
        return 2
    if len(source) == 0:
        err.write("retina-edge run: error: {}: no image files ({}) found\n".format(
            args.path, ", ".join(s.lstrip(".") for s in IMAGE_SUFFIXES)))
        return 1
    ledger_path = args.ledger or default_ledger()
    try:
        ledger = Ledger(ledger_path)
        run_id = ledger.start_run(os.path.abspath(args.path), bundle, backend.describe())
        sinks = [LedgerSink(ledger, run_id)]
        if args.results:
            sinks.append(CsvSink(args.results, bundle.labels))
    except (OSError, sqlite3.Error) as exc:
        err.write("retina-edge run: error: cannot open the ledger {} or results {}: {}\n".format(
            ledger_path, args.results or "-", exc))
        return 2
    sinks.append(ConsoleSink(errors_only=args.quiet))
    print("model {} ({}), backend {}, {} image file(s) from {}".format(
        bundle.manifest["name"], bundle.root, backend.describe(), len(source), args.path))
    pipeline = Pipeline(bundle, backend, sinks)
    try:
        results = pipeline.run(source)
    finally:
        for sink in sinks:
            sink.close()
    prof = pipeline.profiler
    errors = sum(r.status == "error" for r in results)
    summary = {"images": len(results), "errors": errors, "images_per_s": prof.images_per_s(),
               "stages": prof.summary()}
    ledger.finish_run(run_id, summary)
    ledger.close()
    print("\n{} image(s), {} ok, {} error(s); {:.1f} images/s".format(
        len(results), len(results) - errors, errors, prof.images_per_s()))
    print(prof.report())
    print("ledger: {} (run {})".format(ledger_path, run_id) + (
        "; results: {}".format(args.results) if args.results else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
