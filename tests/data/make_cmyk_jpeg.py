"""Make tests/data/cmyk.jpg: a CMYK JPEG (Adobe APP14, inverted CMYK as Photoshop and Pillow write it).

OpenCV cannot write CMYK JPEGs and Pillow is not in the Python 3.6 stack, so the
file is made once with Pillow and committed; the tests compare its decoding with
tests/synthetic.py's upright_pattern, the picture it was made from.

    python tests/data/make_cmyk_jpeg.py
"""
import os
import sys

from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from synthetic import upright_pattern  # noqa: E402

Image.fromarray(upright_pattern()).convert("CMYK").save(os.path.join(HERE, "cmyk.jpg"), quality=95)
