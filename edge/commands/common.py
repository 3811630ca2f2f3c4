"""Options and exit codes shared by the verbs. Standard library only."""
import os
import sys

# Exit codes (documented in the README and in `retina-edge --help`)
EXIT_OK = 0            # every input screened (ok, or a deliberate skipped / ungradable verdict)
EXIT_SET_ASIDE = 1     # the run finished, but some inputs were set aside with an error
EXIT_USAGE = 2         # usage or setup error: bad option, bundle, input, output, backend; nothing screened
EXIT_FAILED = 3        # the run stopped part way: an output (ledger, results file) or the input failed
EXIT_SIGINT = 130      # stopped by Ctrl-C (SIGINT) after the frame in flight, outputs flushed
EXIT_SIGPIPE = 141     # stdout was closed (`| head`): stopped quietly after the frames in flight
EXIT_SIGTERM = 143     # stopped by SIGTERM (e.g. systemd, docker stop), outputs flushed

EXIT_CODES_HELP = """exit codes:
  0    every input screened (ok, skipped or ungradable)
  1    finished, but some inputs were set aside with an error (see the error column)
  2    usage or setup error (option, bundle, input, output, backend): nothing screened
  3    stopped part way because an output (ledger, results file: disk full?) or the input failed;
       the message names it; results before it are kept
  130  stopped by Ctrl-C, 143 stopped by SIGTERM: partial results kept and the summary written
  141  stdout closed (e.g. `| head`): stopped quietly, results kept in the ledger and files
"""


def add_model_option(p, several=False):
    if several:  # edge.commands.bundles reads the values
        p.add_argument("--model", metavar="[NAME=]BUNDLE", action="append", default=None,
                       help="model bundle folder, or its bundle.json / model.onnx, or a folder of bundle folders "
                            "(default: the shipped bundle); repeat for several bundles, one per modality (fundus, "
                            "oct): each image goes to the bundle of its modality (DICOM Modality, else a guess "
                            "from the pixels); NAME= names it in outputs and the ledger (default: its manifest name)")
        return
    p.add_argument("--model", metavar="BUNDLE", default=None,
                   help="model bundle folder, or its bundle.json / model.onnx (default: the shipped bundle)")


def add_backend_options(p, default_backend="auto"):
    from_choices = ("auto", "tensorrt", "onnxruntime")
    p.add_argument("--backend", default=default_backend, choices=from_choices,
                   help="inference backend: auto = TensorRT where it imports and a GPU is present, else "
                        "ONNX Runtime (default %(default)s)")
    p.add_argument("--precision", default="best", choices=("fp32", "fp16", "int8", "best"),
                   help="network precision; with ONNX Runtime int8/fp16 run the bundle's INT8 Q/DQ and FP16 "
                        "variants, best = fp32; with TensorRT best = INT8 Q/DQ where the GPU has fast INT8, else "
                        "FP16 where it has fast FP16 (default %(default)s)")
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="CPU threads for ONNX Runtime (default 0: its own choice)")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="engine, timing and calibration caches (default $RETINA_EDGE_HOME or ~/.retina-edge)")
    p.add_argument("--batch", type=int, default=1, metavar="N",
                   help="most images per network call: the network takes those already decoded, up to N, and "
                        "never waits to fill a batch; TensorRT builds its optimisation profile up to N (default 1)")
    p.add_argument("--workspace", type=int, default=None, metavar="MB",
                   help="TensorRT builder workspace in MB (default: TensorRT's own from 8.4; before, where that "
                        "is 0, 256 on a Nano and 1024 elsewhere; part of the engine's cache key)")
    p.add_argument("--calibration", default=None, metavar="DIR",
                   help="TensorRT < 10 without an INT8 Q/DQ variant: images to calibrate --precision int8 with "
                        "(its calibration cache is reused afterwards)")
    p.add_argument("--force-int8", action="store_true",
                   help="build INT8 even on a GPU without fast INT8 (the Nano), where FP16 is built otherwise")


def add_input_options(p):
    """jetson-inference's input options; they override the URI's query options."""
    p.add_argument("--input-width", type=int, default=None, metavar="PX", help="camera/stream capture width")
    p.add_argument("--input-height", type=int, default=None, metavar="PX", help="camera/stream capture height")
    p.add_argument("--input-codec", default=None, metavar="CODEC", help="stream codec: h264, h265, mjpeg, ...")
    p.add_argument("--input-loop", type=int, default=None, metavar="N",
                   help="loop a video or image folder N times (-1 = forever)")


def input_options(args):
    """Input options given on the command line, as the source registry takes them (width, height, codec, loop)."""
    pairs = (("width", args.input_width), ("height", args.input_height), ("codec", args.input_codec),
             ("loop", args.input_loop))
    return dict((k, v) for k, v in pairs if v is not None)


def backend_options(args):
    """The backend keyword options from parsed ``args``."""
    return {"precision": args.precision, "threads": args.threads, "cache_dir": args.cache_dir,
            "batch": getattr(args, "batch", 1) or 1, "workspace_mb": getattr(args, "workspace", None),
            "calibration": getattr(args, "calibration", None), "force_int8": getattr(args, "force_int8", False)}


def bundle_dir(model):
    """--model may name the bundle folder or a file inside it (bundle.json, model.onnx)."""
    from models.bundle import default_bundle_dir
    if not model:
        return default_bundle_dir()
    return os.path.dirname(os.path.abspath(model)) if os.path.isfile(model) else model


def fail(verb, message, code=EXIT_USAGE, stream=None):
    """Print one error line naming the verb; return ``code``."""
    (stream or sys.stderr).write("retina-edge {}: error: {}\n".format(verb, message))
    return code
