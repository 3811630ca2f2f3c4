"""retina-train explain on the workstation: Grad-CAM / Grad-CAM++ on tiny timm checkpoints made here,
and the feature-map model written into a bundle. No training run exists on this machine; the real
overlays need runs/student (and its teacher)."""
import json
import os

import numpy as np
import pytest

from conftest import REPO_ROOT, TESTS_DIR

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

SAMPLES = os.path.join(REPO_ROOT, "samples", "fundus")
LABELS = ["cataract", "diabetic_retinopathy", "glaucoma", "normal"]


def _tiny_run(folder, arch, size, teacher=None):
    """A run folder holding a checkpoint of an untrained tiny timm model, in runs.save_run's layout."""
    from training import nets
    from training.inputs import make_spec
    torch.manual_seed(0)
    net, cfg, used = nets.create_model(arch, len(LABELS), size, "none")
    os.makedirs(folder)
    torch.save({"arch": arch, "labels": LABELS, "spec": make_spec(size, cfg["mean"], cfg["std"]),
                "state_dict": net.state_dict(), "config": {"teacher": teacher}, "metrics": {}, "commands": [],
                "weights": used, "data": {}}, os.path.join(folder, "checkpoint.pt"))
    return folder


def _images():
    return [os.path.join(SAMPLES, "glaucoma", "Glaucoma_073.png"), os.path.join(SAMPLES, "normal", "2386_right.jpg")]


def test_grad_cam_of_a_pooled_linear_head_is_the_class_activation_map(tmp_path):
    """With global average pooling then a linear layer, dy_k/dA = W[k] / (h w) everywhere, so Grad-CAM is
    ReLU(CAM_k) / (h w): the workstation's gradients and the device's gradient-free map agree."""
    from edge.explain import class_activation_map
    from edge.io.decode import read_image
    from edge.preprocess import preprocess
    from training.explain import feature_map_and_logits, gradient_maps
    from training.runs import load_checkpoint
    net, ckpt = load_checkpoint(_tiny_run(str(tmp_path / "student"), "test_efficientnet", 64))
    x = torch.from_numpy(preprocess(read_image(_images()[0]), ckpt["spec"]))
    for k in range(len(LABELS)):
        maps, index, probs = gradient_maps(net, x, target=k)
        with torch.no_grad():
            features, logits = feature_map_and_logits(net, x)
        h, w = features.shape[2:]
        cam = class_activation_map(features[0].numpy(), net.get_classifier().weight.detach().numpy(), k)
        assert index == k and abs(probs.sum() - 1) < 1e-5
        assert np.allclose(maps["gradcam"] * h * w, np.maximum(cam, 0), atol=1e-4)
        assert maps["gradcam++"].shape == (h, w) and (maps["gradcam++"] >= 0).all()


def test_cli_writes_overlays_for_student_and_teacher(tmp_path):
    from training.cli import main
    teacher = _tiny_run(str(tmp_path / "teacher"), "test_resnet", 96)
    student = _tiny_run(str(tmp_path / "student"), "test_efficientnet", 64, teacher=teacher)
    out = str(tmp_path / "explain")
    assert main(["explain", "--checkpoint", student, "--images"] + _images() + ["--out", out]) == 0
    records = json.load(open(os.path.join(out, "explain.json")))
    assert [os.path.basename(r["image"]) for r in records] == ["Glaucoma_073.png", "2386_right.jpg"]
    for record in records:
        assert sorted(record["networks"]) == ["student", "teacher"]
        for role, info in record["networks"].items():
            assert info["explained"] == info["predicted"] and info["predicted"] in LABELS
            for method, name in info["files"].items():
                assert name.endswith(".{}.{}.jpg".format(role, method.replace("+", "p")))
                assert os.path.getsize(os.path.join(out, name)) > 1000
        assert os.path.isfile(os.path.join(out, record["panel"]))


def test_cli_target_and_method_problems_are_clear(tmp_path, capsys):
    from training.cli import main
    student = _tiny_run(str(tmp_path / "student"), "test_efficientnet", 64)
    out = str(tmp_path / "explain")
    assert main(["explain", "--checkpoint", student, "--images", _images()[0], "--out", out,
                 "--target", "glaucoma", "--methods", "gradcam"]) == 0
    record = json.load(open(os.path.join(out, "explain.json")))[0]["networks"]["student"]
    assert record["explained"] == "glaucoma" and list(record["files"]) == ["gradcam"]
    assert main(["explain", "--checkpoint", student, "--images", _images()[0], "--out", out,
                 "--methods", "lime"]) == 1
    assert "unknown method" in capsys.readouterr().err


def test_feature_map_model_keeps_the_graph_and_adds_one_output():
    from training.export import FEATURES_NAME, feature_map_model
    model = onnx.load(os.path.join(TESTS_DIR, "data", "tiny4.onnx"))
    explained, weight, bias = feature_map_model(model)
    assert [o.name for o in explained.graph.output] == ["logits", FEATURES_NAME]
    assert list(explained.graph.node)[:-1] == list(model.graph.node)
    fc = dict((i.name, onnx.numpy_helper.to_array(i)) for i in model.graph.initializer)
    assert np.array_equal(weight, fc["fc.weight"]) and np.array_equal(bias, fc["fc.bias"])


def test_a_graph_without_global_pooling_is_refused():
    from training.export import FeatureMapError, feature_map_model
    model = onnx.load(os.path.join(TESTS_DIR, "data", "tiny4.onnx"))
    for node in model.graph.node:
        if node.op_type == "ReduceMean":
            node.op_type = "ReduceMax"
    with pytest.raises(FeatureMapError, match="not a global average pool"):
        feature_map_model(model)


def test_cli_bundle_mode_adds_the_feature_map_model_and_leaves_the_rest(tiny_bundle):
    from models.bundle import load_bundle, sha256_file
    from training.cli import main
    before = dict(tiny_bundle.manifest)
    model_sha = sha256_file(tiny_bundle.onnx_path)
    assert main(["explain", "--bundle", tiny_bundle.root, "--parity-images", SAMPLES]) == 0
    bundle = load_bundle(tiny_bundle.root)
    assert sha256_file(bundle.onnx_path) == model_sha
    assert dict((k, v) for k, v in bundle.manifest.items() if k != "explain") == before
    assert bundle.explain["parity"]["images"] == 12 and bundle.explain["parity"]["max_abs_logit_diff"] <= 1e-5
    assert bundle.explain["feature_shape"] == ["N", 8, 16, 16]
