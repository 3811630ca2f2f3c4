"""Teachers on one grouped split: the shipped EfficientNet-Lite2 (ImageNet start) against ConvNeXtV2 (from
scratch, and from FCMAE pretraining on the split's own train images) and, where asked, a ViT.

    python benchmarks/teacher_comparison.py --split runs/split.csv --image-size 128 --out runs/compare
    python benchmarks/teacher_comparison.py ... --only lite2,convnextv2-fcmae      # some of them
    python benchmarks/teacher_comparison.py ... --table                            # print what is done

Every run is an ordinary `retina-train` command (printed before it runs, so it can be retyped); a finished
run (its checkpoint.pt exists) is skipped, so the script resumes. The table reads each run's metrics.json:
val and test accuracy, balanced accuracy and glaucoma recall at argmax, training time, parameters.

One split, not the issue's five folds: five folds of four teachers are days of a 2-core CPU. The figures
say which teacher start is worth a GPU's time, not which one is best by a given margin.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def runs(args):
    """name -> list of retina-train argument lists (run in order; the last one writes the teacher)."""
    common = ["--data", args.split, "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
              "--seed", str(args.seed), "--cache-dir", args.cache_dir]
    strong = ["--augment", "strong", "--loss", "focal", "--class-weights", "balanced", "--average", "ema"]
    out = lambda name: os.path.join(args.out, name)  # noqa: E731
    scratch = str(args.scratch_epochs)
    return {
        "lite2": [["teacher", "--model", "tf_efficientnet_lite2", "--weights", "imagenet", "--epochs",
                   str(args.lite2_epochs), "--out", out("lite2")] + common],
        "convnextv2-scratch": [["teacher", "--model", "convnextv2_atto", "--weights", "none", "--epochs", scratch,
                                "--lr", "1e-3", "--out", out("convnextv2-scratch")] + common + strong],
        "convnextv2-fcmae": [
            ["pretrain", "--model", "convnextv2_atto", "--epochs", str(args.pretrain_epochs), "--data", args.split,
             "--image-size", str(args.image_size), "--batch-size", str(args.batch_size), "--seed", str(args.seed),
             "--cache-dir", args.cache_dir, "--out", out("convnextv2-pretrain")],
            ["teacher", "--model", "convnextv2_atto", "--init", out("convnextv2-pretrain"), "--epochs", scratch,
             "--lr", "1e-3", "--out", out("convnextv2-fcmae")] + common + strong],
        "vit-scratch": [["teacher", "--model", "vit_tiny_patch16_224", "--weights", "none", "--epochs", scratch,
                         "--lr", "5e-4", "--out", out("vit-scratch")] + common + strong],
    }


def done(argv):
    out = argv[argv.index("--out") + 1]
    return os.path.isfile(os.path.join(out, "checkpoint.pt" if argv[0] == "teacher" else "encoder.pt"))


def run(argv):
    cmd = [sys.executable, "-m", "training"] + argv
    print("$ " + " ".join(shlex.quote(a) for a in ["python", "-m", "training"] + argv), flush=True)
    code = subprocess.call(cmd, cwd=ROOT)
    if code:
        raise SystemExit("{} failed with exit code {}".format(argv[0], code))


def figures(report, labels):
    recall = report["per_class"]["glaucoma"]["recall"] if "glaucoma" in labels else None
    return report["accuracy"], report["balanced_accuracy"], recall


def table(args, names):
    print("\nteachers on {} at {} px (argmax; %)".format(args.split, args.image_size))
    print("{:<20} {:>7} {:>8} {:>8} {:>7} {:>8} {:>8} {:>9} {:>9}".format(
        "teacher", "val acc", "val bal", "val glc", "test acc", "test bal", "test glc", "train min", "params M"))
    for name in names:
        path = os.path.join(args.out, name, "metrics.json")
        if not os.path.isfile(path):
            print("{:<20} not run yet".format(name))
            continue
        with open(path) as f:
            metrics = json.load(f)
        with open(os.path.join(args.out, name, "config.json")) as f:
            config = json.load(f)
        cells = []
        for split in ("val", "test"):
            cells += ["{:.1f}".format(100 * v) if v is not None else "n/a"
                      for v in figures(metrics[split], config["labels"])]
        params = metrics.get("parameters")
        print("{:<20} {:>7} {:>8} {:>8} {:>7} {:>8} {:>8} {:>9.1f} {:>9}".format(
            name, *cells, metrics["train_seconds"] / 60.0, "{:.2f}".format(params / 1e6) if params else "-"))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", default="runs/split.csv",
                   help="a split CSV with paths; `retina-train split --data ../shared/data/fundus4 --out "
                        "runs/split.csv` makes the shipped default's (default %(default)s)")
    p.add_argument("--out", default="runs/compare", help="folder of the runs (default %(default)s)")
    p.add_argument("--image-size", type=int, default=128, help="input side for every teacher (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="(default %(default)s)")
    p.add_argument("--lite2-epochs", type=int, default=6, help="the shipped teacher's schedule (default %(default)s)")
    p.add_argument("--scratch-epochs", type=int, default=30,
                   help="epochs of the teachers without ImageNet weights (default %(default)s)")
    p.add_argument("--pretrain-epochs", type=int, default=30, help="FCMAE epochs (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default %(default)s)")
    p.add_argument("--cache-dir", default=".cache/prepared", help="(default %(default)s)")
    p.add_argument("--only", default="lite2,convnextv2-scratch,convnextv2-fcmae",
                   help="comma-separated runs, of: lite2, convnextv2-scratch, convnextv2-fcmae, vit-scratch "
                        "(default %(default)s)")
    p.add_argument("--table", action="store_true", help="print the table of what is done, run nothing")
    args = p.parse_args()
    plan = runs(args)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in plan]
    if unknown:
        p.error("unknown run(s) {}; choose from {}".format(unknown, sorted(plan)))
    if not args.table:
        for name in names:
            for argv in plan[name]:
                if done(argv):
                    print("{}: {} done, skipped".format(name, argv[0]))
                else:
                    run(argv)
    table(args, names)


if __name__ == "__main__":
    main()
