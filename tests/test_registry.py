import pytest
import torch

import deploy_attn
from deploy_attn.core.errors import UnknownModelError
from deploy_attn.registry import Registry, get_spec

SEED_MODULES = ["se", "cbam", "channel_attention", "spatial_attention", "bam", "eca", "ca", "sk",
                "sa", "danet", "pam", "cam", "nonlocal", "gc", "cpca", "ema", "scsa", "emax", "mhsa"]


def test_every_seed_module_is_registered():
    missing = sorted(set(SEED_MODULES) - set(deploy_attn.list_models(kind="attention")))
    assert not missing, f"not registered: {missing}"


def test_list_models_wildcard():
    assert deploy_attn.list_models("c*") == sorted(
        n for n in deploy_attn.list_models() if n.startswith("c"))
    assert deploy_attn.list_models("no_such_*") == []


def test_unknown_name_suggests_close_matches():
    with pytest.raises(UnknownModelError, match="did you mean.*cbam"):
        get_spec("cbma")
    with pytest.raises(UnknownModelError, match="deploy-attn list"):
        get_spec("zzzzzzzz")


def test_duplicate_registration_is_an_error():
    reg = Registry("test")
    reg.register("a", torch.nn.Identity, paper="x")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", torch.nn.Identity, paper="x")


def test_create_model_is_deterministic_and_keeps_rng_state():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = deploy_attn.create_model("ca").state_dict()
    b = deploy_attn.create_model("ca").state_dict()
    assert torch.equal(torch.get_rng_state(), before)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c = deploy_attn.create_model("ca", seed=1).state_dict()
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())
