"""training/quantize.py and training/onnxgraph.py on small real models: the INT8 variant is Q/DQ as
TensorRT's explicit quantization reads it, the FP16 variant is float16 inside with float32 I/O, and both
land in the bundle with their measured agreement. Workstation side: needs onnx (and torch for some)."""
import copy
import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="making variants is workstation-only: needs onnx")
torch = pytest.importorskip("torch", reason="training/ is workstation-only: needs torch")

from onnx import numpy_helper  # noqa: E402

from conftest import _VALID_MANIFEST, LABELS  # noqa: E402
from models.bundle import load_bundle  # noqa: E402
from training import data as datalib, onnxgraph, quantize  # noqa: E402

pytestmark = pytest.mark.torch

OPTIONS = dict(quantize.DEFAULTS, method="minmax", keep_fp32="", calibration_images=24)


@pytest.fixture(scope="module")
def images():
    """Smooth synthetic 32x32 'photographs' (a seeded RNG, blurred): enough spread to calibrate on."""
    rng = np.random.RandomState(0)
    base = rng.randint(0, 256, size=(40, 8, 8, 3)).astype(np.float32)
    return np.repeat(np.repeat(base, 4, axis=1), 4, axis=2).astype(np.uint8)


@pytest.fixture(scope="module")
def spec():
    return copy.deepcopy(_VALID_MANIFEST["preprocess"])


@pytest.fixture(scope="module")
def tiny_model(tiny_onnx_path):
    return onnx.load(tiny_onnx_path)


@pytest.fixture(scope="module")
def int8(tiny_model, images, spec):
    return quantize.quantize_int8(tiny_model, images, spec, "input", OPTIONS, log=lambda *a: None)


def _inits(model):
    return dict((i.name, numpy_helper.to_array(i)) for i in model.graph.initializer)


def test_int8_variant_is_symmetric_per_channel_qdq_for_tensorrt(int8):
    model, record = int8
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") >= 2 and ops.count("DequantizeLinear") >= 4
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) <= 13
    inits = _inits(model)
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zero = inits[node.input[2]]
            assert zero.dtype == np.int8 and not zero.any(), node.name  # int8, zero point 0: symmetric
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    weight_dq = next(n for n in model.graph.node if n.output[0] == conv.input[1])
    assert weight_dq.op_type == "DequantizeLinear"
    q, scale = inits[weight_dq.input[0]], inits[weight_dq.input[1]]
    assert q.dtype == np.int8 and q.shape == (8, 3, 3, 3)
    assert scale.shape == (8,)  # one scale per output channel ...
    assert onnxgraph._attribute(weight_dq, "axis", 1) == 0  # ... along axis 0
    assert np.abs(q).max(axis=(1, 2, 3)).max() == 127 and q.min() >= -127  # symmetric weights use +-127
    assert conv.input[2] in inits and inits[conv.input[2]].dtype == np.float32  # float bias, no int32 Q/DQ
    assert record["nodes"]["per_channel_weights"] == 1
    assert record["keep_fp32"] == ""


def test_int8_variant_tracks_fp32_through_onnxruntime(int8, tiny_model, images, spec):
    reference = quantize.logits_of(tiny_model, "fp32", images, spec, "input", "logits")
    got = quantize.logits_of(int8[0], "int8", images, spec, "input", "logits")
    scale = np.abs(reference).max()
    assert np.abs(got - reference).max() < 0.05 * scale
    targets = reference.argmax(1)
    report = quantize.agreement(reference, got, targets, "val")
    assert report["fp32_accuracy"] == 1.0 and report["images"] == len(images)
    assert report["top1_agreement"] == report["accuracy"] >= 0.9


def test_keep_fp32_leaves_the_chosen_nodes_without_qdq(tiny_model, images, spec):
    options = dict(OPTIONS, keep_fp32="head")
    model, record = quantize.quantize_int8(tiny_model, images, spec, "input", options, log=lambda *a: None)
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    made_by = dict((o, n.op_type) for n in model.graph.node for o in n.output)
    assert made_by.get(gemm.input[1]) != "DequantizeLinear"  # the classifier's weights stay float
    assert record["fp32_nodes"] == 1


def test_check_explicit_int8_refuses_a_zero_point_tensorrt_cannot_take(int8):
    model = onnx.ModelProto()
    model.CopyFrom(int8[0])
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in _inits(model))
    for init in model.graph.initializer:
        if init.name == dq.input[2]:
            init.CopyFrom(numpy_helper.from_array(np.ones(numpy_helper.to_array(init).shape, np.int8), init.name))
    with pytest.raises(ValueError, match="zero point"):
        onnxgraph.check_explicit_int8(model)
    with pytest.raises(ValueError, match="not quantized"):
        onnxgraph.check_explicit_int8(onnx.load(os.path.join(os.path.dirname(__file__), "..", "data", "tiny4.onnx")))


