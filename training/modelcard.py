"""A short model card written next to the bundle, from the manifest alone."""
import os


def _pct(x):
    return "{:.1f} %".format(100.0 * x)


def render(manifest):
    m, prov = manifest["metrics"], manifest["provenance"]
    data = prov["data"]
    lines = [
        "# Model card: {}".format(manifest["name"]),
        "",
        "**Intended use.** A screening aid that sorts colour fundus photographs into {} for referral by a "
        "clinician in settings without an ophthalmologist. It is not a diagnosis and must not be used to rule "
        "disease out. It has seen only the data below; other cameras, populations and image qualities "
        "need their own evaluation.".format(", ".join(manifest["labels"])),
        "",
        "**Model.** `{}` ({:,} parameters), ONNX opset {}, input {} {} {} ({}), outputs logits for: {}.".format(
            manifest["model"]["architecture"], manifest["model"].get("parameters", 0), manifest["model"]["opset"],
            manifest["input"]["name"], manifest["input"]["shape"], manifest["input"]["dtype"],
            manifest["input"]["layout"], ", ".join(manifest["labels"])),
        "Preprocessing: fundus-disc crop (threshold {}) padded square, resize to {} ({}), {} order, "
        "scale 1/255, mean {}, std {}.".format(
            manifest["preprocess"]["roi"].get("threshold"), manifest["preprocess"]["resize"]["size"],
            manifest["preprocess"]["resize"]["interpolation"], manifest["preprocess"]["colour_order"],
            manifest["preprocess"]["mean"], manifest["preprocess"]["std"]),
        "Starting weights: {}.".format(prov.get("weights") or "see commands"),
        "",
        "**Data.** {} images from `{}`. Licence: {}.".format(
            data.get("images"), data.get("image_root") or data.get("source"), data.get("licence")),
        "Split rule: {}; counts {}; the listing is `split.csv` beside this card (sha256 of "
        "name,label,split lines `{}`).".format(
            data.get("split_rule"), data.get("split_counts"), data.get("split_sha256", "")[:16]),
        "",
    ]
    for split in ("test", "val"):
        report = m.get(split)
        if not report:
            continue
        lines += ["**{} split** (group-wise held out, n = {}): accuracy {}, balanced accuracy {}.".format(
            split, report["n"], _pct(report["accuracy"]), _pct(report["balanced_accuracy"])), "",
            "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        for lab, r in report["per_class"].items():
            lines.append("| {} | {} | {} | {:.3f} | {} |".format(lab, _pct(r["precision"]), _pct(r["recall"]),
                                                                r["f1"], r["support"]))
        lines.append("")
    parity = m.get("onnx_parity", {})
    if parity:
        lines += ["ONNX Runtime vs PyTorch on {} real images: max |delta logit| = {:.2g} ({}).".format(
            parity["images"], parity["max_abs_logit_diff"], parity["runtime"]), ""]
    lines += _variants(manifest.get("variants", {}))
    lines += ["**Known limits.** Most cataract and glaucoma images in this source are 256x256 augmented copies "
              "while diabetic retinopathy and normal images are 400x400; every image is cropped to the disc "
              "and resized identically, and splits keep patients and source images whole, but a source "
              "shortcut cannot be ruled out. Metrics come from one held-out split of the development data.",
              "", "**Reproduce** (commit `{}`):".format(prov["commit"]), "", "```"]
    lines += prov["commands"] + ["```", ""]
    return "\n".join(lines)


def _how(entry):
    if entry["kind"] != "qdq-int8":
        return "float16 inside, float32 input/output"
    cal, q = entry.get("calibration", {}), entry.get("quantization", {})
    method = cal.get("method", "?") + (" {}".format(cal["percentile"]) if cal.get("percentile") else "")
    text = "Q/DQ int8, {} calibration on {} {} images; left in float: {}".format(
        method, cal.get("images"), cal.get("split"), q.get("keep_fp32") or "nothing")
    if q.get("fine_tuning"):
        text += "; fine-tuned {} epoch(s) to the fp32 logits".format(q["fine_tuning"]["epochs"])
    return text


def _variants(variants):
    if not variants:
        return []
    lines = ["**Precision variants** (for TensorRT: INT8 on Orin, FP16 for TensorRT 11's strongly typed networks), "
             "compared with fp32 through ONNX Runtime on the same held-out images:", "",
             "| variant | file | made by | split | top-1 agreement | accuracy (fp32) | max abs delta prob |",
             "|---|---|---|---|---|---|---|"]
    for precision, entry in sorted(variants.items()):
        for key in ("agreement", "agreement_test"):
            a = entry.get(key)
            if a:
                lines.append("| {} | `{}` | {} | {} ({}) | {} | {} ({}) | {:.3f} |".format(
                    precision, entry["file"], _how(entry), a["split"], a["images"], _pct(a["top1_agreement"]),
                    _pct(a["accuracy"]), _pct(a["fp32_accuracy"]), a["max_abs_prob_diff"]))
    commands = sorted(set(e["command"] for e in variants.values() if e.get("command")))
    lines += ["", "Variants made with: " + "; ".join("`{}`".format(c) for c in commands)] if commands else []
    return lines + [""]


def write(bundle_dir, manifest):
    path = os.path.join(bundle_dir, "MODEL_CARD.md")
    with open(path, "w") as f:
        f.write(render(manifest))
    return path
