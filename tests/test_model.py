"""FaceNet shapes per stem, gradients to every parameter, rebuild from model_args."""

import pytest
import torch

from faceattr.model import STEMS, BasicBlock, FaceNet, build_model, model_args

LAYER4_SIDE = {"s1": 6, "s1pool": 3, "s2": 3, "s2pool": 2}


@pytest.mark.parametrize("stem", STEMS)
@pytest.mark.parametrize("in_channels", [1, 3])
def test_shapes_per_stem(stem, in_channels):
    torch.manual_seed(0)
    net = FaceNet(in_channels=in_channels, width=8, stem=stem)
    x = torch.randn(2, in_channels, 48, 48)
    side = LAYER4_SIDE[stem]
    assert net.forward_features(x).shape == (2, 64, side, side)
    assert net.embed(x).shape == (2, 64)
    out = net(x)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "gender": (2, 2),
        "ethnicity": (2, 5),
    }
    assert all(torch.isfinite(v).all() for v in out.values())


def test_every_parameter_gets_a_finite_gradient():
    torch.manual_seed(0)
    net = FaceNet(width=8, stem="s2", heads={"gender": 2, "ethnicity": 5, "age_bin": 6})
    out = net(torch.randn(4, 1, 48, 48))
    loss = sum(torch.nn.functional.cross_entropy(v, torch.zeros(4, dtype=torch.long)) for v in out.values())
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    # Zero-init residual gammas silence the inner convs at step 0, but never the heads.
    for name, head in net.heads.items():
        assert head.weight.grad.abs().sum() > 0, name


def test_zero_init_residual():
    net = FaceNet(width=8)
    blocks = [m for m in net.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 8
    assert all(torch.count_nonzero(b.bn2.weight) == 0 for b in blocks)


def test_rebuild_from_model_args_loads_strictly():
    net = FaceNet(
        in_channels=3,
        width=4,
        stem="s2pool",
        dropout=0.1,
        heads={"age_bin": 6, "age_reg": 6},
    )
    args = model_args(net)
    assert args == {
        "in_channels": 3,
        "width": 4,
        "stem": "s2pool",
        "dropout": 0.1,
        "heads": {"age_bin": 6, "age_reg": 6},
    }
    rebuilt = build_model(args)
    rebuilt.load_state_dict(net.state_dict(), strict=True)
    net.eval(), rebuilt.eval()
    x = torch.randn(2, 3, 48, 48)
    assert torch.equal(net(x)["age_reg"], rebuilt(x)["age_reg"])


def test_build_model_defaults_and_errors():
    net = build_model({"width": 4})
    assert model_args(net)["heads"] == {"gender": 2, "ethnicity": 5}
    with pytest.raises(ValueError, match="stem must be one of"):
        build_model({"stem": "s3"})
    with pytest.raises(ValueError, match="unknown model config keys \\['widht'\\]"):
        build_model({"widht": 4})