def test_fp16_variant_is_float16_inside_with_float32_io(tiny_model, images, spec):
    half = quantize.make_fp16(tiny_model, "input")
    float32 = onnx.TensorProto.FLOAT
    assert half.graph.input[0].type.tensor_type.elem_type == float32
    assert half.graph.output[0].type.tensor_type.elem_type == float32
    weights = [i for i in half.graph.initializer if len(i.dims) > 1]
    assert weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights)
    casts = [n for n in half.graph.node if n.op_type == "Cast"]
    assert len(casts) == 2  # at the input and at the output
    reference = quantize.logits_of(tiny_model, "fp32", images, spec, "input", "logits")
    got = quantize.logits_of(half, "fp16", images, spec, "input", "logits")
    assert np.abs(got - reference).max() < 1e-2 * max(1.0, np.abs(reference).max())


def test_fold_static_pads_turns_shape_arithmetic_into_constants(images, spec):
    """timm's TF-'same' convolution exports its padding as Shape/Gather/Ceil arithmetic; folding keeps the
    output, drops the zero pad value, and the quantized result passes TensorRT's checks (constant Pad inputs)."""
    import io
    import timm.layers
    torch.manual_seed(0)
    net = torch.nn.Sequential(timm.layers.Conv2dSame(3, 4, 3, stride=2), torch.nn.ReLU6(),
                              timm.layers.Conv2dSame(4, 4, 3, stride=2), torch.nn.ReLU6()).eval()
    buf = io.BytesIO()
    torch.onnx.export(net, torch.zeros(1, 3, 32, 32), buf, opset_version=13, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, dynamo=False)
    model = onnx.load_from_string(buf.getvalue())
    assert "Shape" in [n.op_type for n in model.graph.node]
    folded = onnxgraph.fold_static_pads(model, "input", [1, 3, 32, 32])
    assert set(n.op_type for n in folded.graph.node) <= {"Pad", "Conv", "Clip", "Constant"}
    assert all(len(n.input) == 2 for n in folded.graph.node if n.op_type == "Pad")
    onnx.checker.check_model(folded)
    before = quantize.logits_of(model, "fp32", images, spec, "input", "logits", batch_size=3)  # batch stays free
    after = quantize.logits_of(folded, "fp32", images, spec, "input", "logits", batch_size=3)
    assert np.array_equal(before, after)
    int8, record = quantize.quantize_int8(model, images, spec, "input", OPTIONS, log=lambda *a: None)
    assert record["nodes"]["per_channel_weights"] == 2
    made_by = dict((o, n.op_type) for n in int8.graph.node for o in n.output)
    pads = [n for n in int8.graph.node if n.op_type == "Pad"]
    assert len(pads) == 2 and all(made_by.get(n.input[1]) is None for n in pads)


def test_select_nodes_rules(tiny_model):
    names = [n.name for n in tiny_model.graph.node]
    conv = next(n.name for n in tiny_model.graph.node if n.op_type == "Conv")
    assert onnxgraph.select_nodes(tiny_model, "convs:1") == names[:names.index(conv) + 1]
    assert onnxgraph.select_nodes(tiny_model, "head") == [next(n.name for n in tiny_model.graph.node
                                                               if n.op_type == "Gemm")]
    assert onnxgraph.select_nodes(tiny_model, "") == []
    with pytest.raises(ValueError, match="only 1 convolutions"):
        onnxgraph.select_nodes(tiny_model, "convs:2")
    with pytest.raises(ValueError, match="matches no node"):
        onnxgraph.select_nodes(tiny_model, "/no/such/module")


def test_quantize_bundle_writes_both_variants_and_their_agreement(tiny_bundle, tmp_path, images):
    """The verb's library function on a real (tiny) bundle and a split of real-looking image files."""
    import cv2
    folder = tmp_path / "images"
    samples = []
    for i, image in enumerate(images):
        label = LABELS[i % 4]
        path = str(folder / label / "{:02d}.png".format(i))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        cv2.imwrite(path, cv2.resize(image, (64, 64))[:, :, ::-1])
        samples.append(datalib.Sample(path, label, "image:{}".format(i), ("train", "train", "val")[i % 3]))
    bundle = quantize.quantize_bundle(tiny_bundle.root, samples, dict(OPTIONS, calibration_images=8),
                                      log=lambda *a: None)
    again = load_bundle(bundle.root)  # verifies both variants' sha256
    assert again.precisions == ["fp32", "fp16", "int8"]
    int8 = again.variants["int8"]
    assert int8["kind"] == "qdq-int8" and int8["calibration"]["images"] == 8
    assert int8["calibration"]["split"] == "train" and int8["calibration"]["method"] == "minmax"
    for precision in ("int8", "fp16"):
        a = again.variants[precision]["agreement"]
        assert a["split"] == "val" and a["images"] == sum(s.split == "val" for s in samples)
        assert 0.0 <= a["top1_agreement"] <= 1.0 and a["max_abs_prob_diff"] >= 0.0
        assert "agreement_test" not in again.variants[precision]
    with open(os.path.join(bundle.root, "MODEL_CARD.md")) as f:
        assert "Precision variants" in f.read()


