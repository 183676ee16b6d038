"""Checkpoints: containers, prefixes, safetensors, old files, and public key layouts of
the same functions mapped onto the registry's modules."""
import pytest
import torch

import deploy_attn
from deploy_attn import cli
from deploy_attn.checkpoint import load_checkpoint
from deploy_attn.core.errors import CheckpointError
from deploy_attn.models import build
from deploy_attn.registry import get_spec

from . import foreign_models as fm


def _fresh(name: str) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        return build(get_spec(name)).eval()


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module, shape) -> float:
    """Max abs difference of two modules on one seeded input (the reference output must
    vary, so a wrong mapping cannot hide behind a constant)."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ya, yb = a.eval()(x), b.eval()(x)
    assert float(ya.std()) > 1e-2, "reference output nearly constant: the check would be weak"
    return float((ya - yb).abs().max())


@pytest.mark.parametrize("foreign,name,layout", [
    (fm.OfficialMBV2CA, "mobilenetv2_ca", "houqb/CoordAttention mbv2_ca.py"),
    (fm.TorchvisionMobileNetV2, "mobilenetv2", "torchvision mobilenet_v2"),
    (fm.TimmSEResNet50, "resnet50_se", "timm SEModule (se.fc1/se.fc2)"),
    (fm.TimmECAResNet18, "resnet18_eca", "timm EcaModule (se.conv)"),
], ids=["houqb-mbv2_ca", "torchvision-mobilenet_v2", "timm-seresnet50", "timm-eca-resnet18"])
def test_public_layouts_load_and_compute_the_same_function(tmp_path, foreign, name, layout):
    src = fm.randomize(foreign())
    ours = _fresh(name)
    assert sum(p.numel() for p in src.parameters()) == sum(p.numel() for p in ours.parameters())
    state = src.state_dict()
    assert set(state) != set(ours.state_dict()), "the layouts differ before mapping"
    path = tmp_path / "foreign.pt"
    torch.save(state, path)
    loaded = load_checkpoint(ours, path)
    assert loaded.layout == layout and loaded.sha256
    err = _same_outputs(src, ours, (2, 3, 224, 224))
    assert err <= 1e-5, f"{name} from {layout}: max abs {err:.2e}"


@pytest.mark.parametrize("name,keys,example", [
    ("efficientnet_b0", 360, "features.1.0.block.1.fc1.weight"),
    ("mobilenetv3_large", 312, "features.4.block.2.fc1.weight"),
    ("mobilenetv3_small", 244, "features.1.block.1.fc1.weight"),
])
def test_torchvision_efficientnet_and_mobilenetv3_load(tmp_path, name, keys, example):
    """torchvision's layouts (key counts and names as torchvision has them): SE as 1x1
    convs fc1/fc2, everything else under the same paths."""
    src = fm.torchvision_layout(deploy_attn.create_model(name, seed=4))
    state = src.state_dict()
    assert len(state) == keys and example in state
    path = tmp_path / f"{name}.pth"
    torch.save(state, path)
    ours = _fresh(name)
    assert load_checkpoint(ours, path).layout == "torchvision SqueezeExcitation (block.N.fc1/fc2)"
    assert _same_outputs(src, ours, (1, 3, 96, 96)) <= 1e-5


def test_torchvision_resnet_layout_needs_no_mapping(tmp_path):
    path = tmp_path / "resnet18.pt"
    torch.save(_fresh("resnet18").state_dict(), path)
    assert load_checkpoint(_fresh("resnet18"), path).layout is None


def test_a_layout_applies_only_when_it_matches_exactly(tmp_path):
    """The official CA layout with a wrong width (or a missing gate conv) is not forced
    through a mapping: the mismatch names the keys as it would without layouts."""
    state = fm.OfficialMBV2CA().state_dict()
    del state["features.2.conv.6.conv3.weight"]
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="nor a known public layout.*missing"):
        load_checkpoint(_fresh("mobilenetv2_ca"), path)
    # the stem conv for 4 input channels: the layout renames the keys, the shapes conflict
    state = fm.OfficialMBV2CA().state_dict()
    state["features.0.0.weight"] = torch.zeros(32, 4, 3, 3)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"nor a known public layout.*shape conflicts: "
                       r"features\.0\.0\.weight \(32, 4, 3, 3\) vs \(32, 3, 3, 3\)"):
        load_checkpoint(_fresh("mobilenetv2_ca"), path)


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"state_dict": sd, "epoch": 3},
    lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}},
    lambda sd: {"model_state_dict": sd, "optimizer_state_dict": {}},
    lambda sd: {"state_dict": {f"model.{k}": v for k, v in sd.items()}},  # Lightning
    lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()},  # torch.compile
    lambda sd: {f"module._orig_mod.{k}": v for k, v in sd.items()},
    lambda sd: {"state_dict_ema": sd},
], ids=["plain", "state_dict", "model+module.", "model_state_dict", "lightning-model.",
        "_orig_mod.", "module._orig_mod.", "ema-only"])
def test_containers_and_prefixes(tmp_path, wrap):
    src = deploy_attn.create_model("se", seed=3)
    path = tmp_path / "ckpt.pt"
    torch.save(wrap(src.state_dict()), path)
    dst = _fresh("se")
    loaded = load_checkpoint(dst, path)
    assert _same_outputs(src, dst, (1, 64, 16, 16)) == 0.0, loaded


def test_cli_loads_an_ema_only_checkpoint_without_the_flag(tmp_path, capsys):
    """Without --ema the CLI leaves the choice to the file (raw weights, else the EMA ones
    when they are all it has), as the API does; it once asked for raw weights only."""
    src = deploy_attn.create_model("se", seed=3)
    path = tmp_path / "ema.pt"
    torch.save({"state_dict_ema": src.state_dict()}, path)
    code = cli.main(["export", "se", "--weights", str(path), "-o", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    assert "state_dict_ema" in capsys.readouterr().out


def test_ema_flag_chooses_between_raw_and_ema_weights(tmp_path):
    raw, ema = deploy_attn.create_model("se", seed=1), deploy_attn.create_model("se", seed=2)
    path = tmp_path / "both.pt"
    torch.save({"state_dict": raw.state_dict(), "state_dict_ema": ema.state_dict()}, path)
    default, averaged = _fresh("se"), _fresh("se")
    first = load_checkpoint(default, path)
    assert first.entry == "state_dict" and "--ema" in first.note
    assert load_checkpoint(averaged, path, ema=True).entry == "state_dict_ema"
    assert _same_outputs(raw, default, (1, 64, 8, 8)) == 0.0
    assert _same_outputs(ema, averaged, (1, 64, 8, 8)) == 0.0
    plain = tmp_path / "plain.pt"
    torch.save(raw.state_dict(), plain)
    with pytest.raises(CheckpointError, match="--ema asks for EMA weights"):
        load_checkpoint(_fresh("se"), plain, ema=True)


def test_safetensors_and_files_without_num_batches_tracked(tmp_path):
    from safetensors.torch import save_file

    src = deploy_attn.create_model("mobilenetv2", seed=5)
    state = {k: v.contiguous() for k, v in src.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    path = tmp_path / "weights.safetensors"
    save_file(state, str(path))
    dst = _fresh("mobilenetv2")
    loaded = load_checkpoint(dst, path)
    assert loaded.filled == sum(k.endswith("num_batches_tracked") for k in dst.state_dict()) > 0
    assert _same_outputs(src, dst, (1, 3, 64, 64)) == 0.0
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(_fresh("se"), tmp_path / "bad.safetensors")


def test_mismatch_lists_missing_unexpected_and_shapes(tmp_path):
    path = tmp_path / "ca.pt"
    torch.save(deploy_attn.create_model("ca").state_dict(), path)
    with pytest.raises(CheckpointError, match="missing .* keys.*unexpected .* keys"):
        load_checkpoint(_fresh("se"), path)
    torch.save(deploy_attn.create_model("se", channels=32).state_dict(), path)
    with pytest.raises(CheckpointError, match="shape conflicts"):
        load_checkpoint(_fresh("se"), path)


def test_nan_weights_are_named(tmp_path):
    state = deploy_attn.create_model("se").state_dict()
    state["fc.0.weight"][0, 0] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="NaN or Inf: fc.0.weight"):
        load_checkpoint(_fresh("se"), path)


class Payload:
    """Stands for arbitrary pickled code a checkpoint might carry."""


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": deploy_attn.create_model("se").state_dict(), "extra": Payload()},
               path)
    with pytest.raises(CheckpointError, match="weights_only=True.*could run code"):
        load_checkpoint(_fresh("se"), path)
    whole = tmp_path / "whole.pt"
    torch.save(deploy_attn.create_model("se"), whole)
    with pytest.raises(CheckpointError,
                       match=r"whole pickled model .*torch.save\(model.state_dict"):
        load_checkpoint(_fresh("se"), whole)


def test_cli_mismatched_weights_is_one_line(tmp_path, capsys):
    path = tmp_path / "ca.pt"
    torch.save(deploy_attn.create_model("ca").state_dict(), path)
    code = cli.main(["export", "se", "--weights", str(path), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("deploy-attn: error:") and "does not match" in err[-1]
    assert "\x1b" not in err[-1]
