"""Images, manifests and comparisons shared by the kernel's host-emulation and GPU tests."""
import os

import cv2
import numpy as np

from conftest import DR_JPEG, GLAUCOMA_AUGMENTED, GLAUCOMA_PNG, NORMAL_BORDERED
from edge.preprocess import preprocess

# Every size in ../shared/data/fundus4 (a scan of all 3,406 files finds exactly these four), two
# real images each.
REAL_BY_SIZE = {
    (400, 400): [NORMAL_BORDERED, DR_JPEG],
    (256, 256): [GLAUCOMA_AUGMENTED, os.path.join("cataract", "_100_334408.jpg")],
    (266, 400): [GLAUCOMA_PNG, os.path.join("cataract", "cataract_002.png")],
    (264, 400): [os.path.join("glaucoma", "Glaucoma_012.png"), os.path.join("cataract", "cataract_005.png")],
}
REAL = [(size, rel) for size, rels in sorted(REAL_BY_SIZE.items()) for rel in rels]
REAL_IDS = ["{}x{}-{}".format(s[0], s[1], os.path.basename(r)) for s, r in REAL]


def make_spec(size=(224, 224), interpolation="area", roi="fundus_disc", colour_order="RGB", threshold=10,
              mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)):
    """A manifest preprocess section; the defaults are the shipped bundle's."""
    return {"colour_order": colour_order, "roi": {"kind": roi, "threshold": threshold, "pad": "square"},
            "resize": {"size": list(size), "interpolation": interpolation},
            "scale": 0.00392156862745098, "mean": list(mean), "std": list(std)}


def reference(rgb, spec, dtype=np.float32):
    return preprocess(rgb, spec).astype(dtype)


def assert_identical(got, want):
    """Bit for bit, with a count of the differences when not."""
    assert got.shape == want.shape and got.dtype == want.dtype
    if not np.array_equal(got.view(np.uint8), want.view(np.uint8)):
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        raise AssertionError("{} of {} values differ (max |diff| {})".format(int((diff > 0).sum()), diff.size,
                                                                             diff.max()))


def with_pitch(image, extra_bytes, fill=255):
    """The same pixels in rows of width*channels + extra_bytes bytes, the padding filled with ``fill``."""
    h, w = image.shape[:2]
    c = 1 if image.ndim == 2 else image.shape[2]
    pitch = w * c + extra_bytes
    storage = np.full((h, pitch), fill, np.uint8)
    shape, strides = ((h, w), (pitch, 1)) if image.ndim == 2 else ((h, w, c), (pitch, c, 1))
    view = np.ndarray(shape, np.uint8, storage, 0, strides)
    view[...] = image
    return view


def disc_image(h, w, radius, centre=None, colour=(200, 120, 60), noise=0):
    """A black frame (optionally with dark noise) and one bright disc, RGB."""
    img = np.zeros((h, w, 3), np.uint8)
    if noise:
        img[:] = np.random.RandomState(h * 7 + w).randint(0, noise, (h, w, 3))
    cv2.circle(img, centre or (w // 2, h // 2), radius, colour, thickness=-1)
    return img


# name -> a function making the image (made when a test asks, not at import)
SYNTHETIC = {
    "all-black": lambda: np.zeros((120, 90, 3), np.uint8),
    "1x1": lambda: np.full((1, 1, 3), 200, np.uint8),
    "2x3": lambda: np.arange(18, dtype=np.uint8).reshape(2, 3, 3) * 14,
    "wide-9x700": lambda: disc_image(9, 700, 4),
    "tall-700x9": lambda: disc_image(700, 9, 4),
    "small-disc-under-10%": lambda: disc_image(300, 300, 20),
    "noisy-border": lambda: disc_image(333, 517, 150, noise=25),
    "disc-off-centre": lambda: disc_image(480, 640, 200, centre=(180, 300)),
    "exact-2x-448": lambda: disc_image(448, 448, 300),      # the disc fills the frame: 448 -> 224 is 2x
    "exact-3x-672": lambda: disc_image(672, 672, 400),
    "large-1500x2000": lambda: disc_image(1500, 2000, 700, noise=12),
}
