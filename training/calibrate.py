"""`retina-train calibrate`: temperature, a class decision rule and the referral point, chosen on val.

On the bundle's own VAL split, through the device's preprocessing and the fp32
model in ONNX Runtime (as `retina-train quantize` measures its variants):

1. temperature scaling: the one scalar T minimising the NLL, written to
   ``postprocess.temperature``; ECE (top-1, 15 bins) and NLL before and after;
2. the decision rule: per-class offsets on the calibrated logits (a prior
   correction) from a small, penalised grid search (training/calibration.py)
   that lifts one class's recall (default glaucoma) within 1 point of
   argmax's val accuracy;
3. the referral point: refer = not a negative class (default: not normal);
   the largest threshold on P(refer) = 1 - P(normal) (calibrated) whose val
   sensitivity reaches 95 %.

The test split is scored only with --report-test, once, for the record; it
chooses nothing. model.onnx and the variants are not changed.
"""
import numpy as np
import onnxruntime as ort

from edge.postprocess import Rule
from models.bundle import load_bundle, write_postprocess
from training import calibration as cal, data as datalib, modelcard
from training.quantize import add_bundle_arguments, bundle_samples, logits_of, retina_train_command

DEFAULT_NEGATIVE = "normal"
DEFAULT_LIFT = "glaucoma"
DEFAULT_SENSITIVITY = 0.95


def split_images(bundle, samples, split, cache_dir, log):
    chosen = [s for s in samples if s.split == split]
    if not chosen:
        raise ValueError("the split has no {} images (calibration is fitted on val)".format(split))
    unknown = sorted(set(s.label for s in chosen) - set(bundle.labels))
    if unknown:
        raise ValueError("{} split has labels the bundle does not know: {}".format(split, unknown))
    images = datalib.prepare_images(chosen, bundle.preprocess, cache_dir, log)
    return images, np.array([bundle.labels.index(s.label) for s in chosen])


def network(bundle, precision, images):
    return logits_of(bundle.model_path(precision), precision, images, bundle.preprocess, bundle.input_name,
                     bundle.output_names[0])


def variant_agreement(bundle, rule, images, reference, split):
    """How often each precision variant gives fp32's label at the rule, and its referral: the rule moves the
    decision boundary, so its agreement can differ from the variants' recorded argmax agreement."""
    found = {}
    probs = rule.probabilities(reference)
    for precision in sorted(bundle.variants):
        logits = network(bundle, precision, images)
        same_label = rule.decide(logits) == rule.decide(reference)
        entry = {"split": split, "images": int(len(images)), "rule_label_agreement": float(same_label.mean()),
                 "rule_label_disagreements": int((~same_label).sum()),
                 "argmax_agreement": float(np.mean(logits.argmax(1) == reference.argmax(1)))}
        refers = rule.refers(rule.probabilities(logits))
        if refers is not None:
            entry["refer_disagreements"] = int(np.sum(refers != rule.refers(probs)))
        found[precision] = entry
    return found


def _classes(labels, names, option):
    for name in names:
        if name not in labels:
            raise ValueError("{} {!r} is not one of the bundle's labels {}".format(option, name, labels))
    return list(names)


def choose(logits, targets, labels, negative, lift, sensitivity, log=print):
    """Fit T, the offsets and the threshold on (val) logits: (Rule, record)."""
    before = Rule(labels)
    temperature = cal.fit_temperature(logits, targets)
    offsets, search = cal.choose_offsets(logits, targets, Rule(labels, temperature), negative[0], lift)
    unreferred = Rule(labels, temperature, offsets, negative)
    scores = unreferred.refer_scores(unreferred.probabilities(logits))
    positive = ~np.isin(targets, unreferred.negative)
    threshold, rests_on = cal.choose_threshold(scores, positive, sensitivity)
    rule = Rule(labels, temperature, offsets, negative, threshold)
    figures = cal.score(logits, targets, rule)
    refer = rule.refers(rule.probabilities(logits))
    record = {
        "temperature": {"fitted": temperature, "objective": "NLL on val (golden-section search on log T)",
                        "before": {"temperature": 1.0, "ece": cal.ece(before.probabilities(logits), targets),
                                   "nll": cal.nll(logits, targets)},
                        "after": {"ece": figures["ece"], "nll": figures["nll"]}},
        "decision": dict(search, offsets=offsets),
        "referral": {"target_sensitivity": sensitivity, "referable_images": rests_on,
                     "bootstrap": cal.bootstrap_interval(refer, positive)},
        "val": figures,
    }
    log(describe("val", figures, record))
    return rule, record


def _pct(x):
    return "{:.1%}".format(x)


