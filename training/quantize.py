"""`retina-train quantize`: the INT8 Q/DQ and FP16 variants of a bundle's model, written beside model.onnx.

INT8: static quantization calibrated on TRAINING images of the bundle's own
split through the device's preprocessing, in the form TensorRT's explicit
quantization reads (QDQ, opset 13, int8 symmetric activations and weights,
weights per output channel, zero points 0, float biases); optionally
fine-tuned with fake quantization to match the fp32 logits (training/qat.py).
FP16: the same graph typed float16 inside, float32 in and out, for TensorRT
11's strongly typed networks. Each variant's agreement with fp32 is measured
on the VAL split through ONNX Runtime, as `retina-edge run --precision` runs
it, and recorded in the manifest; the test split only with --report-test.
"""
import os
import shlex
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort

from edge.backends.ort import session_options
from edge.preprocess import normalize
from models.bundle import load_bundle, write_variants
from training import data as datalib, modelcard, onnxgraph

# The shipped recipe, chosen on the val split (README "Precision variants" has the experiment table).
DEFAULTS = {"method": "percentile", "percentile": 99.999, "calibration_images": 256, "keep_fp32": "convs:15,head",
            "finetune_epochs": 0, "finetune_lr": 5e-5, "seed": 0}
METHODS = ("minmax", "entropy", "percentile")
PRECISIONS = ("int8", "fp16")
# how ONNX Runtime's CPU provider evaluates each variant: what an agreement figure does and does not show
RUNTIME_NOTES = {
    "fp32": "",
    "int8": "Q/DQ evaluated in float as written, as TensorRT computes it (session.disable_quant_qdq=1)",
    "fp16": "the CPU provider computes in float32 from the float16 weights: checks the conversion, not float16 "
            "arithmetic",
}


def bundle_samples(bundle, data):
    """The bundle's split with image paths: ``data`` is the image root its split.csv is relative to,
    or a split CSV of its own (path,label,group,split); either must be the split the bundle was trained on."""
    if os.path.isdir(data):
        listing = os.path.join(bundle.root, "split.csv")
        if not os.path.isfile(listing):
            raise ValueError("{}: no split.csv in the bundle; pass the run's split CSV as --data".format(bundle.root))
        samples = [s._replace(path=os.path.join(data, os.path.relpath(s.path, os.path.abspath(bundle.root))))
                   for s in datalib.read_manifest(listing)]
    else:
        samples = datalib.read_manifest(data)
    if not all(s.split for s in samples):
        raise ValueError("{}: every row needs a split (train/val/test)".format(data))
    expected = bundle.manifest["provenance"]["data"].get("split_sha256")
    if expected and datalib.split_sha256(samples) != expected:
        raise ValueError("{}: not the split this bundle was trained on (split_sha256 differs from the manifest's "
                         "provenance.data.split_sha256 {}...)".format(data, expected[:16]))
    missing = [s.path for s in samples if not os.path.isfile(s.path)]
    if missing:
        raise FileNotFoundError("{}: image missing ({} of {} missing); is --data the image root?".format(
            missing[0], len(missing), len(samples)))
    return samples


def stratified_subset(samples, count, seed=0):
    """``count`` samples taken class by class in turn, each class in a seeded random order."""
    rng = np.random.RandomState(seed)
    by_label = {}
    for s in sorted(samples):
        by_label.setdefault(s.label, []).append(s)
    queues = [[group[i] for i in rng.permutation(len(group))] for _, group in sorted(by_label.items())]
    chosen = []
    while len(chosen) < min(count, len(samples)):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop())
    return sorted(chosen)


class Batches(object):
    """ONNX Runtime's CalibrationDataReader protocol over prepared uint8 images (get_next/rewind)."""

    def __init__(self, images, spec, input_name, batch_size=16):
        self.images, self.spec, self.input_name, self.batch_size, self.at = images, spec, input_name, batch_size, 0

    def get_next(self):
        if self.at >= len(self.images):
            return None
        batch = normalize(np.asarray(self.images[self.at:self.at + self.batch_size]), self.spec)
        self.at += self.batch_size
        return {self.input_name: batch}

    def rewind(self):
        self.at = 0


