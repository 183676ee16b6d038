"""Reference modules and their deploy rewrites, parametrized over the attention registry."""
import numpy as np
import pytest
import torch

import deploy_attn
from deploy_attn.core.errors import ConfigError
from deploy_attn.registry import get_spec

from .conftest import ATTENTION_NAMES

# Non-square inputs catch H/W mix-ups (the seed's DANet CAM defect).
NON_SQUARE = (32, 40)


def _input(name: str, batch: int = 2, size=NON_SQUARE) -> torch.Tensor:
    c = get_spec(name).channels
    return torch.randn((batch, c) + tuple(size), generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("name", ATTENTION_NAMES)
def test_reference_keeps_shape_and_is_deterministic(name):
    model = deploy_attn.create_model(name)
    x = _input(name)
    with torch.no_grad():
        y1, y2 = model(x), deploy_attn.create_model(name)(x)
    assert y1.shape == x.shape
    assert torch.isfinite(y1).all()
    assert torch.equal(y1, y2), "same name and seed must give the same function"
    assert not torch.allclose(y1, x), "the attention branch must change the input"


@pytest.mark.parametrize("name", ATTENTION_NAMES)
@pytest.mark.parametrize("batch", [1, 3])
def test_exact_rewrites_match_reference(name, batch):
    model = deploy_attn.create_model(name)
    before, cls = {k: v.clone() for k, v in model.state_dict().items()}, type(model)
    deploy, _ = deploy_attn.patch_for_deploy(model)
    assert deploy is not model and type(model) is cls
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), \
        "patch_for_deploy must leave the reference untouched"
    x = _input(name, batch)
    with torch.no_grad():
        ref, dep = model(x), deploy(x)
    err = (ref - dep).abs().max().item()
    scale = max(1.0, ref.abs().max().item())
    assert err <= 1e-5 * scale, f"{name}: deploy form differs from reference by {err:.3g}"


def test_approximate_rewrites_only_on_request():
    model = deploy_attn.create_model("cpca")  # GELU: erf form -> tanh form is approximate
    _, exact_only = deploy_attn.patch_for_deploy(model)
    deploy, with_approx = deploy_attn.patch_for_deploy(model, approximate=True)
    assert all(a.exact for a in exact_only)
    assert any(not a.exact and a.target == "GELU" for a in with_approx)
    x = _input("cpca")
    with torch.no_grad():
        err = (model(x) - deploy(x)).abs().max().item()
    assert 0 < err < 0.05, f"tanh-GELU should change numerics slightly, got {err}"


@pytest.mark.parametrize("name,kwargs,match", [
    ("sa", dict(channels=40, groups=8), "divisible"),
    ("ema", dict(channels=60), "divisible"),
    ("emax", dict(channels=60), "divisible"),
    ("scsa", dict(channels=66), "divisible by 4"),
    ("scsa", dict(channels=64, head_num=6), "divisible"),
    ("mhsa", dict(channels=64, num_heads=5), "divisible"),
    ("sk", dict(channels=48, groups=32), "divisible"),
    ("scsa", dict(input_size=(5, 32)), "window"),
])
def test_impossible_arguments_raise_a_clear_error(name, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        deploy_attn.create_model(name, **kwargs)


# --- defects of the seed code, each fixed in the reference modules -------------------
def test_cam_handles_non_square_inputs():
    """Seed: ``b, c, w, h = x.size()`` then ``view(b, c, h, w)``; check CAM's formula."""
    model = deploy_attn.create_model("cam", channels=8)
    x = torch.randn(2, 8, 5, 7, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).numpy()
    gamma = next(p for n, p in model.named_parameters() if n.endswith("gamma")).item()
    xs = x.numpy().reshape(2, 8, -1).astype(np.float64)
    energy = xs @ xs.transpose(0, 2, 1)
    energy = energy.max(-1, keepdims=True) - energy
    attn = np.exp(energy - energy.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)
    expected = gamma * (attn @ xs).reshape(x.shape) + x.numpy()
    np.testing.assert_allclose(y, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kernel_size", [3, 5, 7])
def test_spatial_attention_padding_follows_kernel_size(kernel_size):
    """Seed 000's CBAM hard-codes padding=3, which breaks any kernel but 7."""
    for name in ("spatial_attention", "cbam"):
        model = deploy_attn.create_model(name, kernel_size=kernel_size)
        x = _input(name, 1)
        with torch.no_grad():
            assert model(x).shape == x.shape


@pytest.mark.parametrize("channels", [8, 16, 64, 96])
def test_cpca_hidden_width_is_the_seeds(channels):
    """The seed's ``in_chans // reduction`` (16), only kept from reaching 0."""
    model = deploy_attn.create_model("cpca", channels=channels)
    assert model.ca.mlp[0].out_channels == max(1, channels // 16)


@pytest.mark.parametrize("channels", [4, 8, 12])
def test_cpca_small_channel_counts_have_a_hidden_layer(channels):
    """Seed: ``in_chans // reduction`` is 0 below 16 channels."""
    model = deploy_attn.create_model("cpca", channels=channels)
    assert all(p.numel() > 0 for p in model.parameters())
    x = torch.randn(1, channels, 16, 16)
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


def test_sk_forward_prints_nothing(capsys):
    model = deploy_attn.create_model("sk")
    with torch.no_grad():
        model(_input("sk", 1))
    assert capsys.readouterr().out == ""


def test_emax_is_deterministic_and_never_samples(monkeypatch):
    """Seed: torch.multinomial on every forward made eval outputs random."""
    def forbidden(*args, **kwargs):
        raise AssertionError("EMAX must not sample its group count")

    monkeypatch.setattr(torch, "multinomial", forbidden)
    model = deploy_attn.create_model("emax")
    x = _input("emax")
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
