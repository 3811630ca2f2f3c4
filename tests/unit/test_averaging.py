"""training.averaging through engine.fit: the averaged weights are the ones kept, BatchNorm re-estimated."""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training/ is workstation-only: needs torch")

from torch.optim.swa_utils import update_bn  # noqa: E402

from training import averaging, engine  # noqa: E402

pytestmark = pytest.mark.torch
torch.set_num_threads(1)

MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


def tiny_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))


def data(n=16):
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), rng.integers(0, 2, n)


def snapshots_of(net, store):
    """An on_epoch that records the network as it stands when the epoch ends."""
    def on_epoch(epoch):
        store[epoch] = copy.deepcopy(net.state_dict())
        return {}
    return on_epoch


def test_swa_keeps_the_running_average_of_its_snapshots_and_recomputes_batchnorm():
    net, (images, targets), seen = tiny_net(), data(), {}
    task = engine.Classify(net, MEAN, STD)
    history = engine.fit(task, images, targets, epochs=4, batch_size=4, lr=0.05, average="swa",
                         swa_start_epoch=2, on_epoch=snapshots_of(net, seen), log=lambda *a: None)
    assert history.kept["snapshots"] == 3 and history.kept["epochs"] == [2, 3, 4]
    final = net.state_dict()
    for name, _ in net.named_parameters():
        expected = sum(seen[e][name] for e in (2, 3, 4)) / 3
        assert torch.allclose(final[name], expected, atol=1e-6), name
        assert not torch.allclose(final[name], seen[4][name])  # not the last iterate
    # BatchNorm statistics: not the last snapshot's, but those of the averaged weights over the training images
    assert not torch.allclose(final["1.running_mean"], seen[4]["1.running_mean"])
    reference = copy.deepcopy(net)
    views = engine.augment(images, None, preset="none")
    normalise = engine.Normalize(MEAN, STD)
    update_bn([normalise(views[i:i + 4]) for i in range(0, len(views), 4)], reference)
    assert torch.allclose(final["1.running_mean"], reference[1].running_mean, atol=1e-6)
    assert torch.allclose(final["1.running_var"], reference[1].running_var, atol=1e-5)
    assert history.kept["bn_recomputed_images"] == len(images)


def test_ema_update_formula_and_swap_in_for_validation():
    net = tiny_net()
    ema = averaging.create("ema", net, ema_decay=0.9)
    before = copy.deepcopy(net.state_dict())
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
        net[1].running_mean.add_(2.0)
    ema.after_step(net)
    now = net.state_dict()
    for name in ("0.weight", "5.bias", "1.running_mean", "1.running_var"):
        assert torch.allclose(ema.shadow[name], 0.9 * before[name] + 0.1 * now[name]), name
    with ema.applied(net):  # validation sees the EMA weights ...
        assert torch.allclose(net[0].weight, ema.shadow["0.weight"])
    assert torch.allclose(net[0].weight, now["0.weight"])  # ... and training goes on with its own
    ema.finish(net)
    assert torch.allclose(net[0].weight, ema.shadow["0.weight"])


def test_fit_with_ema_keeps_the_ema_weights(monkeypatch):
    net, (images, targets) = tiny_net(), data()
    task = engine.Classify(net, MEAN, STD)
    shadow, original = {}, averaging.EMA.finish

    def spy(self, module, *a, **k):
        shadow.update({name: v.clone() for name, v in self.shadow.items()})
        return original(self, module, *a, **k)
    monkeypatch.setattr(averaging.EMA, "finish", spy)
    history = engine.fit(task, images, targets, epochs=2, batch_size=4, lr=0.05, average="ema",
                         ema_decay=0.5, log=lambda *a: None)
    assert history.kept["kept"] == "averaged weights" and history.kept["updates"] == 8
    assert all(torch.equal(net.state_dict()[k], v) for k, v in shadow.items())


def test_swa_that_never_started_says_so_and_keeps_the_last_weights():
    net, (images, targets) = tiny_net(), data()
    history = engine.fit(engine.Classify(net, MEAN, STD), images, targets, epochs=3, batch_size=4,
                         average="swa", swa_start_epoch=3, max_steps=2, log=lambda *a: None)
    assert history.kept["kept"] == "last weights" and history.kept["snapshots"] == 0


def test_bad_averaging_options_are_refused():
    with pytest.raises(ValueError, match="--average"):
        averaging.create("polyak", tiny_net())
    with pytest.raises(ValueError, match="--ema-decay"):
        averaging.create("ema", tiny_net(), ema_decay=1.0)
    images, targets = data()
    with pytest.raises(ValueError, match="choose one"):
        engine.fit(engine.Classify(tiny_net(), MEAN, STD), images, targets, 2, average="swa", patience=2,
                   on_epoch=lambda e: {"val_balanced_accuracy": 0.5}, log=lambda *a: None)
