"""retina-train teacher end to end on a few real images: the saved checkpoint holds the averaged weights,
the run records its hardware, and a run stopped by --max-steps and --resume'd ends where an uninterrupted one does."""
import json
import os

import pytest

torch = pytest.importorskip("torch", reason="training/ is workstation-only: needs torch")
pytest.importorskip("timm", reason="the recipe trains timm models")

from training import cli  # noqa: E402
from training.data import scan_folder, write_manifest  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def split_csv(fundus_dir, tmp_path_factory):
    """16 real images, 4 per class from 16 different groups: 2 train, 1 val, 1 test per class."""
    chosen, groups = [], set()
    for s in sorted(scan_folder(fundus_dir), key=lambda s: (s.label, s.path)):
        taken = sum(c.label == s.label for c in chosen)
        if taken < 4 and s.group not in groups:
            groups.add(s.group)
            chosen.append(s._replace(split=("train", "train", "val", "test")[taken]))
    path = str(tmp_path_factory.mktemp("split") / "split.csv")
    write_manifest(chosen, path)
    return path


def teacher(split_csv, out, cache, *extra):
    argv = ["teacher", "--data", split_csv, "--model", "test_resnet", "--weights", "none", "--image-size", "32",
            "--epochs", "3", "--batch-size", "4", "--lr", "0.01", "--cache-dir", cache, "--out", out,
            "--average", "swa", "--swa-start-epoch", "2", "--loss", "focal", "--class-weights", "balanced",
            "--augment", "strong"] + list(extra)
    torch.set_num_threads(1)  # the recipe asks for every core; this machine is shared
    assert cli.main(argv) == 0
    torch.set_num_threads(1)
    return torch.load(os.path.join(out, "checkpoint.pt"), map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def swa_run(split_csv, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    out = str(root / "teacher")
    return out, teacher(split_csv, out, str(root / "cache")), str(root / "cache")


def test_the_saved_checkpoint_holds_the_swa_average_with_recomputed_batchnorm(swa_run):
    out, ckpt, _ = swa_run
    last = torch.load(os.path.join(out, "last.pt"), map_location="cpu", weights_only=False)
    average = last["averaging"]["state"]["average"]
    assert last["averaging"]["state"]["epochs"] == [2, 3]
    params = [k for k in average]
    assert params and all(torch.allclose(ckpt["state_dict"][k], average[k]) for k in params)
    last_iterate = {k[len("net."):]: v for k, v in last["task"].items() if k.startswith("net.")}
    assert any(not torch.allclose(ckpt["state_dict"][k], last_iterate[k]) for k in params)
    bn_means = [k for k in ckpt["state_dict"] if k.endswith("running_mean")]
    assert bn_means and all(not torch.allclose(ckpt["state_dict"][k], last_iterate[k]) for k in bn_means)
    with open(os.path.join(out, "metrics.json")) as f:
        kept = json.load(f)["kept"]
    assert kept["kept"] == "averaged weights" and kept["snapshots"] == 2 and kept["bn_recomputed_images"] == 8


def test_the_config_records_the_hardware_and_the_loss_used(swa_run):
    out, ckpt, _ = swa_run
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    hardware = config["hardware"]
    assert hardware["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert hardware["torch"] == torch.__version__ and hardware["cpu_count"] == os.cpu_count()
    assert hardware["amp"] in ("off", "bf16", "fp16") and "cuda_device" in hardware
    if not torch.cuda.is_available():
        assert hardware["amp"] == "off" and hardware["cuda_device"] is None
    assert config["loss"] == "focal" and config["label_smoothing"] == 0.0 and config["class_weights"] == "balanced"
    assert ckpt["config"]["hardware"] == hardware


def test_a_run_stopped_by_max_steps_then_resumed_saves_the_same_weights(swa_run, split_csv, tmp_path):
    _, whole, cache = swa_run
    out = str(tmp_path / "stopped")
    stopped = teacher(split_csv, out, cache, "--max-steps", "3")  # 2 steps an epoch: stops in epoch 2
    assert stopped["metrics"]["kept"]["snapshots"] == 0
    resumed = teacher(split_csv, out, cache, "--resume")
    for k, v in whole["state_dict"].items():
        assert torch.equal(resumed["state_dict"][k], v), k
