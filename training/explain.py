"""retina-train explain: where the networks look, on the workstation, with gradients.

    retina-train explain --checkpoint runs/student --images a.jpg b.jpg --out explain/
    retina-train explain --bundle models/default --parity-images ../shared/data/fundus4

With ``--checkpoint`` it writes, for each image, a Grad-CAM and a Grad-CAM++
overlay for the student and for its teacher (``--teacher``, by default the run
the student was distilled from, when that folder exists), each for the class
the network predicts (or ``--target CLASS``), plus one panel side by side and
``explain.json`` listing what each network said. The maps are on the last
convolutional feature map (timm's ``forward_features``), mapped back through
the preprocessing onto the original photograph exactly as the device does it
(``edge.explain.cam_on_image``).

With ``--bundle`` it adds the device's explanation model to a bundle
(``training.export.add_explain``): model.cam.onnx and classifier.json, after
checking on real images that its logits equal model.onnx's.

Grad-CAM (Selvaraju et al., 2017): weights = mean over h, w of dy_k/dA;
map = ReLU(sum_c weights_c A_c). Grad-CAM++ (Chattopadhay et al., 2018), in the
closed form for an exponential score: alpha = g^2 / (2 g^2 + sum_hw(A) g^3),
weights = sum_hw(alpha ReLU(g)).
"""
import json
import os

import cv2
import numpy as np

from edge.explain import cam_overlay
from edge.io.decode import read_image
from edge.preprocess import preprocess

# torch is imported where a network runs: `retina-train --help` builds this verb's parser without it


def _grad_cam(features, grads):
    weights = grads.mean(dim=(1, 2), keepdim=True)
    return (weights * features).sum(dim=0).clamp(min=0)


def _grad_cam_pp(features, grads):
    g2, g3 = grads.pow(2), grads.pow(3)
    denominator = 2 * g2 + features.sum(dim=(1, 2), keepdim=True) * g3
    alpha = g2 / (denominator + (denominator == 0).to(denominator.dtype))  # 0 / 1 where no gradient
    weights = (alpha * grads.clamp(min=0)).sum(dim=(1, 2), keepdim=True)
    return (weights * features).sum(dim=0).clamp(min=0)


METHODS = {"gradcam": _grad_cam, "gradcam++": _grad_cam_pp}


def feature_map_and_logits(net, x):
    """(last feature map N x C x h x w, logits) through timm's forward_features / forward_head."""
    features = net.forward_features(x)
    if features.dim() != 4:
        raise ValueError("{}: Grad-CAM needs a convolutional feature map; forward_features gives shape {}".format(
            type(net).__name__, tuple(features.shape)))
    return features, net.forward_head(features)


def gradient_maps(net, x, target=None, methods=tuple(METHODS)):
    """{method: h x w map (NumPy)} for one image ``x`` (1 x 3 x H x W) and the class index explained.

    ``target`` None explains the network's own top class.
    """
    import torch
    net.eval()
    x = x.detach().requires_grad_(False)
    with torch.enable_grad():
        features, logits = feature_map_and_logits(net, x)
        features.retain_grad()
        index = int(logits[0].argmax()) if target is None else int(target)
        net.zero_grad()
        logits[0, index].backward()
    a, g = features[0].detach(), features.grad[0].detach()
    maps = dict((m, METHODS[m](a, g).numpy().astype(np.float32)) for m in methods)
    return maps, index, logits[0].detach().softmax(dim=0).numpy()


def default_teacher(ckpt, checkpoint):
    """The run the student was distilled from (its config's ``teacher``), if that folder is here."""
    teacher = (ckpt.get("config") or {}).get("teacher")
    if not teacher:
        return None
    for candidate in (teacher, os.path.join(os.path.dirname(os.path.abspath(checkpoint)), teacher)):
        if os.path.exists(candidate):
            return candidate
    return None


