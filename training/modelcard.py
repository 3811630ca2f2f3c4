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
    lines += ["**Known limits.** Most cataract and glaucoma images in this source are 256x256 augmented copies "
              "while diabetic retinopathy and normal images are 400x400; every image is cropped to the disc "
              "and resized identically, and splits keep patients and source images whole, but a source "
              "shortcut cannot be ruled out. Metrics come from one held-out split of the development data.",
              "", "**Reproduce** (commit `{}`):".format(prov["commit"]), "", "```"]
    lines += prov["commands"] + ["```", ""]
    return "\n".join(lines)


def write(bundle_dir, manifest):
    path = os.path.join(bundle_dir, "MODEL_CARD.md")
    with open(path, "w") as f:
        f.write(render(manifest))
    return path
