"""retina-edge build: build (or find in the cache) the TensorRT engine for a bundle."""
import sys
import time

from edge.commands.common import EXIT_OK, add_backend_options, add_model_option, backend_options, fail

HELP = "build the TensorRT engine for a bundle (done by itself on the first `run --backend tensorrt`)"
DESCRIPTION = ("Build the TensorRT engine for a bundle on this device and keep it in the engine cache, so that "
               "`retina-edge run` starts at once. An engine already cached with the same key (model, TensorRT, "
               "GPU, precision, batch, workspace, calibration) is checked and kept. A first build takes minutes "
               "on a Jetson Nano.")
EXAMPLES = """examples:
  retina-edge build                                   the shipped model, best precision for this GPU
  retina-edge build --precision fp16 --batch 4        FP16, batches of up to 4 images
  retina-edge build --precision int8 --calibration /data/calib    TensorRT < 10, bundle without INT8 variant
  retina-edge build --cache-dir /mnt/ssd/retina-edge  keep engines on another disk
  retina-edge build --model fundus=bundles/fundus4 --model oct=bundles/oct4    one engine per bundle

exit codes: 0 engine ready, 2 it cannot be built here (no TensorRT or GPU, bad bundle, build failed)
"""


def add_arguments(p):
    add_model_option(p, several=True)
    add_backend_options(p, default_backend="tensorrt")


def main(args):
    from edge.backends import availability
    from edge.commands.bundles import ModelSpecError, load_models
    from models.bundle import BundleError, load_bundle

    if args.backend == "onnxruntime":
        return fail("build", "ONNX Runtime needs no engine; `build` makes TensorRT engines (--backend tensorrt)")
    try:
        models = load_models(args.model, load_bundle)
    except (BundleError, ModelSpecError) as exc:
        return fail("build", exc)
    ok, reason = availability("tensorrt")
    if not ok:
        return fail("build", "TensorRT cannot run here: {}".format(reason))
    for name, bundle in models:  # one engine per bundle: the cache key holds the model's sha256
        if len(models) > 1:
            sys.stdout.write("{}:\n".format(name))
        code = build_one(bundle, args)
        if code != EXIT_OK:
            return code
    return EXIT_OK


def build_one(bundle, args):
    from edge.backends import BackendError, create_backend
    out = sys.stdout
    start = time.time()
    try:
        backend = create_backend("tensorrt", bundle, log=lambda line: out.write(line + "\n"),
                                 **backend_options(args))
    except BackendError as exc:
        return fail("build", exc)
    try:
        info = backend.engine_info
        out.write("{}\n".format(backend.describe()))
        out.write("engine: {}\n".format(info.path or "(kept in memory only: the cache folder is not writable)"))
        out.write("{} in {:.1f} s; key:\n".format("built" if info.origin == "built" else "found in the cache",
                                                  time.time() - start))
        for field, value in info.key.items():
            out.write("  {:<20} {}\n".format(field, value))
    finally:
        backend.close()
    return EXIT_OK