def explain_images(networks, images, out_dir, target=None, methods=tuple(METHODS), log=print):
    """Write overlays for every (image, network, method), a panel per image and explain.json; returns the records."""
    import torch
    os.makedirs(out_dir, exist_ok=True)
    records = []
    for path in images:
        rgb = read_image(path)
        stem = os.path.splitext(os.path.basename(path))[0]
        base = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        tiles, record = [_titled(base, "photograph")], {"image": os.path.abspath(path), "networks": {}}
        for role, (net, ckpt) in networks:
            labels, spec = ckpt["labels"], ckpt["spec"]
            x = torch.from_numpy(preprocess(rgb, spec))
            wanted = None if target is None else labels.index(target)
            maps, index, probs = gradient_maps(net, x, wanted, methods)
            record["networks"][role] = {"arch": ckpt["arch"], "explained": labels[index],
                                        "predicted": labels[int(np.argmax(probs))],
                                        "probs": dict(zip(labels, [float(p) for p in probs])), "files": {}}
            for method, cam in maps.items():
                overlay = cam_overlay(base, rgb, cam, spec["roi"], "{} {}: {}".format(role, method, labels[index]))
                name = "{}.{}.{}.jpg".format(stem, role, method.replace("+", "p"))
                cv2.imwrite(os.path.join(out_dir, name), overlay)
                record["networks"][role]["files"][method] = name
                tiles.append(overlay)
        panel = np.hstack([cv2.resize(t, (400, int(round(400.0 * t.shape[0] / t.shape[1])))) for t in tiles])
        cv2.imwrite(os.path.join(out_dir, stem + ".panel.jpg"), panel)
        record["panel"] = stem + ".panel.jpg"
        records.append(record)
        log("{}: {}".format(path, ", ".join("{} says {}".format(r, v["predicted"])
                                             for r, v in record["networks"].items())))
    with open(os.path.join(out_dir, "explain.json"), "w") as f:
        json.dump(records, f, indent=2)
        f.write("\n")
    return records


def _titled(bgr, title):
    out = bgr.copy()
    unit = max(out.shape[:2]) / 640.0
    cv2.putText(out, title, (int(10 * unit), int(26 * unit)), cv2.FONT_HERSHEY_SIMPLEX, 0.7 * unit,
                (255, 255, 255), max(1, int(2 * unit)), cv2.LINE_AA)
    return out


def add_arguments(p):
    p.add_argument("--checkpoint", default=None,
                   help="student run folder or checkpoint.pt: write Grad-CAM overlays (required unless --bundle)")
    p.add_argument("--teacher", default=None,
                   help="teacher run folder (default: the run the student was distilled from, if it is here; "
                        "'none' for the student alone)")
    p.add_argument("--images", nargs="+", default=None, metavar="IMAGE",
                   help="photographs to explain (required with --checkpoint)")
    p.add_argument("--out", default=None, help="folder for the overlays, panels and explain.json "
                                               "(required with --checkpoint)")
    p.add_argument("--target", default=None, metavar="CLASS",
                   help="explain this class (default: each network's own top class)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated, of {} (default %(default)s)".format(
        ", ".join(METHODS)))
    p.add_argument("--bundle", default=None,
                   help="instead: add the device's feature-map model (model.cam.onnx, classifier.json) to this "
                        "bundle (default: none)")
    p.add_argument("--parity-images", default=None,
                   help="with --bundle: folder of real images on which the logits must not move (required)")


def main(args, log=print):
    if args.bundle:
        if not args.parity_images:
            raise ValueError("--bundle needs --parity-images FOLDER (real images the logits are checked on)")
        from training.export import add_explain
        add_explain(args.bundle, args.parity_images, log=log)
        return 0
    if not (args.checkpoint and args.images and args.out):
        raise ValueError("give --checkpoint RUN --images IMAGE... --out DIR (or --bundle DIR)")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError("unknown method(s) {}; choose from {}".format(unknown, ", ".join(METHODS)))
    from training.runs import load_checkpoint
    student = load_checkpoint(args.checkpoint)
    networks = [("student", student)]
    teacher_dir = None if args.teacher == "none" else (args.teacher or default_teacher(student[1], args.checkpoint))
    if teacher_dir:
        networks.append(("teacher", load_checkpoint(teacher_dir)))
    else:
        log("no teacher run found (pass --teacher RUN); explaining the student alone")
    if args.target is not None and any(args.target not in ckpt["labels"] for _, (_, ckpt) in networks):
        raise ValueError("--target {!r} is not one of the labels {}".format(args.target, student[1]["labels"]))
    explain_images(networks, args.images, args.out, args.target, methods, log=log)
    log("wrote {} image(s) x {} network(s) x {} method(s) into {}".format(len(args.images), len(networks),
                                                                       len(methods), args.out))
    return 0
