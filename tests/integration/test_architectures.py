"""retina-train accepts any timm classifier: a ViT and a ConvNeXt V2 build at the project's image size
and map (1, 3, 64, 64) to (1, 4) logits; both come with their own mean/std."""
import pytest

torch = pytest.importorskip("torch", reason="the workstation half needs torch")
pytest.importorskip("timm", reason="the workstation half needs timm")

from training import nets  # noqa: E402
from training.cli import build_parser  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "convnextv2_atto"])
def test_teacher_accepts_and_builds_the_architecture(tmp_path, name):
    args = build_parser().parse_args(["teacher", "--data", "split.csv", "--model", name, "--weights", "none",
                                      "--image-size", "64", "--out", str(tmp_path / "T")])
    assert (args.verb, args.model, args.image_size) == ("teacher", name, 64)
    assert nets.resolve_name(args.model) == name
    torch.manual_seed(0)
    model, data_config, used = nets.create_model(args.model, 4, args.image_size, args.weights)
    assert used == "none"
    assert len(data_config["mean"]) == 3 and len(data_config["std"]) == 3
    assert all(s > 0 for s in data_config["std"])
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64))
    assert tuple(out.shape) == (1, 4)
    assert torch.isfinite(out).all()


def test_unknown_model_name_is_refused_with_similar_names():
    with pytest.raises(ValueError) as info:
        nets.resolve_name("vit_tinyy_patch16_224")
    assert "unknown timm model" in str(info.value) and "vit_" in str(info.value)


def test_training_cli_typo_suggests_the_option(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["teacher", "--data", "d.csv", "--out", "o", "--image-sise", "64"])
    assert "did you mean --image-size?" in capsys.readouterr().err
