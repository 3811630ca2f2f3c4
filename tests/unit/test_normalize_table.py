"""edge.preprocess.normalize's lookup tables give bit for bit the arithmetic definition (Python 3.6, no torch)."""
import numpy as np
import pytest

from edge.preprocess import normalize


def arithmetic(prepared, spec):
    """The definition, as the reference wrote it before the tables."""
    batch = prepared[None] if prepared.ndim == 3 else prepared
    if spec["colour_order"] == "BGR":
        batch = batch[..., ::-1]
    x = batch.astype(np.float32) * np.float32(spec["scale"])
    x -= np.asarray(spec["mean"], dtype=np.float32)
    x /= np.asarray(spec["std"], dtype=np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


@pytest.mark.parametrize("order", ["RGB", "BGR"])
@pytest.mark.parametrize("shape", [(224, 224, 3), (3, 40, 56, 3)])
def test_every_byte_value_in_every_channel_matches_the_arithmetic(order, shape):
    spec = {"colour_order": order, "scale": 1.0 / 255.0, "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225]}
    rng = np.random.RandomState(0)
    prepared = rng.randint(0, 256, size=shape).astype(np.uint8)
    prepared.reshape(-1, 3)[:256] = np.arange(256, dtype=np.uint8)[:, None]  # every value, every channel
    got, want = normalize(prepared, spec), arithmetic(prepared, spec)
    assert got.dtype == np.float32 and got.flags["C_CONTIGUOUS"] and got.shape == want.shape
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))  # bits, not closeness


def test_float_input_still_takes_the_arithmetic():
    spec = {"colour_order": "BGR", "scale": 1.0, "mean": [0.1, 0.2, 0.3], "std": [2.0, 3.0, 4.0]}
    prepared = np.random.RandomState(1).rand(8, 8, 3).astype(np.float32)
    assert np.array_equal(normalize(prepared, spec), arithmetic(prepared, spec))
