"""Regenerate tests/data/tiny4.cam.onnx and tiny4.classifier.json: tiny4.onnx with its feature map
(the ReLU output before the mean, 8 x 16 x 16) as a second output, and its final layer's weights,
made by training/export.py's ``feature_map_model`` as `retina-train explain --bundle` makes a
bundle's, so the Python 3.6 suite can run --explain without onnx.

    .venv/bin/python tests/data/make_tiny_cam.py
"""
import os
import sys

import onnx

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from training.export import classifier_json, feature_map_model  # noqa: E402


LABELS = ["cataract", "diabetic_retinopathy", "glaucoma", "normal"]  # tests/conftest.py's tiny bundle


def main():
    model, weight, bias = feature_map_model(onnx.load(os.path.join(HERE, "tiny4.onnx")))
    for name, data in (("tiny4.cam.onnx", model.SerializeToString()), ("tiny4.classifier.json",
                                                                       classifier_json(weight, bias, LABELS))):
        with open(os.path.join(HERE, name), "wb") as f:
            f.write(data)
        print("wrote {} ({} bytes)".format(os.path.join(HERE, name), len(data)))


if __name__ == "__main__":
    main()
