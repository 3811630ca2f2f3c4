"""retina-train pretrain: FCMAE for ConvNeXtV2 and MAE for ViT (mask, masked-only loss, what the encoder sees,
encoder.pt, --init, --resume)."""
import csv
import json
import os

import pytest

torch = pytest.importorskip("torch", reason="training/ is workstation-only: needs torch")
pytest.importorskip("timm", reason="training/ is workstation-only: needs timm")

from training import cli, nets, pretrain  # noqa: E402

pytestmark = pytest.mark.torch
torch.set_num_threads(1)

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "fundus4")
SIZE = 64


def images(cls, n):
    folder = os.path.join(DATA, cls)
    if not os.path.isdir(folder):
        pytest.skip("fundus4 not found at {}".format(DATA))
    return [os.path.join(folder, f) for f in sorted(os.listdir(folder))[:n]]


@pytest.fixture(scope="module")
def split_csv(tmp_path_factory):
    """8 real images on the train side, 2 on val and 2 on test (distinct groups)."""
    rows = []
    for cls in ("normal", "glaucoma"):
        paths = images(cls, 6)
        for i, p in enumerate(paths):
            rows.append({"path": os.path.abspath(p), "label": cls, "group": "{}-{}".format(cls, i),
                         "split": "train" if i < 4 else ("val" if i == 4 else "test")})
    path = str(tmp_path_factory.mktemp("pre") / "split.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "group", "split"])
        w.writeheader()
        w.writerows(rows)
    return path, rows


def tiny_model():
    torch.manual_seed(0)
    encoder = nets._create("convnextv2_atto", 0, SIZE)
    return pretrain.FCMAE(encoder, [0.5] * 3, [0.25] * 3, decoder_dim=32, mask_ratio=0.6)


@pytest.mark.parametrize("grid,ratio", [(2, 0.6), (7, 0.6), (4, 0.75)])
def test_mask_covers_round_ratio_of_patches(grid, ratio):
    mask = pretrain.random_mask(5, grid, ratio, torch.Generator().manual_seed(1))
    assert mask.shape == (5, grid, grid)
    assert (mask.flatten(1).sum(1) == round(ratio * grid * grid)).all()
    assert not torch.equal(mask[0], mask[1]) or grid == 2  # random per image


def test_loss_depends_only_on_masked_patches():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 4, 48), torch.randn(2, 4, 48)
    mask = torch.tensor([[1., 0., 1., 0.], [0., 1., 0., 0.]])
    base = pretrain.masked_loss(pred, target, mask)
    visible = target.clone()
    visible[0, 1] += torch.randn(48)
    visible[1, 3] = 5.0 * torch.randn(48)
    assert torch.equal(pretrain.masked_loss(pred, visible, mask), base)
    hidden = target.clone()
    hidden[0, 2] += torch.randn(48)
    assert not torch.allclose(pretrain.masked_loss(pred, hidden, mask), base)


def test_masked_input_does_not_leak_into_visible_features():
    """Sparse-conv emulation: what lies under a masked patch cannot change the encoder's output anywhere."""
    model = tiny_model().eval()
    mask = torch.tensor([[[1., 0.], [0., 1.]]])
    x = torch.rand(1, 3, SIZE, SIZE)
    y = x.clone()
    y[:, :, :32, :32] = torch.rand(1, 3, 32, 32)  # the masked top-left patch
    with torch.no_grad():
        a, b = model.encode(x, mask), model.encode(y, mask)
    assert torch.allclose(a, b, atol=1e-6)
    assert a[0, :, 0, 0].abs().max() == 0 and a[0, :, 0, 1].abs().max() > 0
    z = x.clone()
    z[:, :, :32, 32:] = torch.rand(1, 3, 32, 32)  # a visible patch does change it
    with torch.no_grad():
        assert not torch.allclose(model.encode(z, mask), a)