def calibrate(model_path, images, spec, input_name, method, percentile, work_dir, chunk=32):
    """Activation ranges (onnxruntime TensorsData) from ``images``; histograms use 2048 bins, as TensorRT's."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator
    kind = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[method]
    options = {"symmetric": True, "num_bins": 2048, "num_quantized_bins": 128, "percentile": percentile}
    calibrator = create_calibrator(model_path, None, augmented_model_path=os.path.join(work_dir, "augmented.onnx"),
                                   calibrate_method=kind, extra_options=options)
    for start in range(0, len(images), chunk):  # histograms merge across calls; memory stays one chunk
        calibrator.collect_data(Batches(images[start:start + chunk], spec, input_name))
    return kind, calibrator.compute_data()


def quantize_int8(fp32_model, images, spec, input_name, options, log=print, finetune_images=None):
    """The INT8 Q/DQ model and a record of how it was made; calibrated on ``images``, fine-tuned (if asked)
    on ``finetune_images`` (default: the same images)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data
    shape = [d.dim_value or 1 for d in fp32_model.graph.input[0].type.tensor_type.shape.dim]
    folded = onnxgraph.fold_static_pads(fp32_model, input_name, shape)
    keep = onnxgraph.select_nodes(folded, options["keep_fp32"])
    with tempfile.TemporaryDirectory(prefix="retina-quantize-") as work:
        folded_path, out_path = os.path.join(work, "fp32.onnx"), os.path.join(work, "int8.onnx")
        onnx.save(folded, folded_path)
        kind, ranges = calibrate(folded_path, images, spec, input_name, options["method"], options["percentile"], work)
        cache = os.path.join(work, "ranges.json")
        save_tensors_data(ranges, cache)
        quantize_static(folded_path, out_path, None, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=kind,
                        nodes_to_exclude=keep, calibration_cache_path=cache,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                       "QuantizeBias": False})  # TensorRT takes float biases, no int32 Q/DQ
        model = onnx.load(out_path)
    record = {"format": "QDQ", "activations": "int8, symmetric, per tensor", "weights": "int8, symmetric, per output "
              "channel", "zero_points": 0, "bias": "float32", "keep_fp32": options["keep_fp32"],
              "fp32_nodes": len(keep), "fine_tuning": None}
    if options["finetune_epochs"]:
        from training import qat  # torch: only for fine-tuning
        tune = images if finetune_images is None else finetune_images
        log("fine-tuning the Q/DQ weights to the fp32 logits: {} epoch(s) on {} training images".format(
            options["finetune_epochs"], len(tune)))
        epochs, lr = options["finetune_epochs"], options["finetune_lr"]
        model = qat.finetune(model, folded, input_name, fp32_model.graph.output[0].name, tune, spec,
                             epochs=epochs, lr=lr, seed=options["seed"], log=log)
        record["fine_tuning"] = {"epochs": epochs, "lr": lr, "images": len(tune),
                                 "loss": "mean squared logit difference to fp32 (no labels)"}
    record["nodes"] = onnxgraph.check_explicit_int8(model)
    onnx.checker.check_model(model)
    return model, record


def make_fp16(fp32_model, input_name):
    shape = [d.dim_value or 1 for d in fp32_model.graph.input[0].type.tensor_type.shape.dim]
    return onnxgraph.to_fp16(onnxgraph.fold_static_pads(fp32_model, input_name, shape))


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def logits_of(model, precision, images, spec, input_name, output_name, batch_size=32):
    """Logits through ONNX Runtime's CPU provider, with the session options the device's backend uses."""
    data = model if isinstance(model, str) else model.SerializeToString()
    session = ort.InferenceSession(data, session_options(precision), providers=["CPUExecutionProvider"])
    dtype = np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32
    out = [session.run([output_name], {input_name: normalize(np.asarray(images[i:i + batch_size]), spec)
                                       .astype(dtype)})[0] for i in range(0, len(images), batch_size)]
    return np.concatenate(out).astype(np.float32)


