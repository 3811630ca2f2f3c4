"""retina-train: split, pretrain, teacher, distil, soft-labels, ablate, evaluate, export, quantize, calibrate, report, cv, card,
leakage, explain, synth-oct."""
import sys

from edge.cliutil import Parser
from training import config
from models.bundle import ROI_KINDS
from training.splits import DEFAULT_FRACTIONS  # light: the CLI parses before torch is imported

EXAMPLES = """examples:
  retina-train split   --data ../shared/data/fundus4 --out runs/split.csv
  retina-train teacher --data runs/split.csv --model tf_efficientnet_lite2 --out runs/teacher
  retina-train pretrain --data runs/split.csv --model convnextv2_atto --out runs/pretrain   (FCMAE, train split only)
  retina-train pretrain --data runs/split.csv --model vit_tiny_patch16_224 --out runs/pretrain-vit   (MAE)
  retina-train teacher --data runs/split.csv --model convnextv2_atto --init runs/pretrain --out runs/convnextv2
  retina-train teacher --data runs/split.csv --model vit_small_patch16_224 --weights hub --out runs/vit
  retina-train teacher --data runs/split.csv --model convnextv2_atto --loss focal --class-weights balanced \
                       --augment strong --average swa --accumulate 2 --out runs/convnextv2
  retina-train distil  --data runs/split.csv --teacher runs/teacher --model tf_efficientnet_lite0 --out runs/student
  retina-train teacher --config runs/teacher.yaml --epochs 40   (options from YAML; the command line wins)
  retina-train evaluate --checkpoint runs/student --split test
  retina-train export  --checkpoint runs/student --out models/default
  retina-train quantize --bundle models/default --data ../shared/data/fundus4
  retina-train calibrate --bundle models/default --data ../shared/data/fundus4
  retina-train report  --bundle models/default --data ../shared/data/fundus4 --split test --out runs/report-test
  retina-train cv      --data ../shared/data/fundus4 --folds 5 --labels-only --out runs/cv
  retina-train cv      --data ../shared/data/fundus4 --jobs 5 --teacher-options="--epochs 30 --augment strong" --out runs/cv30   (a GPU: five folds at once)
  retina-train card    --bundle models/default --cv runs/cv   (the CV's figures into the model card)
  retina-train ablate  --data ../shared/data/fundus4 --teacher runs/cv --folds 5 --variants labels,logits,logits+gl --out runs/ablate
  retina-train soft-labels --data runs/split.csv --teacher runs/teacher --epochs 10
  retina-train distil  --data runs/split.csv --teacher runs/teacher --soft-labels runs/teacher/soft_labels.npz --out runs/student
  retina-train leakage --data ../shared/data/fundus4 --split models/default/split.csv --measure --shortcut
  retina-train explain --checkpoint runs/student --images a.jpg b.jpg --out explain/
  retina-train synth-oct --out runs/synthetic-oct --per-class 40 --dicom     (SYNTHETIC B-scans, for tests)
  retina-train teacher --data runs/synthetic-oct --modality oct --model resnet18 --out runs/oct-teacher
"""


