"""torchrun data parallelism (training.distributed): two real CPU processes on the gloo backend, as a user
launches them, and the check that would fail if gradients were not averaged (workstation side)."""
import csv
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training/ is workstation-only: needs torch")
pytestmark = pytest.mark.torch

from conftest import LABELS, REPO_ROOT  # noqa: E402
from training.distributed import shard  # noqa: E402


@pytest.mark.parametrize("n, world", [(10, 2), (11, 2), (7, 3), (4, 4), (3, 1)])
def test_shards_are_equal_cover_everything_and_pad_like_distributed_sampler(n, world):
    order = np.random.RandomState(n).permutation(n)
    parts = [shard(order, r, world) for r in range(world)]
    assert len({len(p) for p in parts}) == 1 and len(parts[0]) == -(-n // world)
    assert set(np.concatenate(parts)) == set(order)
    padded = np.concatenate([order, order[:len(parts[0]) * world - n]])
    assert [list(p) for p in parts] == [list(padded[r::world]) for r in range(world)]
    # torch's own sampler, fed the same permutation, gives the same parts
    sampler = [list(torch.utils.data.DistributedSampler(range(n), world, r, shuffle=False)) for r in range(world)]
    assert [list(order[s]) for s in sampler] == [list(p) for p in parts]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def split_csv(fundus_dir, path, train_per_class, test_per_class=0):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "group", "split"])
        for label in LABELS:
            names = sorted(os.listdir(os.path.join(fundus_dir, label)))[::9][:train_per_class + test_per_class]
            for i, name in enumerate(names):
                writer.writerow([os.path.join(fundus_dir, label, name), label, label + name,
                                 "train" if i < train_per_class else "test"])


