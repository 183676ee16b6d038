"""Backbones: paper parameter counts, attention placement, realistic numerics, export."""
import onnx
import pytest
import torch

import deploy_attn
from deploy_attn.backbones import efficientnet, mobilenetv2, mobilenetv3, mobilenext, resnet, unet
from deploy_attn.core.onnx_io import shape_ops
from deploy_attn.models import build
from deploy_attn.registry import get_spec
from deploy_attn.zoo import count_costs

BACKBONES = deploy_attn.list_models(kind="backbone")


def n_params(name: str) -> int:
    return sum(p.numel() for p in build(get_spec(name)).parameters())


@pytest.mark.parametrize("name,expected", [
    ("mobilenetv2", 3_504_872),     # torchvision / the CA paper's code: 3.50M
    ("mobilenetv2_ca", 3_950_648),  # houqb/CoordAttention mbv2_ca.py: the paper's 3.95M
    ("resnet50", 25_557_032),
    ("resnet50_se", 28_088_024),    # SENet paper: SE-ResNet-50 28.09M
    ("resnet18", 11_689_512),
    ("mobilenext", 3_535_416),      # the official code's training log: the paper's 3.5M
    ("mobilenext_ca", 3_971_626),   # CA after the first depthwise conv of 15 blocks
    ("efficientnet_b0", 5_288_548),  # torchvision
    ("mobilenetv3_large", 5_483_032),  # torchvision
    ("mobilenetv3_small", 2_542_856),  # torchvision
])
def test_parameter_counts_match_the_papers(name, expected):
    assert n_params(name) == expected


