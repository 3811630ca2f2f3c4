"""retina-edge selftest: the platform, the bundle, each runtime and precision, the preprocessing; PASS/FAIL per check."""
import json
import sys

from edge import home
from edge.commands.common import EXIT_OK, add_model_option, bundle_dir

EXIT_FAILED = 1

HELP = "check this device: versions, bundle, ONNX Runtime, TensorRT, the CUDA kernel"
DESCRIPTION = ("Print the platform (L4T, JetPack, TensorRT, CUDA, cuDNN, pycuda, GPU, nvpmodel) and run each check "
               "on the sample images: one PASS/FAIL/SKIP line per check, exit 1 when any fails. Checks that "
               "need what this machine lacks (TensorRT, a GPU) are SKIPped with the reason.")
EXAMPLES = """examples:
  retina-edge selftest                              the shipped bundle on the shipped samples
  retina-edge selftest --json selftest.json         also write everything as JSON
  retina-edge selftest --model bundles/fundus4 --samples /data/check-images

exit codes: 0 every check passed or was skipped, 1 a check failed, 2 usage error
"""


def _gpu_versions():
    """TensorRT, CUDA runtime, cuDNN and the GPU as the TensorRT backend sees them (never raises)."""
    try:
        from edge.backends.tensorrt import versions
    except ImportError as exc:
        return {"gpu": None, "gpu_error": str(exc)}
    found = versions()
    return dict((k, v) for k, v in found.items() if v is not None or k + "_error" in found)


def add_arguments(p):
    add_model_option(p)
    p.add_argument("--samples", metavar="DIR", default=None,
                   help="images to check with (default: $RETINA_EDGE_SAMPLES, else the repository's "
                        "samples/fundus)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the platform and every check as JSON")
    p.add_argument("--threads", type=int, default=0, metavar="N", help="CPU threads for ONNX Runtime")
    p.add_argument("--cache-dir", default=None, metavar="DIR", help="engine cache (default $RETINA_EDGE_HOME)")
    p.add_argument("--precisions", default="fp32,fp16,best", metavar="LIST",
                   help="TensorRT precisions to build and compare with ONNX Runtime (default %(default)s)")


def main(args):
    from edge import device_info
    from edge.selftest import SelfTest, summary
    out = sys.stdout
    platform = device_info.describe()
    for key, value in _gpu_versions().items():
        if value is not None or key not in platform or platform[key] is None:
            platform[key] = value
    out.write("platform\n")
    for key, value in platform.items():
        if not key.endswith("_error"):
            why = platform.get(key + "_error")
            out.write("  {:<18} {}\n".format(key, value if value is not None else
                                             "not found" + (": " + why if why else "")))
    test = SelfTest(bundle_dir(args.model), args.samples or home.samples_dir(),
                    {"threads": args.threads, "cache_dir": args.cache_dir,
                     "precisions": [p for p in args.precisions.split(",") if p]},
                    log=lambda line: (out.write(line + "\n"), out.flush()))
    out.write("checks\n")
    results = test.run()
    ok, verdict = summary(results)
    out.write(verdict + "\n")
    if args.json:
        report = {"platform": platform, "ok": ok, "checks": [r._asdict() for r in results]}
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, sort_keys=True)
            f.write("\n")
        out.write("wrote {}\n".format(args.json))
    return EXIT_OK if ok else EXIT_FAILED