def test_loss_decreases_on_one_fixed_batch(split_csv):
    from training import inputs
    path, _ = split_csv
    samples = [s for s in inputs.load_split(path) if s.split == "train"]
    spec = inputs.make_spec(SIZE, [0.5] * 3, [0.25] * 3)
    part = inputs.prepare(samples, ["glaucoma", "normal"], spec, "")
    views = torch.from_numpy(part.images).permute(0, 3, 1, 2).float() / 255
    model = tiny_model()
    mask = pretrain.random_mask(len(views), SIZE // 32, 0.6, torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(6):
        loss = model(views, mask)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_the_method_follows_the_architecture_and_others_are_refused():
    assert pretrain.check_model("convnextv2_atto") == ("convnextv2_atto", "fcmae")
    assert pretrain.check_model("vit_tiny_patch16_224") == ("vit_tiny_patch16_224", "mae")
    with pytest.raises(ValueError, match="FCMAE for ConvNeXtV2 models .* and MAE for Vision Transformers"):
        pretrain.check_model("resnet18")


def tiny_mae(ratio=0.75):
    from training import mae
    torch.manual_seed(0)
    encoder = nets._create("vit_tiny_patch16_224", 0, SIZE)
    return mae.MAE(encoder, [0.5] * 3, [0.25] * 3, decoder_dim=32, decoder_depth=1, mask_ratio=ratio)


def test_mae_encoder_sees_only_the_kept_tokens_and_nothing_of_the_masked_pixels():
    model = tiny_mae().eval()
    grid = SIZE // 16
    mask = pretrain.random_mask(2, grid, 0.75, torch.Generator().manual_seed(0))
    views = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    latent, keep = model.encode(model.normalize(views), mask.flatten(1))
    assert latent.shape[1] == 1 + grid * grid - 12 and keep.shape == (2, 4)  # the class token + 4 of 16
    assert all(set(keep[i].tolist()) == set((mask[i].flatten() == 0).nonzero().flatten().tolist())
               for i in range(2))
    hidden = pretrain.upsample_mask(mask, SIZE)  # change every masked pixel, keep the visible ones
    changed = views * (1 - hidden) + torch.rand(views.shape, generator=torch.Generator().manual_seed(2)) * hidden
    again, _ = model.encode(model.normalize(changed), mask.flatten(1))
    assert torch.allclose(latent, again, atol=1e-6)
    loss, pred, target = model(views, mask)
    assert pred.shape == target.shape == (2, grid * grid, 16 * 16 * 3)
    flat = mask.flatten(1)
    assert loss.item() == pytest.approx(pretrain.masked_loss(pred, target, flat).item())


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_patch16_224"])
def test_mae_encoder_with_nothing_masked_is_timms_own_forward_features(name):
    """MAE's encode re-implements the ViT's token path (patch embedding, positions, class token, blocks,
    norm) to drop tokens: with none dropped it must be the ViT itself, or the pretrained encoder would not be
    the network `teacher --init` fine-tunes (an idea from the MAE helper's branch)."""
    from training import mae
    torch.manual_seed(0)
    model = mae.MAE(nets._create(name, 0, SIZE), [0.5] * 3, [0.25] * 3, decoder_dim=32, decoder_depth=1).eval()
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        latent, keep = model.encode(x, torch.zeros(2, (SIZE // 16) ** 2))
        assert keep.shape == (2, (SIZE // 16) ** 2)
        assert torch.allclose(latent, model.encoder.forward_features(x), atol=1e-5)


def test_weight_decay_spares_biases_norms_positions_and_mask_tokens_as_the_papers_code_does():
    from training import mae
    torch.manual_seed(0)
    for model in (mae.MAE(nets._create("vit_tiny_patch16_224", 0, SIZE), [0.5] * 3, [0.25] * 3, decoder_dim=32,
                          decoder_depth=1), tiny_model()):
        decay, plain = pretrain.decay_groups(model, 0.05)
        assert (decay["weight_decay"], plain["weight_decay"]) == (0.05, 0.0)
        names = {id(p): n for n, p in model.named_parameters()}
        exempt = {names[id(p)] for p in plain["params"]}
        decayed = {names[id(p)] for p in decay["params"]}
        assert len(exempt) + len(decayed) == len(names) and not exempt & decayed
        assert "mask_token" in exempt and all(p.ndim > 1 for p in decay["params"])
        assert any(n.endswith(".bias") for n in exempt) and any("norm" in n for n in exempt)
        if isinstance(model, mae.MAE):
            assert {"encoder.pos_embed", "encoder.cls_token"} <= exempt
            assert "encoder.patch_embed.proj.weight" in decayed and "encoder.blocks.0.attn.qkv.weight" in decayed
        else:
            assert "encoder.stem.0.weight" in decayed


@pytest.mark.parametrize("name, why", [("vit_tiny_r_s16_p8_224", "sees beyond each patch"),
                                       ("test_vit", "dynamic image size")])
def test_mae_refuses_a_vit_whose_tokens_would_leak_or_not_fit(name, why):
    from training import mae
    encoder = nets._create(name, 0, SIZE)
    with pytest.raises(ValueError, match=why):
        mae.MAE(encoder, [0.5] * 3, [0.25] * 3, decoder_dim=32)


def test_mae_steps_lower_the_loss_on_a_fixed_batch(split_csv):
    from training import inputs
    path, _ = split_csv
    samples = [s for s in inputs.load_split(path) if s.split == "train"]
    spec = inputs.make_spec(SIZE, [0.5] * 3, [0.25] * 3)
    part = inputs.prepare(samples, ["glaucoma", "normal"], spec, "")
    views = torch.from_numpy(part.images).permute(0, 3, 1, 2).float() / 255
    model = tiny_mae()
    mask = pretrain.random_mask(len(views), SIZE // 16, 0.75, torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(6):
        loss = model(views, mask)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_mae_cli_encoder_loads_into_a_vit_teacher(split_csv, tmp_path, capsys):
    path, _ = split_csv
    out = str(tmp_path / "mae")
    rc = cli.main(["pretrain", "--data", path, "--model", "vit_tiny_patch16_224", "--out", out, "--image-size",
                   str(SIZE), "--epochs", "1", "--batch-size", "4", "--max-steps", "1", "--cache-dir", "",
                   "--decoder-dim", "32"])
    assert rc == 0, capsys.readouterr()
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["method"] == "mae" and config["mask_ratio"] == 0.75 and config["patch"] == 16
    state = torch.load(os.path.join(out, "encoder.pt"), map_location="cpu")
    model, _, _ = nets.create_model("vit_tiny_patch16_224", 4, SIZE, weights=os.path.join(out, "encoder.pt"))
    own = model.state_dict()
    assert {k for k in own if not k.startswith("head")} == set(state)
    assert all(torch.equal(own[k], state[k]) for k in state)
    rc = cli.main(["teacher", "--data", path, "--model", "vit_tiny_patch16_224", "--init", out, "--out",
                   str(tmp_path / "t"), "--image-size", str(SIZE), "--epochs", "1", "--batch-size", "4",
                   "--max-steps", "1", "--cache-dir", ""])
    assert rc == 0
    assert json.load(open(os.path.join(str(tmp_path / "t"), "config.json")))["init_run"]["method"] == "mae"


def test_a_pretraining_stopped_part_way_and_resumed_ends_with_the_same_encoder(split_csv, tmp_path, capsys):
    path, _ = split_csv
    base = ["pretrain", "--data", path, "--image-size", str(SIZE), "--epochs", "2", "--batch-size", "4",
            "--cache-dir", "", "--decoder-dim", "32"]
    assert cli.main(base + ["--out", str(tmp_path / "whole")]) == 0
    assert cli.main(base + ["--out", str(tmp_path / "parts"), "--max-steps", "3"]) == 0  # stops mid-epoch 2
    assert cli.main(base + ["--out", str(tmp_path / "parts"), "--resume"]) == 0
    assert "resumed {} at epoch 1 step 3".format(os.path.join(str(tmp_path / "parts"), "last.pt")) in \
        capsys.readouterr().out
    a = torch.load(os.path.join(str(tmp_path / "whole"), "encoder.pt"), map_location="cpu")
    b = torch.load(os.path.join(str(tmp_path / "parts"), "encoder.pt"), map_location="cpu")
    assert all(torch.equal(a[k], b[k]) for k in a)
    history = json.load(open(os.path.join(str(tmp_path / "parts"), "history.json")))
    assert [h["epoch"] for h in history] == [1, 2]
    assert cli.main(base + ["--out", str(tmp_path / "none"), "--resume"]) == 1
    assert "nothing to resume (no last.pt)" in capsys.readouterr().err
    assert cli.main(base + ["--out", str(tmp_path / "parts"), "--resume", "--model", "convnextv2_femto"]) == 1
    assert "pretrained convnextv2_atto, not --model convnextv2_femto" in capsys.readouterr().err


def test_cli_end_to_end_then_teacher_init(split_csv, tmp_path, capsys, monkeypatch):
    path, rows = split_csv
    out = str(tmp_path / "pre")
    read = []
    from training import data as datalib
    original = datalib.SampleReader.__call__

    def spy(self, p):
        read.append(os.path.abspath(p))
        return original(self, p)
    monkeypatch.setattr(datalib.SampleReader, "__call__", spy)
    rc = cli.main(["pretrain", "--data", path, "--out", out, "--image-size", str(SIZE), "--epochs", "2",
                   "--batch-size", "4", "--max-steps", "2", "--cache-dir", "", "--decoder-dim", "32"])
    assert rc == 0, capsys.readouterr()
    held_out = {os.path.abspath(r["path"]) for r in rows if r["split"] != "train"}
    assert read and not held_out & set(read)  # val/test images never decoded
    assert set(read) == {os.path.abspath(r["path"]) for r in rows if r["split"] == "train"}
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["steps"] == 2 and config["hardware"]["device"] in ("cpu", "cuda")
    assert config["split_images"] == {"train": 8, "left_out": 4}
    assert "epoch" in capsys.readouterr().out

    state = torch.load(os.path.join(out, "encoder.pt"), map_location="cpu")
    assert not any(k.startswith("head.fc") for k in state)
    model, _, used = nets.create_model("convnextv2_atto", 4, SIZE, weights=os.path.join(out, "encoder.pt"))
    own = model.state_dict()
    backbone = {k for k in own if not k.startswith("head.fc")}
    assert backbone == set(state)  # every backbone key matched, by name
    assert all(torch.equal(own[k], state[k]) for k in backbone)

    monkeypatch.setattr(datalib.SampleReader, "__call__", original)
    tout = str(tmp_path / "teacher")
    rc = cli.main(["teacher", "--data", path, "--model", "convnextv2_atto", "--init", out, "--out", tout,
                   "--image-size", str(SIZE), "--epochs", "1", "--batch-size", "4", "--max-steps", "1",
                   "--cache-dir", "", "--augment", "none"])
    assert rc == 0
    tconfig = json.load(open(os.path.join(tout, "config.json")))
    assert tconfig["init"] == out and tconfig["init_run"]["method"] == "fcmae"
    assert tconfig["weights_used"] == "file:" + os.path.abspath(os.path.join(out, "encoder.pt"))

    rc = cli.main(["teacher", "--data", path, "--model", "convnextv2_femto", "--init", out, "--out",
                   str(tmp_path / "other"), "--image-size", str(SIZE), "--epochs", "1", "--max-steps", "1",
                   "--cache-dir", ""])
    assert rc == 1 and "pretrained convnextv2_atto" in capsys.readouterr().err
