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
    """A manifest preprocess section; the defaults are the shipped bundle's. ``roi``: a kind (with
    ``threshold``) or a whole roi object; a GREY colour order keeps the first mean/std value."""
    if not isinstance(roi, dict):
        roi = {"kind": roi, "threshold": threshold, "pad": "square"}
    channels = 1 if colour_order == "GREY" else 3
    return {"colour_order": colour_order, "roi": dict(roi),
            "resize": {"size": list(size), "interpolation": interpolation},
            "scale": 0.00392156862745098, "mean": list(mean)[:channels], "std": list(std)[:channels]}


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


def band_image(h, w, band, value=90, background=6, colour=False):
    """Rows ``band`` (start, stop) at ``value`` over a dark background, with a little texture; RGB."""
    rng = np.random.RandomState(h + 31 * w)
    grey = np.full((h, w), background, np.int32) + rng.randint(0, 4, (h, w))
    grey[band[0]:band[1]] += value - background
    img = np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
    if colour:
        img[..., 0] = np.clip(img[..., 0].astype(np.int32) * 5 // 4, 0, 255)
        img[..., 2] //= 2
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
