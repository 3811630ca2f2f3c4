"""Regenerate tests/data/tiny4.onnx, the small real model the edge-side tests run.

    /work/venv/bin/python tests/data/make_tiny_onnx.py

A seeded conv -> ReLU -> global average pool -> linear network: input "input"
[N, 3, 32, 32] float32 with a dynamic batch axis, output "logits" [N, 4].
Opset 13 and IR version <= 8, so onnxruntime 1.10 (Python 3.6, JetPack 4.6)
loads it. Needs torch and onnx; the tests themselves need neither.
"""
import io
import os

import onnx
import torch
from torch import nn

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny4.onnx")


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


if __name__ == "__main__":
    main()