# ---- quantization-aware fine-tuning from the ONNX graph alone (training/qat.py)

def test_onnxnet_runs_the_float_and_the_qdq_graph_like_onnxruntime(tiny_model, int8, images, spec):
    from training import qat
    x = torch.from_numpy(quantize.normalize(images[:8], spec))
    for model, precision in ((tiny_model, "fp32"), (int8[0], "int8")):
        with torch.no_grad():
            got = qat.OnnxNet(model, "input", "logits")(x).numpy()
        expected = quantize.logits_of(model, precision, images[:8], spec, "input", "logits")
        assert np.abs(got - expected).max() < 1e-4, precision


def test_write_back_of_an_untrained_net_changes_nothing(int8):
    from training import qat
    model = int8[0]
    again = qat.OnnxNet(model, "input", "logits").write_back(model)
    assert sorted((i.name, numpy_helper.to_array(i).tobytes()) for i in again.graph.initializer) == \
        sorted((i.name, numpy_helper.to_array(i).tobytes()) for i in model.graph.initializer)


def test_finetuning_moves_the_weights_and_keeps_the_qdq_form(tiny_model, int8, images, spec):
    from training import qat
    tuned = qat.finetune(int8[0], tiny_model, "input", "logits", images, spec, epochs=2, lr=1e-3, batch_size=8,
                         log=lambda *a: None)
    onnxgraph.check_explicit_int8(tuned)
    before, after = _inits(int8[0]), _inits(tuned)
    assert set(before) == set(after)
    assert any(not np.array_equal(before[k], after[k]) for k in before)
    assert [n.op_type for n in tuned.graph.node] == [n.op_type for n in int8[0].graph.node]


def test_finetuned_int8_weights_and_scales_agree_with_what_the_net_computed(tiny_model, int8, images, spec):
    """write_back must store each weight's int8 values with the scale they were rounded with."""
    from training import qat
    net = qat.OnnxNet(int8[0], "input", "logits")
    with torch.no_grad():
        for name, _ in net.weight_dq.values():
            net.params[net.names[name]].mul_(1.3)  # moves every weight's maximum, so every scale must change
        expected = net(torch.from_numpy(quantize.normalize(images[:8], spec))).numpy()
    written = net.write_back(int8[0])
    got = quantize.logits_of(written, "int8", images[:8], spec, "input", "logits")
    assert np.abs(got - expected).max() < 1e-4


# ---- the command line

def _split_csv(tmp_path, fundus_dir, per_class=3):
    path = str(tmp_path / "split.csv")
    with open(path, "w") as f:
        f.write("path,label,group,split\n")
        for label in LABELS:
            names = sorted(os.listdir(os.path.join(fundus_dir, label)))[:per_class]
            for i, name in enumerate(names):
                f.write("{},{},image:{}/{},{}\n".format(os.path.join(fundus_dir, label, name), label, label, name,
                                                        "val" if i == 0 else "train"))
    return path


def _retina_train(args, env):
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-m", "training"] + args, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out.decode(), err.decode()


def test_quantize_command_adds_variants_to_a_bundle(tiny_bundle, tmp_path, fundus_dir, subprocess_env):
    data = _split_csv(tmp_path, fundus_dir)
    code, out, err = _retina_train(["quantize", "--bundle", tiny_bundle.root, "--data", data, "--keep-fp32", "",
                                    "--calibration-images", "6", "--method", "minmax", "--cache-dir", ""],
                                   subprocess_env)
    assert code == 0, err
    assert "int8 on val (4 images): top-1 agreement with fp32" in out
    assert "fp16 on val (4 images)" in out and "model.int8.onnx" in out
    bundle = load_bundle(tiny_bundle.root)
    assert bundle.precisions == ["fp32", "fp16", "int8"]
    assert bundle.variants["int8"]["calibration"]["images"] == 6
    assert bundle.variants["int8"]["command"].startswith("retina-train quantize --bundle")


def test_quantize_refuses_a_split_other_than_the_bundles(tiny_bundle, tmp_path, fundus_dir, subprocess_env):
    import json
    path = os.path.join(tiny_bundle.root, "bundle.json")
    with open(path) as f:
        manifest = json.load(f)
    manifest["provenance"]["data"]["split_sha256"] = "0" * 64
    with open(path, "w") as f:
        json.dump(manifest, f)
    code, out, err = _retina_train(["quantize", "--bundle", tiny_bundle.root, "--data",
                                    _split_csv(tmp_path, fundus_dir)], subprocess_env)
    assert code == 1
    assert "not the split this bundle was trained on" in err and "Traceback" not in err
    assert not os.path.exists(os.path.join(tiny_bundle.root, "model.int8.onnx"))