def agreement(reference, variant, targets, split, precision="int8"):
    """How a variant's logits compare with fp32's: the manifest's ``agreement`` record."""
    ref_top, var_top = reference.argmax(1), variant.argmax(1)
    return {"split": split, "images": int(len(targets)),
            "top1_agreement": float(np.mean(ref_top == var_top)),
            "disagreements": int(np.sum(ref_top != var_top)),
            "fp32_accuracy": float(np.mean(ref_top == targets)),
            "accuracy": float(np.mean(var_top == targets)),
            "max_abs_prob_diff": float(np.abs(_softmax(reference) - _softmax(variant)).max()),
            "runtime": "onnxruntime {} CPU; {}".format(ort.__version__, RUNTIME_NOTES.get(precision, ""))}


def quantize_bundle(bundle_dir, data, options=None, precisions=PRECISIONS, report_test=False, cache_dir=None,
                    log=print, command=""):
    """Make the variants of the bundle in ``bundle_dir``, measure them on val and write them into it."""
    options = dict(DEFAULTS, **(options or {}))
    if options["method"] not in METHODS:
        raise ValueError("unknown calibration method {!r}; choose one of {}".format(options["method"], METHODS))
    bundle = load_bundle(bundle_dir)
    samples = data if isinstance(data, list) else bundle_samples(bundle, data)
    spec, labels, input_name = bundle.preprocess, bundle.labels, bundle.input_name
    output_name = bundle.output_names[0]

    def prepared(split):
        chosen = [s for s in samples if s.split == split]
        if not chosen:
            raise ValueError("the split has no {} images (variants are calibrated on train and measured against "
                             "fp32 on val)".format(split))
        return chosen, datalib.prepare_images(chosen, spec, cache_dir, log)
    val, val_images = prepared("val")
    val_targets = np.array([labels.index(s.label) for s in val])
    fp32_model = onnx.load(bundle.onnx_path)
    reference = logits_of(bundle.onnx_path, "fp32", val_images, spec, input_name, output_name)
    test = None
    if report_test:
        test_samples, test_images = prepared("test")
        test = (test_images, np.array([labels.index(s.label) for s in test_samples]),
                logits_of(bundle.onnx_path, "fp32", test_images, spec, input_name, output_name))
    made = {}
    for precision in precisions:
        if precision == "int8":
            train = [s for s in samples if s.split == "train"]
            chosen = stratified_subset(train, options["calibration_images"], options["seed"])
            log("int8: calibrating ({}) on {} of {} training images".format(options["method"], len(chosen), len(train)))
            tune = datalib.prepare_images(train, spec, cache_dir, log) if options["finetune_epochs"] else None
            model, record = quantize_int8(fp32_model, datalib.prepare_images(chosen, spec, cache_dir, log), spec,
                                          input_name, options, log, finetune_images=tune)
            entry = {"kind": "qdq-int8", "opset": onnxgraph.OPSET, "quantization": record,
                     "calibration": {"method": options["method"], "percentile": options["percentile"]
                                     if options["method"] == "percentile" else None,
                                     "images": len(chosen), "split": "train", "seed": options["seed"],
                                     "split_sha256": datalib.split_sha256(samples),
                                     "preprocessing": "edge.preprocess with the bundle's rule",
                                     "tool": "onnxruntime {} quantize_static".format(ort.__version__)}}
        elif precision == "fp16":
            model = make_fp16(fp32_model, input_name)
            entry = {"kind": "fp16", "opset": onnxgraph.OPSET, "io_dtype": "float32",
                     "note": "float16 inside, Cast at the float32 input and output"}
        else:
            raise ValueError("unknown precision {!r}; choose from {}".format(precision, PRECISIONS))
        if command:
            entry["command"] = command
        entry["agreement"] = agreement(reference, logits_of(model, precision, val_images, spec, input_name,
                                                            output_name), val_targets, "val", precision)
        if test is not None:
            entry["agreement_test"] = agreement(test[2], logits_of(model, precision, test[0], spec, input_name,
                                                                   output_name), test[1], "test", precision)
        log(describe(precision, entry))
        made[precision] = (model.SerializeToString(), entry)
    bundle = write_variants(bundle_dir, made)
    modelcard.write(bundle_dir, bundle.manifest)
    return bundle


