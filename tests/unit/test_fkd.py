"""training.fkd: the cached view is the view the teacher saw, bit for bit, with the teacher's probabilities."""
import json

import pytest

np = pytest.importorskip("numpy")
torch = pytest.importorskip("torch", reason="training/ is workstation-only: needs torch")
pytestmark = pytest.mark.torch

import torch.nn.functional as F  # noqa: E402

from training import engine, fkd  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def images(n=6, size=32, seed=0):
    return np.random.RandomState(seed).randint(0, 256, size=(n, size, size, 3), dtype=np.uint8)


class Recorder(torch.nn.Module):
    """A small real network that keeps every batch of views it is shown."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                       torch.nn.Linear(4, 4))
        self.seen = []

    def forward(self, x):
        self.seen.append(x.clone())
        return self.net(x) * 10


def test_sample_and_apply_mirror_engine_augment_bit_for_bit():
    batch = images()
    expected = engine.augment(batch, torch.Generator().manual_seed(3))
    params = fkd.sample_view_params(len(batch), torch.Generator().manual_seed(3))
    assert params.shape == (len(batch), len(fkd.PARAM_NAMES))
    assert torch.equal(fkd.apply_view(batch, params), expected)


def test_replayed_views_are_the_views_the_teacher_saw_and_probs_are_its_softmax(tmp_path):
    batch, teacher = images(7), Recorder()
    params, probs = fkd.build(teacher, batch, epochs=2, temperature=4.0, batch_size=3, seed=5, log=lambda *_: None)
    assert params.dtype == np.float32 and probs.dtype == np.float16 and probs.shape == (2, 7, 4)
    path = str(tmp_path / "soft.npz")
    fkd.save(path, params, probs, {"paths": [], "temperature": 4.0, "image_size": 32, "labels": []})
    cache = fkd.Cache(path)
    shown = torch.cat(teacher.seen).view(2, 7, 3, 32, 32)  # epoch-major, images in order
    for epoch in range(2):
        idx = np.array([5, 0, 3])  # another batching than the teacher's
        views, p_t = cache.views(epoch, batch, idx)
        assert torch.equal(views, shown[epoch, idx])
        with torch.no_grad():
            expected = F.softmax(teacher.net(shown[epoch, idx]) * 10 / 4.0, dim=1)
        assert torch.allclose(p_t, expected, atol=1e-3)  # float16
        assert not torch.allclose(p_t, F.softmax(teacher.net(shown[epoch, idx]) * 10, dim=1), atol=1e-3)
    assert not torch.equal(shown[0], shown[1])  # each epoch has its own views
    assert torch.equal(cache.views(2, batch, idx)[0], cache.views(0, batch, idx)[0])  # cycles past the last


def test_a_cache_for_other_images_or_another_temperature_is_refused(tmp_path):
    path = str(tmp_path / "soft.npz")
    fkd.save(path, np.zeros((1, 2, 7), np.float32), np.zeros((1, 2, 4), np.float16),
             {"paths": ["/a.jpg", "/b.jpg"], "temperature": 4.0, "image_size": 32, "labels": []})
    cache = fkd.Cache(path)
    cache.check(["/a.jpg", "/b.jpg"], 4.0, 32)
    with pytest.raises(ValueError, match="other training images"):
        cache.check(["/a.jpg", "/c.jpg"], 4.0, 32)
    with pytest.raises(ValueError, match="T=4.0"):
        cache.check(["/a.jpg", "/b.jpg"], 2.0, 32)
    with pytest.raises(ValueError, match="32 px"):
        cache.check(["/a.jpg", "/b.jpg"], 4.0, 64)
    with pytest.raises(FileNotFoundError, match="no soft-label cache"):
        fkd.Cache(str(tmp_path / "missing.npz"))


def test_replay_fit_trains_on_the_cached_views_and_labels(tmp_path):
    batch, targets = images(8), np.array([0, 1, 2, 3] * 2)
    params, probs = fkd.build(Recorder(), batch, epochs=1, temperature=4.0, log=lambda *_: None)
    path = str(tmp_path / "soft.npz")
    fkd.save(path, params, probs, {"paths": [], "temperature": 4.0, "image_size": 32, "labels": []})
    student = Recorder()
    task = fkd.SoftLabelDistill(student, [0.5] * 3, [0.5] * 3)
    before = [p.clone() for p in student.parameters()]
    history = fkd.replay_fit(task, batch, targets, 2, batch_size=4, cache=fkd.Cache(path), log=lambda *_: None)
    assert len(history) == 2 and {"ce", "kd", "loss"} <= set(history[0])
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
    shown = torch.cat(student.seen[:2])  # epoch 1: two batches of 4 views, each a cached view
    cached = fkd.apply_view(batch, torch.from_numpy(params[0]))
    normed = (cached - 0.5) / 0.5
    assert all(any(torch.equal(v, c) for c in normed) for v in shown)
    json.dumps(history)
