"""training.engine.fit: accumulation, early stopping, resume, CPU AMP, and the augmentation presets."""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training/ is workstation-only: needs torch")

from training import engine, loop  # noqa: E402

pytestmark = pytest.mark.torch
torch.set_num_threads(1)

MEAN, STD = [0.5] * 3, [0.25] * 3
QUIET = dict(log=lambda *a: None)


def images_and_targets(n=16, side=8):
    rng = np.random.default_rng(2)
    return rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8), rng.integers(0, 2, n)


def linear_task():
    torch.manual_seed(0)
    return engine.Classify(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2)), MEAN, STD)


def bn_dropout_task():
    """BatchNorm (buffers) and dropout (the global RNG): what a resumed run must restore."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Dropout(0.3),
                              torch.nn.Linear(4, 2))
    return engine.Classify(net, MEAN, STD)


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_accumulated_micro_batches_make_the_same_step_as_one_big_batch():
    images, targets = images_and_targets()
    big, small = linear_task(), linear_task()
    engine.fit(big, images, targets, 1, batch_size=8, lr=0.01, augment="none", **QUIET)
    engine.fit(small, images, targets, 1, batch_size=4, accumulate=2, lr=0.01, augment="none", **QUIET)
    moved = (big.net[1].weight - linear_task().net[1].weight).abs().max()
    assert moved > 1e-4  # two optimiser steps happened
    for p, q in zip(big.parameters(), small.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_early_stopping_keeps_the_best_epoch_and_stops_after_patience():
    images, targets = images_and_targets()
    task, scores, seen = linear_task(), [0.40, 0.70, 0.60, 0.65, 0.90], {}

    def on_epoch(epoch):
        seen[epoch] = copy.deepcopy(task.net.state_dict())
        return {"val_balanced_accuracy": scores[epoch - 1]}
    history = engine.fit(task, images, targets, 5, batch_size=4, lr=0.05, patience=2, on_epoch=on_epoch, **QUIET)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]  # epochs 3 and 4 were no better: stop
    assert history.kept["epoch"] == 2 and history.kept["val_balanced_accuracy"] == 0.70
    assert all(torch.equal(task.net.state_dict()[k], v) for k, v in seen[2].items())
    assert not torch.equal(seen[2]["1.weight"], seen[4]["1.weight"])


def test_early_stopping_without_validation_is_refused():
    images, targets = images_and_targets()
    with pytest.raises(ValueError, match="validation"):
        engine.fit(linear_task(), images, targets, 2, batch_size=4, patience=1, **QUIET)


@pytest.mark.parametrize("average", ["none", "ema", "swa"])
def test_a_run_stopped_by_max_steps_and_resumed_ends_with_the_same_weights(tmp_path, average):
    images, targets = images_and_targets()  # 4 steps an epoch; stop at 10 = the middle of epoch 3
    options = dict(batch_size=4, lr=0.05, average=average, swa_start_epoch=2, augment="strong", seed=3, **QUIET)
    whole = bn_dropout_task()
    full = engine.fit(whole, images, targets, 3, **options)
    split = bn_dropout_task()
    first = engine.fit(split, images, targets, 3, max_steps=10, run_dir=str(tmp_path), **options)
    assert first[-1].get("partial") and not same_weights(whole, split)
    resumed = bn_dropout_task()  # a fresh process: nothing but last.pt carries over
    rest = engine.fit(resumed, images, targets, 3, run_dir=str(tmp_path), resume=True, **options)
    assert same_weights(whole, resumed)
    assert [r["epoch"] for r in rest] == [r["epoch"] for r in full] == [1, 2, 3]
    assert rest.kept == full.kept


def test_resume_without_last_pt_names_the_file(tmp_path):
    images, targets = images_and_targets()
    with pytest.raises(FileNotFoundError, match="last.pt"):
        engine.fit(linear_task(), images, targets, 1, run_dir=str(tmp_path), resume=True, **QUIET)


def test_amp_is_a_no_op_on_the_cpu():
    assert loop.resolve_amp("auto", "cpu") == loop.resolve_amp("bf16", "cpu") == "off"
    with pytest.raises(ValueError, match="--amp"):
        loop.resolve_amp("fp8", "cpu")
    images, targets = images_and_targets()
    a, b = linear_task(), linear_task()
    engine.fit(a, images, targets, 1, batch_size=4, amp="off", **QUIET)
    engine.fit(b, images, targets, 1, batch_size=4, amp="fp16", **QUIET)
    assert same_weights(a, b)
    info = loop.hardware("cpu", "fp16")
    assert info["device"] == "cpu" and info["amp"] == "off" and info["cuda_device"] is None
    assert info["torch"] == torch.__version__ and info["cpu_count"] >= 1


def test_unknown_fit_options_are_refused():
    images, targets = images_and_targets()
    with pytest.raises(TypeError, match="accumulate"):
        engine.fit(linear_task(), images, targets, 1, acumulate=2, **QUIET)


def test_augment_presets_are_deterministic_and_strong_is_stronger():
    images, _ = images_and_targets(8, 32)
    plain = engine.augment(images, None, preset="none")
    assert plain.dtype == torch.float32 and plain.shape == (8, 3, 32, 32)
    assert torch.equal(plain, torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)

    def run(preset, seed):
        return engine.augment(images, torch.Generator().manual_seed(seed), preset=preset)
    assert torch.equal(run("strong", 5), run("strong", 5))
    assert not torch.equal(run("strong", 5), run("strong", 6))
    standard, strong = run("standard", 5), run("strong", 5)
    assert 0.0 <= strong.min() and strong.max() <= 1.0
    assert (strong - plain).abs().mean() > (standard - plain).abs().mean()
    with pytest.raises(ValueError, match="--augment"):
        engine.augment(images, None, preset="heavy")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the device machine); CI has none")
def test_augment_on_the_gpu_draws_the_same_views_as_on_the_cpu():
    """Augmentation on the training device: same random draws (CPU generator), same views within float error."""
    images, _ = images_and_targets(8, 64)
    for preset in ("none", "standard", "strong"):
        cpu_gen, gpu_gen = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        cpu = engine.augment(images, cpu_gen, preset=preset)
        gpu = engine.augment(images, gpu_gen, preset=preset, device="cuda")
        assert gpu.device.type == "cuda"
        assert torch.equal(cpu_gen.get_state(), gpu_gen.get_state())
        assert (gpu.cpu() - cpu).abs().max() < 1e-4, preset


def test_a_uint8_tensor_batch_gives_the_views_of_its_numpy_array():
    """What a GPU run passes once the prepared images live on the GPU (engine.resident)."""
    images, _ = images_and_targets(4, 16)
    a = engine.augment(images, torch.Generator().manual_seed(2), preset="standard")
    b = engine.augment(torch.from_numpy(images), torch.Generator().manual_seed(2), preset="standard")
    assert torch.equal(a, b)
    assert engine.resident(images, torch.device("cpu")) is images  # the CPU indexes the array itself


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the device machine); CI has none")
def test_prepared_images_live_on_the_gpu_and_a_run_trains_from_them():
    images, targets = images_and_targets(16, 8)
    on_gpu = engine.resident(images, torch.device("cuda"))
    assert torch.is_tensor(on_gpu) and on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), torch.from_numpy(images))
    engine.fit(linear_task().cuda(), images, targets, 1, batch_size=4, **QUIET)


def test_augment_to_the_cpu_device_is_the_default_path():
    images, _ = images_and_targets(4, 16)
    a = engine.augment(images, torch.Generator().manual_seed(1), preset="strong")
    b = engine.augment(images, torch.Generator().manual_seed(1), preset="strong", device=torch.device("cpu"))
    assert torch.equal(a, b)


def test_standard_preset_is_the_augmentation_the_recipe_always_had():
    """The draws of the standard preset, in order: angle, scale, flip, shift, brightness, contrast."""
    images, _ = images_and_targets(4, 16)
    gen = torch.Generator().manual_seed(9)
    got = engine.augment(images, gen)
    ref = torch.Generator().manual_seed(9)
    angle = (torch.rand(4, generator=ref) * 30 - 15) * np.pi / 180
    scale = 1.0 + (torch.rand(4, generator=ref) * 0.2 - 0.1)
    flip = torch.where(torch.rand(4, generator=ref) < 0.5, -1.0, 1.0)
    shift = (torch.rand(4, 2, generator=ref) * 2 - 1) * 0.05
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                         torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x = torch.nn.functional.grid_sample(x, torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False),
                                        align_corners=False)
    brightness = (1.0 + (torch.rand(4, generator=ref) * 0.4 - 0.2)).view(4, 1, 1, 1)
    contrast = (1.0 + (torch.rand(4, generator=ref) * 0.4 - 0.2)).view(4, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    expected = (((x - mean) * contrast + mean) * brightness).clamp(0, 1)
    assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("mode, shown", [("on", True), ("off", False), ("auto", False)])
def test_a_progress_bar_per_epoch_on_a_terminal_only(monkeypatch, capsys, mode, shown):
    """auto: captured stderr is no terminal, as in CI or a pipe: nothing beyond the log lines."""
    monkeypatch.setenv("RETINA_TRAIN_PROGRESS", mode)
    images, targets = images_and_targets()
    engine.fit(linear_task(), images, targets, 2, batch_size=4, lr=0.01, augment="none", **QUIET)
    err = capsys.readouterr().err
    assert ("epoch 1/2" in err and "epoch 2/2" in err and "/4 [" in err) == shown, err


def test_the_bar_shows_the_figures_it_is_given(monkeypatch):
    import io
    from training import progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    monkeypatch.delenv("RETINA_TRAIN_PROGRESS", raising=False)
    stream = Terminal()
    bar = progress.steps(10, "epoch 3/5", initial=4, stream=stream)
    bar.update(loss=0.123456, img_s=41.5)
    bar.bar.refresh()
    assert "epoch 3/5" in stream.getvalue() and "5/10" in stream.getvalue()
    assert "loss=0.1235" in stream.getvalue() and "img_s=41.5" in stream.getvalue()
    bar.close()
    assert isinstance(progress.steps(10, "x", stream=io.StringIO()), progress.Quiet)  # not a terminal


def test_a_bad_progress_setting_is_named(monkeypatch):
    monkeypatch.setenv("RETINA_TRAIN_PROGRESS", "sometimes")
    images, targets = images_and_targets()
    with pytest.raises(ValueError, match="RETINA_TRAIN_PROGRESS='sometimes': use auto, on or off"):
        engine.fit(linear_task(), images, targets, 1, batch_size=4, **QUIET)