def test_mobilenetv2_attention_placement():
    from deploy_attn.attention.coord import CoordAtt
    from deploy_attn.backbones.mobilenetv2 import InvertedResidual

    model = build(get_spec("mobilenetv2_ca"))
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    with_ca = [b for b in blocks if any(isinstance(m, CoordAtt) for m in b.modules())]
    assert len(blocks) == 17 and len(with_ca) == 16 and blocks[0] not in with_ca
    for b in with_ca:  # after depthwise conv + BN + ReLU6, before the linear projection
        layers = list(b.conv)
        i = next(i for i, m in enumerate(layers) if isinstance(m, CoordAtt))
        dw = layers[i - 1][0]
        assert dw.groups == dw.in_channels > 1 and isinstance(layers[i + 1], torch.nn.Conv2d)
    ca = with_ca[0].conv[2]
    assert ca.conv1.out_channels == max(8, ca.conv1.in_channels // 32)


def test_mobilenext_attention_after_the_first_depthwise_conv():
    """The CA authors' placement: after the first depthwise 3x3 (+ BN + ReLU6), on the
    block's input width; the 5 blocks that change width without one get none."""
    from deploy_attn.attention.coord import CoordAtt
    from deploy_attn.backbones.mobilenext import SandGlass

    blocks = [m for m in build(get_spec("mobilenext_ca")).modules() if isinstance(m, SandGlass)]
    with_ca = [b for b in blocks if b.has_attention]
    assert len(blocks) == 20 and len(with_ca) == 15
    for b in with_ca:
        layers = list(b.conv)
        assert isinstance(layers[3], CoordAtt) and isinstance(layers[2], torch.nn.ReLU6)
        dw = layers[0]
        assert dw.groups == dw.in_channels == layers[3].conv1.in_channels
    plain = build(get_spec("mobilenext"))
    keys = set(plain.state_dict())  # the official code's indices: checkpoints load as is
    assert {"features.4.conv.0.weight", "features.4.conv.8.weight", "features.4.conv.9.bias",
            "features.3.conv.5.weight", "classifier.1.weight"} <= keys


def test_efficientnet_and_mobilenetv3_se_as_in_the_papers():
    from deploy_attn.attention.se import SqueezeExcite

    eff = build(get_spec("efficientnet_b0"))
    ses = [m for m in eff.modules() if isinstance(m, SqueezeExcite)]
    assert len(ses) == 16 and ses[0].fc[0].out_features == 8  # 32 input channels / 4
    assert all(isinstance(m.fc[1], torch.nn.SiLU) for m in ses)
    v3 = build(get_spec("mobilenetv3_large"))
    gates = [m.fc[3] for m in v3.modules() if isinstance(m, SqueezeExcite)]
    assert len(gates) == 8 and all(isinstance(g, torch.nn.Hardsigmoid) for g in gates)
    ca = [m for m in build(get_spec("efficientnet_b0_ca")).modules()
          if type(m).__name__ == "CoordAtt"]
    assert len(ca) == 16 and all(isinstance(m.act, torch.nn.SiLU) for m in ca)


def test_resnet_attention_sits_before_the_add():
    model = build(get_spec("resnet18_cbam"))
    block = model.layer1[0]
    calls = []
    for n in ("bn2", "attn", "relu"):
        getattr(block, n).register_forward_hook(lambda m, i, o, n=n: calls.append(n))
    model(torch.randn(1, 3, 64, 64))
    assert calls[:4] == ["relu", "bn2", "attn", "relu"]  # relu(bn1), bn2, attention, relu(add)


def test_unet_global_attention_only_at_the_bridge():
    model = build(get_spec("unet_pam"))
    from deploy_attn.attention.danet import PositionAttention as PAM
    pams = [n for n, m in model.named_modules() if isinstance(m, PAM)]
    assert pams and all(n.startswith("bridge") for n in pams)
    y = model(torch.randn(1, 1, 64, 96))
    assert y.shape == (1, 2, 64, 96)


def test_combinations_that_cannot_work_are_not_registered():
    # SK's 32-group convs cannot take MobileNetV2's 144-channel blocks.
    assert "mobilenetv2_sk" not in BACKBONES
    assert "mobilenetv2_ca" in BACKBONES and "resnet18_cbam" in BACKBONES
    assert "unet_cbam" in BACKBONES and "resnet50_se" in BACKBONES


def test_mobilenetv2_costs_are_counted():
    costs = count_costs(build(get_spec("mobilenetv2")), (1, 3, 224, 224))
    assert 290e6 < costs["macs"] < 320e6  # MobileNetV2 1.0: ~300M multiply-adds
    ca = count_costs(build(get_spec("mobilenetv2_ca")), (1, 3, 224, 224))
    assert 1.0 < ca["macs"] / costs["macs"] < 1.06  # CA paper: a few percent more


def test_bn_recalibration_gives_realistic_activations():
    model = deploy_attn.create_model("mobilenetv2_ca")
    x = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    feats = model.features(x)
    assert torch.isfinite(feats).all()
    assert 0.05 < feats.std().item() < 20, feats.std().item()
    logits = model(x)
    assert logits.argmax(1).unique().numel() > 1, "logits must depend on the input"


@pytest.mark.parametrize("name,dynamic", [
    # the static MobileNetV2 (its dynamic twin here and test_maps' digits export cover it),
    # MobileNeXt and EfficientNet (20-30 s each on a 2-core AVX2 machine) run with -m slow
    pytest.param("mobilenetv2_ca", False, marks=pytest.mark.slow), ("mobilenetv2_ca", True),
    ("resnet18_cbam", False), ("unet_ca", False),
    pytest.param("mobilenext_ca", False, marks=pytest.mark.slow),
    pytest.param("efficientnet_b0", True, marks=pytest.mark.slow),
    ("mobilenetv3_small_ca", False),
])
def test_representative_backbone_exports(export_cache, name, dynamic):
    _check_export(export_cache(name, dynamic), name, dynamic)


@pytest.mark.slow
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("name", BACKBONES)
def test_every_backbone_exports(export_cache, name, dynamic):
    _check_export(export_cache(name, dynamic), name, dynamic)


def _check_export(result, name, dynamic):
    report = result.report
    parity = report["precisions"]["fp32"]
    assert parity["ok"], f"{name}: {parity['results']}"
    model = onnx.load(str(result.model_path))
    assert shape_ops(model) == []
    if get_spec(name).num_classes:
        assert all(r["top1_agreement"] == 1.0 for r in parity["results"])
    if name.endswith("_ca") and not name.startswith("efficientnet"):  # there CA uses SiLU
        ops = {n.op_type for n in model.graph.node}
        assert "HardSwish" in ops and "Div" not in ops


@pytest.mark.parametrize("name,sites", [
    ("mobilenetv2_se", mobilenetv2.attention_sites()),
    ("resnet18_se", resnet.attention_sites(1)),
    ("resnet50_se", resnet.attention_sites(4)),
    ("unet_se", unet.attention_sites()[0]),
    ("unet_pam", unet.attention_sites()[1]),  # quadratic modules: the bridge only
    ("mobilenext_se", mobilenext.attention_sites()),
    ("efficientnet_b0_eca", efficientnet.attention_sites()),
    ("mobilenetv3_large_eca", mobilenetv3.attention_sites("large")),
    ("mobilenetv3_small_eca", mobilenetv3.attention_sites("small")),
])
def test_declared_attention_sites_are_where_attention_runs(name, sites):
    """The (channels, size) sites a backbone declares to decide which attention modules
    fit are the shapes its attention modules actually receive (they are computed apart
    from the model, so they could drift)."""
    spec = get_spec(name)
    attn_cls = type(build(get_spec(spec.kwargs["attn"]), channels=64))
    model = deploy_attn.create_model(name)
    seen = set()
    for m in model.modules():
        if type(m) is attn_cls:
            m.register_forward_hook(lambda m, a, out: seen.add((a[0].shape[1],
                                                                tuple(a[0].shape[2:]))))
    with torch.no_grad():
        model(torch.zeros(spec.input_shape(1)))
    assert seen == set(sites), (sorted(seen), sorted(set(sites)))
