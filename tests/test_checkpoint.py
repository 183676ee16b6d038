import pytest
import torch

import deploy_attn
from deploy_attn import cli
from deploy_attn.checkpoint import load_checkpoint
from deploy_attn.errors import CheckpointError


def test_roundtrip_plain_and_wrapped(tmp_path):
    src = deploy_attn.create_model("se", seed=3)
    x = torch.randn(1, 64, 16, 16)
    for i, obj in enumerate([src.state_dict(), {"state_dict": src.state_dict(), "epoch": 3},
                             {"model": {f"module.{k}": v for k, v in src.state_dict().items()}}]):
        path = tmp_path / f"ckpt{i}.pt"
        torch.save(obj, path)
        dst = load_checkpoint(deploy_attn.create_model("se"), path)
        with torch.no_grad():
            assert torch.equal(dst(x), src(x))


def test_mismatch_lists_missing_unexpected_and_shapes(tmp_path):
    path = tmp_path / "ca.pt"
    torch.save(deploy_attn.create_model("ca").state_dict(), path)
    with pytest.raises(CheckpointError, match="missing .* keys.*unexpected .* keys"):
        load_checkpoint(deploy_attn.create_model("se"), path)
    torch.save(deploy_attn.create_model("se", channels=32).state_dict(), path)
    with pytest.raises(CheckpointError, match="shape conflicts"):
        load_checkpoint(deploy_attn.create_model("se"), path)


class Payload:
    """Stands for arbitrary pickled code a checkpoint might carry."""


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": deploy_attn.create_model("se").state_dict(), "extra": Payload()},
               path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint(deploy_attn.create_model("se"), path)


def test_cli_mismatched_weights_is_one_line(tmp_path, capsys):
    path = tmp_path / "ca.pt"
    torch.save(deploy_attn.create_model("ca").state_dict(), path)
    code = cli.main(["export", "se", "--weights", str(path), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("deploy-attn: error:") and "does not match" in err[-1]