def describe(precision, entry):
    lines = []
    for key in ("agreement", "agreement_test"):
        a = entry.get(key)
        if a:
            lines.append("{} on {} ({} images): top-1 agreement with fp32 {:.2%} ({} differ), accuracy {:.2%} "
                         "(fp32 {:.2%}), max |delta prob| {:.3f}".format(
                             precision, a["split"], a["images"], a["top1_agreement"], a["disagreements"],
                             a["accuracy"], a["fp32_accuracy"], a["max_abs_prob_diff"]))
    return "\n".join(lines)


def main(args, log=print):
    options = {"method": args.method, "percentile": args.percentile, "calibration_images": args.calibration_images,
               "keep_fp32": args.keep_fp32, "finetune_epochs": args.finetune_epochs, "finetune_lr": args.finetune_lr,
               "seed": args.seed}
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    command = retina_train_command()
    bundle = quantize_bundle(args.bundle, args.data, options, precisions, args.report_test, args.cache_dir or None,
                             log, command)
    for precision in precisions:
        log("wrote {} (sha256 {})".format(bundle.model_path(precision), bundle.variants[precision]["sha256"][:16]))
    return bundle


def retina_train_command():
    """The running verb as `retina-train ...`, recorded in the bundle by the verbs that change or report on it."""
    return " ".join(["retina-train"] + [shlex.quote(a) for a in sys.argv[1:]])


def add_bundle_arguments(p, bundle_help):
    """--bundle and --data, as every verb that works on a bundle and its recorded split takes them."""
    p.add_argument("--bundle", required=True, help=bundle_help)
    p.add_argument("--data", required=True,
                   help="required: image root the bundle's split.csv is relative to (e.g. ../shared/data/fundus4), or the "
                        "run's split CSV")


def add_arguments(p):
    add_bundle_arguments(p, "bundle folder to add the variants to (required; model.onnx is not changed)")
    p.add_argument("--precisions", default="int8,fp16", help="variants to make (default %(default)s)")
    p.add_argument("--method", default=DEFAULTS["method"], choices=METHODS,
                   help="activation calibration (default %(default)s)")
    p.add_argument("--percentile", type=float, default=DEFAULTS["percentile"],
                   help="with --method percentile (default %(default)s)")
    p.add_argument("--calibration-images", type=int, default=DEFAULTS["calibration_images"], metavar="N",
                   help="training images to calibrate on, class-stratified (default %(default)s)")
    p.add_argument("--keep-fp32", default=DEFAULTS["keep_fp32"], metavar="RULES",
                   help="nodes left unquantized: convs:N (the first N convolutions and all before them), head, "
                        "depthwise, or a node-name prefix; comma-separated, '' for none (default %(default)s)")
    p.add_argument("--finetune-epochs", type=int, default=DEFAULTS["finetune_epochs"], metavar="N",
                   help="fine-tune the Q/DQ weights to the fp32 logits for N epochs on the training split (needs "
                        "torch; about 8 min an epoch on 2 CPU cores; on the shipped model 1 epoch lowered "
                        "agreement, so the default is %(default)s)")
    p.add_argument("--finetune-lr", type=float, default=DEFAULTS["finetune_lr"], help="learning rate of the fine-tuning (default %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="calibration subset and fine-tuning seed (default %(default)s)")
    p.add_argument("--report-test", action="store_true",
                   help="also measure and record the test split (once, for the shipped recipe; never tune on it; "
                        "default off)")
    p.add_argument("--cache-dir", default=".cache/prepared", help="prepared-image cache ('' for none; default %(default)s)")
