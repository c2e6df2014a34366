from pathlib import Path

import pytest
import torch

from stdc_deploy.models import ARCHS, create_model
from stdc_deploy.checkpoint import remap_state_dict
from stdc_deploy.synthetic import to_official_state_dict

from conftest import shape_str

DATA_DIR = Path(__file__).parent / "data"


def official_key_table(arch: str) -> dict[str, str]:
    """name -> shape ('32x3x3x3' / 'scalar') of a checkpoint written by the official code."""
    text = (DATA_DIR / f"official_{arch}_seg_keys.tsv").read_text()
    return dict(line.split("\t") for line in text.splitlines() if line.strip())


# Parameter counts of the inference network (no training heads), fixed by the architecture.
INFERENCE_PARAMS = {"stdc1": 8_275_104, "stdc2": 12_305_568}


@pytest.mark.parametrize("arch", ARCHS)
def test_parameter_count_matches_official_checkpoint(arch):
    """Our inference model holds exactly the official checkpoint's segmentation tensors."""
    table = official_key_table(arch)
    model = create_model(arch)
    ours = sum(p.numel() for p in model.parameters())
    assert ours == INFERENCE_PARAMS[arch]
    official = 0
    for name, shape in table.items():
        if name.startswith(("cp.backbone.x", "cp.backbone.conv_last", "cp.backbone.fc", "cp.backbone.bn.",
                            "cp.backbone.linear", "conv_out16", "conv_out32", "conv_out_sp")):
            continue
        if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        numel = 1
        for d in shape.split("x"):
            numel *= int(d)
        official += numel
    assert ours == official


@pytest.mark.parametrize("arch", ARCHS)
def test_official_key_layout_is_exact(arch):
    table = official_key_table(arch)
    sd = to_official_state_dict(create_model(arch, aux_heads=True))
    assert {k: shape_str(v) for k, v in sd.items()} == table


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("size", [(64, 128), (65, 97), (33, 47), (100, 100)])
def test_any_input_size_gives_logits_at_input_resolution(arch, size):
    model = create_model(arch, num_classes=7).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 7, *size)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_backbone_strides_round_up(arch):
    backbone = create_model(arch).cp.backbone.eval()
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 65, 97))
    assert [tuple(f.shape[1:]) for f in feats] == [
        (32, 33, 49), (64, 17, 25), (256, 9, 13), (512, 5, 7), (1024, 3, 4)]


def test_training_heads_only_when_asked():
    plain = create_model("stdc1")
    assert not any(n.startswith(("conv_out16", "conv_out_sp")) for n, _ in plain.named_parameters())
    with pytest.raises(RuntimeError):
        plain.forward_aux(torch.randn(1, 3, 64, 64))
    full = create_model("stdc1", aux_heads=True).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        outs = full.forward_aux(x)
        assert torch.equal(outs["logits"], full(x))
    assert outs["logits16"].shape == (1, 19, 64, 96)
    assert outs["detail2"].shape == (1, 1, 32, 48)
    assert outs["detail16"].shape == (1, 1, 4, 6)


def test_classifier_bias_is_optional():
    assert create_model("stdc1").conv_out.conv_out.bias is None
    assert create_model("stdc1", classifier_bias=True).conv_out.conv_out.bias.shape == (19,)


def test_no_size_dependent_pooling_in_graph():
    """Global pooling is a mean; the only avg_pool is the fixed 3x3 stride-2 skip."""
    model = create_model("stdc1").eval()
    graph = torch.export.export(model, (torch.randn(1, 3, 64, 64),)).graph
    pools = [n for n in graph.nodes if "avg_pool2d" in str(n.target)]
    assert pools and all(list(n.args[1]) == [3, 3] for n in pools)
    assert any("mean" in str(n.target) for n in graph.nodes)


def test_remap_is_pure():
    sd = to_official_state_dict(create_model("stdc1", aux_heads=True))
    prefixed = {f"module.{k}": v for k, v in sd.items()}
    before = dict(prefixed)
    remap_state_dict(prefixed)
    assert prefixed == before
