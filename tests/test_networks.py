"""Segmentation networks: output shapes for any input size, gradients reaching every
parameter, and option validation naming the bad key."""

import pytest
import torch

from synthmix.errors import StudyError
from synthmix.registry import UnknownName
from synthmix.trainers.networks import NETWORKS, build_network, network_option_names

# Tiny widths so each case runs in milliseconds; the structure is the registry entry's.
CASES = [
    ("unet", dict(levels=3, base_filters=4, doubling=False, batch_norm=False)),  # 003 form
    ("unet", dict(levels=4, base_filters=4, doubling=True, batch_norm=True)),    # 004 form
    ("unet", dict(levels=2, base_filters=4, doubling=True, batch_norm=False, dropout=0.2)),
    ("uresnet", dict(levels=3, base_filters=4, num_res_units=2)),
    ("deepmedic2d", dict(filters=[4, 4, 6, 6, 6, 6, 8, 8], fc_filters=8)),
    ("fcn8s", dict(base_filters=4, fc_filters=8)),
]


def test_every_registry_entry_is_covered():
    assert {name for name, _ in CASES} == set(NETWORKS.names())


@pytest.mark.parametrize("name,options", CASES)
def test_output_shape_and_gradients(name, options):
    torch.manual_seed(0)
    net = build_network(name, in_channels=2, num_classes=3, options=options)
    x = torch.randn(2, 2, 32, 32)
    out = net(x)
    assert out.shape == (2, 3, 32, 32)
    # A loss touching every output pixel and class must reach every parameter.
    out.pow(2).mean().backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{name}: zero gradient for {pname}"


@pytest.mark.parametrize("name,options", CASES)
def test_sizes_not_divisible_by_the_downsampling(name, options):
    net = build_network(name, in_channels=1, num_classes=2, options=options).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 27, 41)).shape == (1, 2, 27, 41)


def test_unet_widths_constant_and_doubling():
    def conv_widths(net):
        return sorted({m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d)})
    constant = build_network("unet", in_channels=1, num_classes=2,
                             options=dict(levels=3, base_filters=8, doubling=False))
    doubling = build_network("unet", in_channels=1, num_classes=2,
                             options=dict(levels=5, base_filters=4, doubling=True))
    assert conv_widths(constant) == [2, 8]
    assert conv_widths(doubling) == [2, 4, 8, 16, 32, 64]


def test_batch_norm_switch():
    def has_bn(net):
        return any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert has_bn(build_network("unet", in_channels=1, num_classes=2, options=dict(batch_norm=True)))
    assert not has_bn(build_network("unet", in_channels=1, num_classes=2, options=dict(batch_norm=False)))


def test_unknown_option_is_named():
    with pytest.raises(StudyError, match="base_filter'"):
        build_network("unet", in_channels=1, num_classes=2, options=dict(base_filter=8))
    assert "levels" in network_option_names("unet")


def test_unknown_network_lists_known_names():
    with pytest.raises(UnknownName, match="unet"):
        build_network("resnet9000", in_channels=1, num_classes=2, options={})


def test_uresnet_needs_residual_units():
    with pytest.raises(ValueError, match="num_res_units"):
        build_network("uresnet", in_channels=1, num_classes=2, options=dict(num_res_units=0))
