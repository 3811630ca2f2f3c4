"""training.nets.create_model: the three ways a ViT or ConvNeXt-V2 teacher gets its starting weights.

``hub`` goes through timm's own pretrained loading (pretrained cfg, classifier
reset, filters) with only the download replaced: timm 1.x fetches hub weights in
``timm.models._builder.load_pretrained`` through ``load_state_dict_from_hf``, which
this test swaps for a function returning a state dict made here. No network.
"""
import pytest

torch = pytest.importorskip("torch", reason="training/ is workstation-only: needs torch")
timm = pytest.importorskip("timm", reason="training/ is workstation-only: needs timm")

import timm.models._builder as timm_builder  # noqa: E402

from training import nets  # noqa: E402

pytestmark = pytest.mark.torch
torch.set_num_threads(1)

# (model, input side it is built for, a backbone tensor to compare, its classifier prefix)
TEACHERS = [("test_vit", 160, "blocks.0.attn.qkv.weight", "head"),
            ("convnextv2_atto", 64, "stages.0.blocks.0.mlp.grn.weight", "head.fc")]


def imagenet_like_state(name, size):
    """What a hub checkpoint holds: the architecture with a 1000-class head, non-default values."""
    torch.manual_seed(123)
    model = nets._create(name, 1000, size)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.state_dict()


@pytest.mark.parametrize("name,size,probe,head", TEACHERS)
def test_hub_weights_are_loaded_through_timm_with_the_download_replaced(monkeypatch, name, size, probe, head):
    state, calls = imagenet_like_state(name, size), []

    def fake_download(model_id, *args, **kwargs):
        calls.append(model_id)
        return {k: v.clone() for k, v in state.items()}
    monkeypatch.setattr(timm_builder, "load_state_dict_from_hf", fake_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, data_cfg, used = nets.create_model(name, 4, image_size=size, weights="hub")
    assert used == "imagenet:hub" and len(calls) == 1 and calls[0].startswith("timm/" + name)
    assert torch.equal(model.state_dict()[probe], state[probe])
    head_weight = dict(model.named_parameters())[head + ".weight"]
    assert head_weight.shape[0] == 4  # timm reset the 1000-class head to ours
    assert len(data_cfg["mean"]) == 3 and len(data_cfg["std"]) == 3


def test_hub_failure_says_what_to_do_instead(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("no network")
    monkeypatch.setattr(timm_builder, "load_state_dict_from_hf", offline)
    with pytest.raises(RuntimeError, match="--weights none"):
        nets.create_model("test_vit", 4, image_size=160, weights="hub")


@pytest.mark.parametrize("name,size,probe,head", TEACHERS)
@pytest.mark.parametrize("layout", ["bare", "state_dict", "model", "ddp"])
def test_a_local_checkpoint_is_loaded_whatever_its_layout(tmp_path, name, size, probe, head, layout):
    state = imagenet_like_state(name, size)
    wrapped = {"bare": state, "state_dict": {"state_dict": state, "epoch": 3}, "model": {"model": state, "args": {}},
               "ddp": {"module." + k: v for k, v in state.items()}}[layout]
    path = tmp_path / "teacher.pth"
    torch.save(wrapped, str(path))
    model, _, used = nets.create_model(name, 4, image_size=size, weights=str(path))
    assert used == "file:" + str(path)
    assert torch.equal(model.state_dict()[probe], state[probe])


def test_a_checkpoint_of_another_architecture_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(timm.create_model("test_resnet", num_classes=4).state_dict(), str(path))
    with pytest.raises(ValueError, match="resnet.pth"):
        nets.create_model("test_vit", 4, image_size=160, weights=str(path))
    (tmp_path / "junk.pth").write_bytes(b"")
    torch.save({"epoch": 1}, str(tmp_path / "junk.pth"))
    with pytest.raises(ValueError, match="junk.pth: not a state dict"):
        nets.create_model("test_vit", 4, image_size=160, weights=str(tmp_path / "junk.pth"))


@pytest.mark.parametrize("name,size,probe,head", TEACHERS)
def test_none_trains_from_scratch_without_touching_the_hub(monkeypatch, name, size, probe, head):
    def no_download(*args, **kwargs):
        raise AssertionError("weights=none must not download")
    monkeypatch.setattr(timm_builder, "load_state_dict_from_hf", no_download)
    model, _, used = nets.create_model(name, 4, image_size=size, weights="none")
    assert used == "none"
    assert not torch.equal(model.state_dict()[probe], imagenet_like_state(name, size)[probe])