def _train_options(p, model, epochs, lr):
    p.add_argument("--data", required=True, help="class-folder root, or a CSV with path,label[,group][,split] "
                                                 "(required; without a split column it is split here, group-wise, "
                                                 "with the default fractions and --seed)")
    p.add_argument("--model", default=model, help="any timm classifier name (default %(default)s)")
    p.add_argument("--out", required=True, help="run folder to write (required)")
    p.add_argument("--weights", default="imagenet",
                   help="imagenet (offline package, else hub), hub, none, or a checkpoint path (default %(default)s)")
    p.add_argument("--init", default=None, metavar="PRETRAIN_DIR",
                   help="start from a `retina-train pretrain` run: its encoder.pt is the --weights (same "
                        "architecture only); recorded in config.json (default: --weights)")
    p.add_argument("--image-size", type=int, default=224, help="square input side in pixels (default %(default)s)")
    p.add_argument("--epochs", type=int, default=epochs, help="passes over the training split (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="images per forward pass; an optimiser step sees batch-size x accumulate (default %(default)s)")
    p.add_argument("--accumulate", type=int, default=1,
                   help="micro-batches whose gradients make one optimiser step (default %(default)s)")
    p.add_argument("--lr", type=float, default=lr,
                   help="peak AdamW learning rate, warmed up then cosine-decayed (default %(default)s)")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (default %(default)s)")
    p.add_argument("--label-smoothing", type=float, default=None,
                   help="label smoothing of the cross-entropy term (default: 0.1; 0 with --loss focal)")
    p.add_argument("--seed", type=int, default=0, help="random seed for order and augmentation (default %(default)s)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many optimiser steps; the schedule still spans --epochs, so --resume "
                        "can continue the run (default %(default)s: no limit)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last.pt (written after every epoch and at --max-steps)")
    p.add_argument("--augment", default="standard", choices=("none", "standard", "strong"),
                   help="training augmentation; strong: wider zoom, rotation and colour jitter, for teachers "
                        "(default %(default)s)")
    p.add_argument("--average", default="none", choices=("none", "swa", "ema"),
                   help="keep averaged weights: swa (one snapshot per epoch from --swa-start-epoch, BatchNorm "
                        "statistics recomputed) or ema (default %(default)s)")
    p.add_argument("--swa-start-epoch", type=int, default=None,
                   help="first epoch averaged by --average swa, from 1 (default: the last quarter of the epochs)")
    p.add_argument("--ema-decay", type=float, default=0.999,
                   help="per-step decay of --average ema (default %(default)s)")
    p.add_argument("--patience", type=int, default=None,
                   help="stop after this many epochs without a better validation balanced accuracy and keep the "
                        "best epoch's weights (default %(default)s: train every epoch)")
    p.add_argument("--amp", default="auto", choices=("off", "auto", "bf16", "fp16"),
                   help="mixed precision on CUDA (auto: bf16 where supported, else fp16 with loss scaling); "
                        "the CPU always trains in fp32 (default %(default)s)")
    p.add_argument("--cache-dir", default=".cache/prepared",
                   help="where prepared images are cached, '' for none (default %(default)s)")
    p.add_argument("--modality", default="auto", choices=("auto", "fundus", "oct"),
                   help="what the images are; auto decides from the data (DICOM Modality OP/OPT, else grey "
                        "images -> oct) and says what it decided; distil takes the teacher's "
                        "(default %(default)s); written into the bundle")
    p.add_argument("--roi", default=None, choices=ROI_KINDS,
                   help="region of interest rule (default: the teacher's for distil, else fundus_disc for fundus, "
                        "retina_band for oct)")
    p.add_argument("--channels", type=int, default=None, choices=(1, 3),
                   help="network input channels: 3 (RGB; a grey image is replicated) or 1 (GREY, timm "
                        "in_chans=1, the network's mean/std averaged) (default: the teacher's for distil, else 3)")


def _pretrain_options(p):
    """retina-train pretrain (training.pretrain.main)."""
    p.add_argument("--data", required=True,
                   help="class-folder root, or a split CSV (required); ONLY the train side of the split is "
                        "read, labels unused: val and test images never enter pretraining")
    p.add_argument("--model", default="convnextv2_atto",
                   help="a timm ConvNeXtV2 model (FCMAE) or Vision Transformer (MAE), e.g. vit_tiny_patch16_224 "
                        "(default %(default)s)")
    p.add_argument("--out", required=True, help="run folder for encoder.pt, config.json, history.json (required)")
    p.add_argument("--epochs", type=int, default=50, help="passes over the train split (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="images per step (default %(default)s)")
    p.add_argument("--lr", type=float, default=5e-4,
                   help="peak AdamW learning rate, warmed up then cosine-decayed (default %(default)s)")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (default %(default)s)")
    p.add_argument("--mask-ratio", type=float, default=None,
                   help="fraction of patches hidden from the encoder (32 px for FCMAE, the ViT's own for MAE) "
                        "(default: 0.6 FCMAE, 0.75 MAE, the papers')")
    p.add_argument("--decoder-dim", type=int, default=256, help="channels of the light decoder (default %(default)s)")
    p.add_argument("--image-size", type=int, default=224,
                   help="square input side, a multiple of 32 (default %(default)s)")
    p.add_argument("--augment", default="standard", choices=("none", "standard", "strong"),
                   help="augmentation of the views (training.engine presets) (default %(default)s)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many steps; the schedule still spans --epochs, so --resume can continue "
                        "(default %(default)s: no limit)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last.pt (written after every epoch and at --max-steps)")
    p.add_argument("--seed", type=int, default=0, help="seed of order, masks and augmentation (default %(default)s)")
    p.add_argument("--cache-dir", default=".cache/prepared",
                   help="where prepared images are cached, '' for none (default %(default)s)")


def _soft_label_options(p):
    """retina-train soft-labels (training.fkd.main)."""
    p.add_argument("--data", required=True, help="the split CSV the student will be distilled on (required)")
    p.add_argument("--teacher", required=True, help="teacher run folder (required)")
    p.add_argument("--out", default=None, help="cache file to write (default: <teacher>/soft_labels.npz)")
    p.add_argument("--epochs", type=int, default=10,
                   help="views per image = the distil epochs they serve (default %(default)s)")
    p.add_argument("--image-size", type=int, default=224,
                   help="the student's input side in pixels: views are made at it (default %(default)s)")
    p.add_argument("--temperature", type=float, default=4.0,
                   help="the distillation temperature T the probabilities are taken at (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="views per teacher pass (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the views (default %(default)s)")
    p.add_argument("--cache-dir", default=".cache/prepared",
                   help="where prepared images are cached, '' for none (default %(default)s)")


def build_parser():
    parser = Parser(prog="retina-train", description="Train, distil, evaluate and export retinal screening models.",
                    epilog=EXAMPLES)
    sub = parser.add_subparsers(dest="verb")

    def verb(name, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=EXAMPLES,
                           formatter_class=parser.formatter_class)
        p.set_defaults(_parser=p, verb=name)
        config.add_arguments(p)
        return p

    p = verb("split", "write a group-wise stratified split as a CSV manifest")
    p.add_argument("--data", required=True, help="class-folder root, or a CSV with path,label[,group] (required)")
    p.add_argument("--out", required=True, help="split CSV to write: path,label,group,split (required)")
    p.add_argument("--test", type=float, default=DEFAULT_FRACTIONS["test"],
                   help="fraction of groups for the test split (default %(default)s)")
    p.add_argument("--val", type=float, default=DEFAULT_FRACTIONS["val"],
                   help="fraction of groups for the validation split (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the split (default %(default)s)")

    p = verb("pretrain", "self-supervised pretraining on the TRAIN split's images (val/test never read): FCMAE "
                         "for ConvNeXtV2, MAE for ViT; then teacher --init")
    _pretrain_options(p)

    p = verb("teacher", "train a teacher (or any network) with cross-entropy or focal loss")
    _train_options(p, "tf_efficientnet_lite2", epochs=6, lr=5e-4)
    p.add_argument("--loss", default="ce", choices=("ce", "focal"),
                   help="ce, or focal: -w_y (1 - p_y)^gamma log p_y with p the unweighted softmax "
                        "(default %(default)s)")
    p.add_argument("--focal-gamma", type=float, default=2.0, help="gamma of --loss focal (default %(default)s)")
    p.add_argument("--class-weights", default="none",
                   help="class weights w_y of either loss: none, balanced (N / (classes x n_class) on the train "
                        "split) or one number per class in sorted label order (default %(default)s)")

    p = verb("distil", "distil a student from a trained teacher: a*CE + (1-a)*T^2*KL")
    _train_options(p, "tf_efficientnet_lite0", epochs=10, lr=1e-3)
    p.add_argument("--teacher", required=True, help="teacher run folder (required)")
    p.add_argument("--alpha", type=float, default=0.3,
                   help="weight of the cross-entropy term; 1 - alpha weighs the distillation term "
                        "(default %(default)s)")
    p.add_argument("--temperature", type=float, default=4.0,
                   help="softmax temperature T of the distillation term, scaled by T^2 (default %(default)s)")
    p.add_argument("--kd-config", default=None, metavar="CONFIG",
                   help="distillation terms and weights: a JSON/YAML file, inline JSON or a variant such as "
                        "logits+pca+gl (terms: logits, pca, gl, adversarial, multiview, fmap; default: logits)")
    p.add_argument("--soft-labels", default=None, metavar="CACHE",
                   help="replay the views and teacher probabilities of a `retina-train soft-labels` cache "
                        "instead of running the teacher (default: the online teacher)")

    p = verb("soft-labels", "cache the teacher's soft labels on stored augmented views, for distil --soft-labels")
    _soft_label_options(p)

    p = verb("ablate", "train distillation variants on the same folds; table of accuracy, balanced accuracy, "
                       "glaucoma recall, ECE")
    from training.ablate import add_arguments as ablate_arguments  # light: torch imported when it runs
    ablate_arguments(p)

    p = verb("evaluate", "evaluate a checkpoint on a split")
    p.add_argument("--checkpoint", required=True, help="run folder or checkpoint.pt (required)")
    p.add_argument("--data", default=None, help="data or split CSV (default: the run's split.csv)")
    p.add_argument("--split", default="test", choices=("train", "val", "test", "all"),
                   help="which split to evaluate (default %(default)s)")
    p.add_argument("--cache-dir", default=".cache/prepared",
                   help="where prepared images are cached, '' for none (default %(default)s)")

    p = verb("export", "export ONNX (opset 13), check parity with ONNX Runtime, write a model bundle")
    p.add_argument("--checkpoint", required=True, help="run folder or checkpoint.pt to export (required)")
    p.add_argument("--out", required=True, help="bundle folder to write (required)")
    p.add_argument("--name", default=None, help="bundle name (default: fundus4-<architecture>, or oct-<architecture> for an OCT run)")
    p.add_argument("--opset", type=int, default=13,
                   help="ONNX opset; TensorRT 8.2 on JetPack 4.6 parses up to 13 (default %(default)s)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest |delta logit| allowed between PyTorch and ONNX Runtime in fp32, per unit of the largest "
                        "|logit| when that is above 1 (default %(default)s)")
    p.add_argument("--parity-images", default=None,
                   help="folder of images for the parity check (default: the run's test split)")
    p.add_argument("--variants", default="", metavar="PRECISIONS",
                   help="also make these precision variants (e.g. int8,fp16) with the `quantize` defaults, "
                        "calibrated on the run's split (default '%(default)s': none)")

    p = verb("synth-oct", "write SYNTHETIC OCT B-scans (not patient data) in OCT2017-style class folders, for "
                          "tests and smoke runs")
    p.add_argument("--out", required=True, help="folder to write CNV/ DME/ DRUSEN/ NORMAL/ into (required)")
    p.add_argument("--per-class", type=int, default=40, help="B-scan files per class (default %(default)s)")
    p.add_argument("--dicom", action="store_true",
                   help="also write a single-frame and a 3-frame OPT DICOM per class (default: no DICOM)")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed writes the same images "
                                                       "(default %(default)s)")
    p.add_argument("--size", type=int, nargs=2, default=None, metavar=("ROWS", "COLS"),
                   help="one size for every B-scan (default: drawn per image, 160-320 rows)")

    p = verb("quantize", "add INT8 Q/DQ and FP16 variants to a bundle, measured against fp32 on the val split")
    from training.quantize import add_arguments  # light: numpy and onnxruntime at most
    add_arguments(p)

    p = verb("calibrate", "fit the temperature, a class decision rule and the referral threshold on the val split")
    from training import calibrate
    calibrate.add_arguments(p)

    p = verb("card", "rewrite a bundle's model card; with --cv, put a cross-validation run's figures in it")
    p.add_argument("--bundle", required=True, help="bundle folder whose MODEL_CARD.md to write (required)")
    p.add_argument("--cv", default=None, metavar="RUN",
                   help="a finished `retina-train cv` run folder: its cv.json is copied to <bundle>/report/cv.json "
                        "and summarised in the card (default: none, the card is rewritten from what is there)")
    p = verb("report", "write an evaluation report (Markdown, JSON, PNG plots) for a bundle or a CV predictions file")
    from training import report
    report.add_arguments(p)

    p = verb("cv", "k-fold grouped cross-validation: teacher, distilled student (and labels-only) per fold")
    from training import cv
    cv.add_arguments(p)

    p = verb("leakage", "check a split or folds for groups and exact/near-duplicate images on two sides")
    from training import leakage
    leakage.add_arguments(p)

    p = verb("explain", "Grad-CAM and Grad-CAM++ overlays for student and teacher, or (--bundle) add the "
                        "device's feature-map model to a bundle")
    from training.explain import add_arguments as explain_arguments  # light until main runs
    explain_arguments(p)
    return parser


def main(argv=None):
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        argv = config.expand_argv(argv, parser)
    except config.ConfigError as exc:
        print("retina-train {}: error: {}".format(argv[0], exc), file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if not args.verb:
        parser.print_help()
        return 2
    if args.print_config:
        print(config.dump(args), end="")
        return 0
    asked = config.dump(args, command_line())  # before the verb resolves any option in place
    try:
        code = run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print("retina-train {}: error: {}".format(args.verb, exc), file=sys.stderr)
        return 1
    if not code:
        config.save(args, asked)
    return code


def command_line():
    from training.provenance import command_line as line  # light: no torch
    return line()


def run(args):
    if args.verb == "synth-oct":  # NumPy + OpenCV (+ pydicom): no torch
        from training import synthetic_oct
        print("synthetic: these B-scans are drawn by a program, not taken from patients")
        synthetic_oct.write_dataset(args.out, args.per_class, seed=args.seed, dicom=args.dicom,
                                    size=tuple(args.size) if args.size else None)
        return 0
    if args.verb == "quantize":  # needs no torch unless it fine-tunes
        from training import quantize
        quantize.main(args)
        return 0
    if args.verb == "calibrate":  # no torch: numpy and onnxruntime
        from training import calibrate
        calibrate.main(args)
        return 0
    if args.verb == "report":  # no torch: numpy, onnxruntime, matplotlib
        from training import report
        from training.quantize import retina_train_command
        args.command = retina_train_command()
        report.run(args)
        return 0
    if args.verb == "explain":
        from training import explain
        return explain.main(args)
    if args.verb == "split":
        from training import data as datalib, provenance, splits
        if args.test + args.val >= 1:
            raise ValueError("--test + --val must be below 1")
        fractions = {"train": 1 - args.test - args.val, "val": args.val, "test": args.test}
        samples = splits.grouped_split(datalib.load_samples(args.data), fractions, seed=args.seed)
        datalib.write_manifest(samples, args.out)
        provenance.record_split_command(args.out)
        for name, counts in sorted(splits.summarize(samples).items()):
            print("{:<5} {:5d} images  {}".format(name, sum(counts.values()), dict(sorted(counts.items()))))
        print("wrote {} (no group on two sides: checked)".format(args.out))
    elif args.verb == "pretrain":
        from training import pretrain
        pretrain.main(args)
    elif args.verb in ("teacher", "distil"):
        from training import recipe
        recipe.train(args, teacher_dir=getattr(args, "teacher", None))
    elif args.verb == "evaluate":
        from training import recipe
        recipe.evaluate(args)
    elif args.verb == "export":
        from training import export
        export.export_bundle(args)
    elif args.verb == "cv":
        from training import cv, splits as leaks
        try:
            cv.main(args)
        except leaks.LeakError as exc:
            print("retina-train cv: refused, the folds leak: {}".format(exc), file=sys.stderr)
            return 1
    elif args.verb == "card":
        from training import modelcard
        if args.cv:
            path = modelcard.add_cv(args.bundle, args.cv)
        else:
            from models.bundle import load_bundle
            path = modelcard.write(args.bundle, load_bundle(args.bundle).manifest)
        print("wrote {}".format(path))
    elif args.verb == "soft-labels":
        from training import fkd
        fkd.main(args)
    elif args.verb == "ablate":
        from training import ablate
        ablate.main(args)
    elif args.verb == "leakage":
        from training import leakage
        return leakage.main(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