def retina_train(argv, cwd, processes=1):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    launch = [sys.executable, "-m", "training"] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_addr",
        "127.0.0.1", "--master_port", free_port(), "-m", "training"]
    proc = subprocess.Popen(launch + argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.communicate(timeout=600)[0].decode("utf-8", "replace")
    if processes > 1 and proc.returncode and ("gloo" in out.lower() and "connect" in out.lower()):
        pytest.skip("gloo cannot start here: " + out[-500:])
    assert proc.returncode == 0, out[-4000:]
    return out


def weights(run_dir):
    return torch.load(os.path.join(run_dir, "checkpoint.pt"), map_location="cpu", weights_only=False)["state_dict"]


def differing(a, b, atol=1e-5):
    """The fraction of weights that differ. AdamW's first step is about lr x sign(gradient), so a gradient
    within float noise of 0 (summed in another order by two processes) may flip a weight by 2 x lr: a few
    in a million do; a different gradient moves a large part of them."""
    total = bad = 0
    for key in a:
        d = (a[key].float() - b[key].float()).abs()
        total, bad = total + d.numel(), bad + int((d > atol).sum())
    return bad / float(total)


def test_two_processes_take_one_step_exactly_as_one_process_with_both_batches(tmp_path, fundus_dir):
    """ConvNeXtV2 (LayerNorm: nothing couples the images of a batch), no augmentation, 4 training images:
    one process with batch 4 and two with batch 2 each must end with the same weights after one step, which
    only holds if the two processes' gradients are averaged."""
    data = str(tmp_path / "four.csv")
    split_csv(fundus_dir, data, train_per_class=1)
    common = ["teacher", "--data", data, "--model", "convnextv2_atto", "--weights", "none", "--image-size", "32",
              "--epochs", "1", "--augment", "none", "--label-smoothing", "0", "--lr", "0.01", "--cache-dir",
              str(tmp_path / "cache")]
    retina_train(common + ["--batch-size", "4", "--out", str(tmp_path / "one")], str(tmp_path))
    out = retina_train(common + ["--batch-size", "2", "--out", str(tmp_path / "two")], str(tmp_path), processes=2)
    assert differing(weights(str(tmp_path / "one")), weights(str(tmp_path / "two"))) < 1e-4
    with open(os.path.join(str(tmp_path / "two"), "config.json")) as f:
        hardware = json.load(f)["hardware"]
    assert hardware["processes"] == 2 and hardware["backend"] == "gloo"
    assert "2 processes (gloo), an optimiser step sees 2 x 2 x 1 images" in out
    # one log, one run folder: process 1 stayed quiet
    assert out.count("saved {}".format(os.path.join(str(tmp_path / "two"), "checkpoint.pt"))) == 1
    assert out.count("epoch 1/1:") == 1


def test_halving_the_batch_without_a_second_process_is_a_different_step(tmp_path, fundus_dir):
    """The counter-check: the equality above is not something any two runs would show."""
    data = str(tmp_path / "four.csv")
    split_csv(fundus_dir, data, train_per_class=1)
    common = ["teacher", "--data", data, "--model", "convnextv2_atto", "--weights", "none", "--image-size", "32",
              "--epochs", "1", "--augment", "none", "--label-smoothing", "0", "--lr", "0.01", "--cache-dir", ""]
    retina_train(common + ["--batch-size", "4", "--out", str(tmp_path / "four")], str(tmp_path))
    retina_train(common + ["--batch-size", "2", "--max-steps", "1", "--out", str(tmp_path / "two")], str(tmp_path))
    assert differing(weights(str(tmp_path / "four")), weights(str(tmp_path / "two"))) > 1e-2


def teacher_then_distil_under_torchrun(tmp_path, fundus_dir, teacher, train_per_class, distil_options):
    """A one-process teacher on a few real images, then a two-process distil from it; returns its output."""
    data = str(tmp_path / "small.csv")
    split_csv(fundus_dir, data, train_per_class=train_per_class, test_per_class=1)
    base = ["--data", data, "--weights", "none", "--image-size", "32", "--epochs", "1", "--batch-size", "2",
            "--cache-dir", str(tmp_path / "cache")]
    retina_train(["teacher", "--model", teacher, "--out", str(tmp_path / "t")] + base, str(tmp_path))
    return retina_train(["distil", "--teacher", str(tmp_path / "t"), "--model", "mobilenetv2_050", "--out",
                         str(tmp_path / "s")] + base + list(distil_options), str(tmp_path), processes=2)


def test_a_distilled_student_under_torchrun_with_accumulation(tmp_path, fundus_dir):
    out = teacher_then_distil_under_torchrun(tmp_path, fundus_dir, "resnet18", 3,
                                             ["--accumulate", "2", "--average", "ema"])
    assert os.path.isfile(os.path.join(str(tmp_path / "s"), "checkpoint.pt"))
    assert os.path.isfile(os.path.join(str(tmp_path / "s"), "last.pt"))
    assert out.count("test split (") == 1


def test_pretraining_under_torchrun(tmp_path, fundus_dir):
    data = str(tmp_path / "small.csv")
    split_csv(fundus_dir, data, train_per_class=2, test_per_class=1)
    out = retina_train(["pretrain", "--data", data, "--model", "convnextv2_atto", "--image-size", "64",
                        "--epochs", "2", "--batch-size", "2", "--decoder-dim", "32", "--cache-dir",
                        str(tmp_path / "cache"), "--out", str(tmp_path / "pre")], str(tmp_path), processes=2)
    with open(os.path.join(str(tmp_path / "pre"), "config.json")) as f:
        config = json.load(f)
    assert config["hardware"]["processes"] == 2 and config["steps"] == 4  # 8 images: 4 per process, batch 2
    assert out.count("epoch   2") == 1 and os.path.isfile(os.path.join(str(tmp_path / "pre"), "encoder.pt"))


def test_a_torchrun_run_stopped_and_resumed_ends_like_the_unbroken_one(tmp_path, fundus_dir):
    data = str(tmp_path / "eight.csv")
    split_csv(fundus_dir, data, train_per_class=2)
    common = ["teacher", "--data", data, "--model", "convnextv2_atto", "--weights", "none", "--image-size", "32",
              "--epochs", "2", "--batch-size", "2", "--cache-dir", str(tmp_path / "cache")]  # augmented, per process
    retina_train(common + ["--out", str(tmp_path / "whole")], str(tmp_path), processes=2)
    retina_train(common + ["--out", str(tmp_path / "parts"), "--max-steps", "3"], str(tmp_path), processes=2)
    out = retina_train(common + ["--out", str(tmp_path / "parts"), "--resume"], str(tmp_path), processes=2)
    assert out.count("resumed ") == 1 and "at epoch 1 step 3 (mid-epoch)" in out
    assert differing(weights(str(tmp_path / "whole")), weights(str(tmp_path / "parts")), atol=1e-6) == 0
    state = torch.load(os.path.join(str(tmp_path / "parts"), "last.pt"), map_location="cpu", weights_only=False)
    assert state["processes"] == 2 and not torch.equal(state["generators"][0], state["generators"][1])
    with pytest.raises(AssertionError, match="written by 2 process"):  # one process cannot take it over
        retina_train(common + ["--out", str(tmp_path / "parts"), "--resume"], str(tmp_path))


def test_a_torchrun_pretraining_stopped_and_resumed_ends_like_the_unbroken_one(tmp_path, fundus_dir):
    """Each process's views and masks go on from its own saved generator (they were reseeded, so a resumed
    pretraining drew other views than the unbroken one)."""
    data = str(tmp_path / "eight.csv")
    split_csv(fundus_dir, data, train_per_class=2)
    common = ["pretrain", "--data", data, "--model", "convnextv2_atto", "--image-size", "64", "--epochs", "2",
              "--batch-size", "2", "--decoder-dim", "32", "--augment", "standard",
              "--cache-dir", str(tmp_path / "cache")]
    retina_train(common + ["--out", str(tmp_path / "whole")], str(tmp_path), processes=2)
    retina_train(common + ["--out", str(tmp_path / "parts"), "--max-steps", "3"], str(tmp_path), processes=2)
    out = retina_train(common + ["--out", str(tmp_path / "parts"), "--resume"], str(tmp_path), processes=2)
    assert out.count("resumed ") == 1
    whole, parts = [torch.load(os.path.join(str(tmp_path / d), "encoder.pt"), map_location="cpu",
                               weights_only=False) for d in ("whole", "parts")]
    whole, parts = [w.get("state_dict", w) for w in (whole, parts)]
    assert differing(whole, parts, atol=1e-6) == 0
    state = torch.load(os.path.join(str(tmp_path / "parts"), "last.pt"), map_location="cpu", weights_only=False)
    assert state["processes"] == 2 and not torch.equal(state["generators"][0], state["generators"][1])


def test_a_bad_image_fails_every_process_at_once_naming_the_file(tmp_path, fundus_dir):
    """Process 0 prepares the images while the others wait at a barrier: its error must end the whole run
    (torchrun stops the waiting processes), not leave them waiting."""
    data = str(tmp_path / "bad.csv")
    split_csv(fundus_dir, data, train_per_class=2)
    broken = tmp_path / "broken_eye.jpg"
    broken.write_bytes(b"not a jpeg at all")
    with open(data, "a") as f:
        f.write("{},normal,broken,train\n".format(broken))
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", free_port(), "-m", "training", "teacher", "--data", data, "--model", "test_resnet",
           "--weights", "none", "--image-size", "32", "--epochs", "1", "--batch-size", "2",
           "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "t")]
    proc = subprocess.Popen(cmd, cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out = proc.communicate(timeout=180)[0].decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("a torchrun run with a bad image hung instead of failing")
    assert proc.returncode != 0 and "broken_eye.jpg" in out, out[-3000:]
    assert not os.path.exists(os.path.join(str(tmp_path / "t"), "checkpoint.pt"))


def test_cross_architecture_kd_terms_train_under_torchrun(tmp_path, fundus_dir):
    """A ViT teacher and the GL projector + adversarial discriminator (gradient reversal) as DDP parameters:
    every process must use them all each step, or DDP stops with an unfinished-reduction error."""
    out = teacher_then_distil_under_torchrun(tmp_path, fundus_dir, "test_vit", 2,
                                             ["--kd-config", "logits+gl+adversarial", "--epochs", "2"])
    assert os.path.isfile(os.path.join(str(tmp_path / "s"), "checkpoint.pt"))
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2 and all(" gl=" in e and " adversarial=" in e for e in epoch_lines), epoch_lines