def describe(split, f, record=None):
    lines = []
    if record:
        t = record["temperature"]
        lines.append("temperature {:.4f} (NLL on val): ECE {} -> {}, NLL {:.4f} -> {:.4f} on val".format(
            t["fitted"], _pct(t["before"]["ece"]), _pct(t["after"]["ece"]), t["before"]["nll"], t["after"]["nll"]))
        lines.append("offsets {} ({})".format(record["decision"]["offsets"], record["decision"]["objective"]))
    else:
        lines.append("{}: ECE {} -> {}, NLL {:.4f} -> {:.4f} at the fitted temperature".format(
            split, _pct(f["uncalibrated"]["ece"]), _pct(f["ece"]), f["uncalibrated"]["nll"], f["nll"]))
    a, r = f["argmax"], f["rule"]
    lines.append("{} ({} images): accuracy {} -> {} at the rule, balanced {} -> {}, recall {}".format(
        split, f["images"], _pct(a["accuracy"]), _pct(r["accuracy"]), _pct(a["balanced_accuracy"]),
        _pct(r["balanced_accuracy"]), ", ".join("{} {} -> {}".format(k, _pct(a["recall"][k]), _pct(v))
                                                 for k, v in r["recall"].items())))
    ref = f.get("referral")
    if ref:
        text = "{}: refer at P(refer) >= {:.4f}: sensitivity {} ({} of {} referable missed), specificity {} " \
               "({} not referable)".format(split, ref["threshold"], _pct(ref["sensitivity"]), ref["missed"],
                                           ref["referable"], _pct(ref["specificity"]), ref["not_referable"])
        if record:
            b = record["referral"]["bootstrap"]
            text += "; bootstrap 95 %: sensitivity {}-{}, specificity {}-{}".format(
                *[_pct(x) for x in b["sensitivity_95"] + b["specificity_95"]])
        lines.append(text)
    return "\n".join(lines)


def postprocess_section(bundle, rule, negative, record):
    labels = bundle.labels
    referral = record["val"]["referral"]
    return dict(bundle.manifest["postprocess"], activation="softmax", temperature=rule.temperature,
                decision={"rule": "logit_offsets",
                          "offsets": dict((l, float(o)) for l, o in zip(labels, rule.offsets))},
                referral={"negative": list(negative), "threshold": rule.threshold,
                          "score": "1 - P({})".format(" + ".join(negative)),
                          "val": {k: referral[k] for k in ("sensitivity", "specificity", "referable",
                                                           "not_referable")}},
                calibration=record)


def calibrate_bundle(bundle_dir, data, report_test=False, cache_dir=None, log=print, command="",
                     negative=(DEFAULT_NEGATIVE,), lift=None, sensitivity=DEFAULT_SENSITIVITY):
    """Fit the postprocess section of the bundle in ``bundle_dir`` on val and write it (and the card).

    ``lift``: the class whose recall the rule lifts; None: glaucoma if the bundle has it, else balanced
    accuracy; '': balanced accuracy."""
    bundle = load_bundle(bundle_dir)
    labels = bundle.labels
    negative = _classes(labels, negative, "--negative")
    if lift is None:
        lift = DEFAULT_LIFT if DEFAULT_LIFT in labels else ""
    if lift:
        _classes(labels, [lift], "--lift")
    if not 0 < sensitivity < 1:
        raise ValueError("--sensitivity must be between 0 and 1, not {}".format(sensitivity))
    samples = data if isinstance(data, list) else bundle_samples(bundle, data)
    images, targets = split_images(bundle, samples, "val", cache_dir, log)
    logits = network(bundle, "fp32", images)
    rule, record = choose(logits, targets, labels, negative, lift or None, sensitivity, log)
    record = dict({"command": command, "split": "val", "images": int(len(targets)),
                   "split_sha256": datalib.split_sha256(samples), "previous_temperature": bundle.temperature,
                   "model": "fp32 model.onnx", "preprocessing": "edge.preprocess with the bundle's rule",
                   "runtime": "onnxruntime {} CPU".format(ort.__version__)}, **record)
    record["variants"] = variant_agreement(bundle, rule, images, logits, "val")
    if report_test:
        test_images, test_targets = split_images(bundle, samples, "test", cache_dir, log)
        test_logits = network(bundle, "fp32", test_images)
        record["test"] = cal.score(test_logits, test_targets, rule)
        log(describe("test", record["test"]))
        record["variants_test"] = variant_agreement(bundle, rule, test_images, test_logits, "test")
    for key in ("variants", "variants_test"):
        for precision, a in sorted(record.get(key, {}).items()):
            log("{} on {} at the rule: label agrees with fp32 on {} ({} differ; argmax {}), referral differs on "
                "{}".format(precision, a["split"], _pct(a["rule_label_agreement"]), a["rule_label_disagreements"],
                            _pct(a["argmax_agreement"]), a.get("refer_disagreements", "-")))
    bundle = write_postprocess(bundle_dir, postprocess_section(bundle, rule, negative, record))
    modelcard.write(bundle_dir, bundle.manifest)
    return bundle


def main(args, log=print):
    command = retina_train_command()
    negative = [n.strip() for n in args.negative.split(",") if n.strip()]
    bundle = calibrate_bundle(args.bundle, args.data, args.report_test, args.cache_dir or None, log, command,
                              negative, args.lift, args.sensitivity)
    log("wrote {} (postprocess: temperature, decision, referral)".format(bundle.root))
    return bundle


def add_arguments(p):
    add_bundle_arguments(p, "bundle folder to calibrate (required; the models are not changed)")
    p.add_argument("--negative", default=DEFAULT_NEGATIVE, metavar="CLASSES",
                   help="comma-separated classes that are not referred; everything else is (default %(default)s)")
    p.add_argument("--lift", default=None, metavar="CLASS",
                   help="class whose recall the decision rule lifts, '' to maximise balanced accuracy instead "
                        "(default: {} when the bundle has it, else '')".format(DEFAULT_LIFT))
    p.add_argument("--sensitivity", type=float, default=DEFAULT_SENSITIVITY,
                   help="referral sensitivity the threshold must reach on val (default %(default)s)")
    p.add_argument("--report-test", action="store_true",
                   help="also score the test split at the chosen rule (once, for the record; it chooses nothing; "
                        "default off)")
    p.add_argument("--cache-dir", default=".cache/prepared", help="prepared-image cache ('' for none; default %(default)s)")
