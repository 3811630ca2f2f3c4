"""Regenerate tests/data/tiny4.onnx, the small real model the edge-side tests run, and its
precision variants tiny4.int8.onnx and tiny4.fp16.onnx (made by training/quantize.py, as
`retina-train quantize` makes a bundle's), so the Python 3.6 suite can run them without onnx.

    .venv/bin/python tests/data/make_tiny_onnx.py

A seeded conv -> ReLU -> global average pool -> linear network: input "input"
[N, 3, 32, 32] float32 with a dynamic batch axis, output "logits" [N, 4].
Opset 13 and IR version <= 8, so onnxruntime 1.10 (Python 3.6, JetPack 4.6)
loads it. Needs torch and onnx; the tests themselves need neither.
"""
import io
import os
import sys

import numpy as np
import onnx
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "tiny4.onnx")
# the preprocessing of tests/conftest.py's tiny bundle
SPEC = {"colour_order": "RGB", "roi": {"kind": "fundus_disc", "threshold": 10, "pad": "square"},
        "resize": {"size": [32, 32], "interpolation": "area"}, "scale": 1.0 / 255.0,
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


class Tiny4(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, kernel_size=3, stride=2, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = x.mean(dim=(2, 3))
        return self.fc(x)


def main():
    torch.manual_seed(0)
    net = Tiny4().eval()
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(net, torch.zeros(1, 3, 32, 32), buf, opset_version=13, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                          do_constant_folding=True, dynamo=False)
    model = onnx.load_from_string(buf.getvalue())
    if model.ir_version > 8:
        model.ir_version = 8
    model.producer_name = "retina-edge tests/data/make_tiny_onnx.py"
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    with open(OUT, "wb") as f:
        f.write(data)
    print("wrote {} ({} bytes, IR {}, opset {})".format(OUT, len(data), model.ir_version,
                                                        model.opset_import[0].version))
    write_variants(model)


def write_variants(model):
    """int8 calibrated on the 12 images of samples/fundus through the tiny bundle's preprocessing."""
    root = os.path.dirname(os.path.dirname(HERE))
    sys.path.insert(0, root)
    from edge.io.decode import read_image
    from edge.io.sources import list_images
    from edge.preprocess import prepare
    from training import quantize
    images = np.stack([prepare(read_image(p), SPEC) for p in list_images(os.path.join(root, "samples", "fundus"))])
    options = dict(quantize.DEFAULTS, method="minmax", keep_fp32="")
    int8, _ = quantize.quantize_int8(model, images, SPEC, "input", options, log=lambda *a: None)
    for precision, variant in (("int8", int8), ("fp16", quantize.make_fp16(model, "input"))):
        path = os.path.join(HERE, "tiny4.{}.onnx".format(precision))
        with open(path, "wb") as f:
            f.write(variant.SerializeToString())
        print("wrote {} (IR {})".format(path, variant.ir_version))


if __name__ == "__main__":
    main()
