"""What training feeds the network at evaluation equals what the device computes, byte for byte.

training.data.prepare_images + training.engine.predict_logits (which normalises with
edge.preprocess.normalize) against edge.preprocess.preprocess(read_image(path), spec),
on real fundus4 images. Workstation side: skipped without torch.
"""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training/ is workstation-only: needs torch")

from conftest import CATARACT_JPG, DR_JPEG, GLAUCOMA_AUGMENTED, GLAUCOMA_PNG, NORMAL_BORDERED  # noqa: E402
from edge.io.decode import read_image
from edge.preprocess import preprocess  # noqa: E402
from training import data as datalib  # noqa: E402
from training import engine  # noqa: E402
from training.inputs import make_spec  # noqa: E402

pytestmark = pytest.mark.torch

IMAGES = [NORMAL_BORDERED, DR_JPEG, GLAUCOMA_PNG, GLAUCOMA_AUGMENTED, CATARACT_JPG]


class Recorder(torch.nn.Module):
    """Stands in for a network: keeps every batch it is given, returns zero logits."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone().contiguous().numpy())
        return torch.zeros(x.shape[0], 4)


@pytest.fixture(scope="module")
def samples(fundus_dir):
    out = []
    for rel in IMAGES:
        label = os.path.basename(os.path.dirname(rel))
        path = os.path.join(fundus_dir, rel)
        out.append(datalib.Sample(path, label, datalib.group_of(path, label), "test"))
    return out


@pytest.mark.parametrize("size, mean, std", [
    (64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # timm ImageNet defaults (resnet18 etc.)
    (48, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),              # Inception-style (tf_efficientnet_lite*)
])
def test_training_eval_input_equals_device_preprocess(samples, size, mean, std):
    spec = make_spec(size, mean, std)
    prepared = datalib.prepare_images(samples, spec, cache_dir=None, log=None)
    assert prepared.shape == (len(samples), size, size, 3) and prepared.dtype == np.uint8
    net = Recorder()
    logits = engine.predict_logits(net, prepared, spec, batch_size=2)  # batches of 2, 2, 1
    assert logits.shape == (len(samples), 4)
    assert [b.shape[0] for b in net.seen] == [2, 2, 1]
    fed = np.concatenate(net.seen)
    device = np.concatenate([preprocess(read_image(s.path), spec) for s in samples])
    assert fed.dtype == device.dtype == np.float32
    assert fed.shape == device.shape == (len(samples), 3, size, size)
    assert fed.tobytes() == device.tobytes()


def test_cached_prepared_images_are_the_same_pixels(tmp_path, samples):
    spec = make_spec(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    cache = str(tmp_path / "cache")
    first = datalib.prepare_images(samples, spec, cache_dir=cache, log=None)
    files = os.listdir(cache)
    assert len(files) == 1 and files[0].startswith("prepared-") and files[0].endswith(".npy")
    second = datalib.prepare_images(samples, spec, cache_dir=cache, log=None)
    assert second.tobytes() == first.tobytes()
    # mean/std do not shape pixels: same cache entry; a different size is a different entry
    assert datalib.cache_key(samples, spec) == datalib.cache_key(samples, make_spec(32, (0, 0, 0), (1, 1, 1)))
    assert datalib.cache_key(samples, spec) != datalib.cache_key(samples, make_spec(40, (0.5,) * 3, (0.5,) * 3))


def test_training_normalize_matches_device_normalize(samples):
    """Training feeds [0, 1] views through engine.Normalize; that must agree with the device's scale/mean/std."""
    spec = make_spec(32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    prepared = datalib.prepare_images(samples, spec, cache_dir=None, log=None)
    views = torch.from_numpy(prepared).permute(0, 3, 1, 2).float().div(255.0)
    trained = engine.Normalize(spec["mean"], spec["std"])(views).numpy()
    device = np.concatenate([preprocess(read_image(s.path), spec) for s in samples])
    np.testing.assert_allclose(trained, device, rtol=0, atol=1e-5)


def test_a_broken_training_image_is_an_error_naming_it(tmp_path, samples):
    bad = str(tmp_path / "broken.jpg")
    with open(bad, "wb") as f:
        f.write(b"")
    rows = list(samples[:1]) + [datalib.Sample(bad, "normal", "image:normal/broken")]
    with pytest.raises(ValueError) as info:
        datalib.prepare_images(rows, make_spec(32, (0.5,) * 3, (0.5,) * 3), cache_dir=None, log=None)
    assert bad in str(info.value) and "while preparing training data" in str(info.value)
