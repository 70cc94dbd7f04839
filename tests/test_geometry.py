"""The shape arithmetic against textbook examples and against what torch actually computes."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from cnnbench.models import plan as P
from cnnbench.models.geometry import GeometryError, conv_macs, conv_output_size, conv_params, layer_table


def net(*layers, head=()) -> P.Network:
    return P.Network(P.Sequence("features", tuple(layers)), P.Sequence("head", tuple(head)))


def test_textbook_parameter_count():
    # 2 filters of 3x3x3 with bias: 2 * (27 + 1) = 56
    assert conv_params(3, 2, 3) == 56
    rows = layer_table(net(P.Conv("conv", 2, 3)), (3, 32, 32))
    assert rows[0].params == 56


def test_textbook_output_sizes():
    rows = layer_table(net(P.Conv("c1", 6, 5), P.Conv("c2", 10, 5)), (3, 32, 32))
    assert rows[0].out_shape == (6, 28, 28)  # 32x32x3 through 5x5, no padding
    assert rows[1].out_shape == (10, 24, 24)  # then 10 filters of 5x5x6
    assert rows[1].params == (5 * 5 * 6 + 1) * 10


def test_textbook_bottleneck_saving():
    direct = layer_table(net(P.Conv("c", 32, 5, padding=2)), (192, 28, 28))
    reduced = layer_table(net(P.Conv("r", 16, 1), P.Conv("c", 32, 5, padding=2)), (192, 28, 28))
    assert sum(r.macs for r in direct) == 120_422_400
    assert sum(r.macs for r in reduced) == 12_443_648
    assert conv_macs(192, 32, 5, 28, 28) == 120_422_400


@pytest.mark.parametrize("n,k,s,p,d", [c for c in itertools.product([5, 7, 8, 28], [1, 2, 3, 5], [1, 2, 3], [0, 1, 2], [1, 2])
                                       if 2 * c[3] <= c[1]])
def test_output_size_formula_matches_torch_conv_and_pool(n, k, s, p, d):
    x = torch.zeros(1, 1, n, n)
    expected = conv_output_size(n, k, s, p, d)
    if expected < 1:
        with pytest.raises(RuntimeError):
            F.conv2d(x, torch.zeros(1, 1, k, k), stride=s, padding=p, dilation=d)
        return
    assert F.conv2d(x, torch.zeros(1, 1, k, k), stride=s, padding=p, dilation=d).shape[-1] == expected
    for ceil in (False, True):
        out = F.max_pool2d(x, k, s, p, dilation=d, ceil_mode=ceil).shape[-1]
        assert out == conv_output_size(n, k, s, p, d, ceil), (n, k, s, p, d, ceil)


def test_receptive_field_grows_by_kernel_times_jump():
    rows = layer_table(net(P.Conv("a", 4, 3, padding=1), P.Conv("b", 4, 3, padding=1),  # 3, 5
                           P.Pool("p", "max", 2, 2),  # 6, jump 2
                           P.Conv("c", 4, 3, padding=1),  # 6 + 2*2 = 10
                           P.Conv("d", 4, 3, padding=2, dilation=2)),  # 10 + 2*2*2 = 18
                       (1, 28, 28))
    assert [r.rf for r in rows] == [3, 5, 6, 10, 18]


def test_map_below_one_pixel_names_the_layer():
    with pytest.raises(GeometryError, match=r"'features.c3'.*maps 2x2 to 0x0.*below 1x1"):
        layer_table(net(P.Conv("c1", 4, 3), P.Conv("c2", 4, 3), P.Conv("c3", 4, 3)), (1, 6, 6))


def test_residual_shape_mismatch_is_explained():
    block = P.Residual("r", P.Sequence("body", (P.Conv("conv", 4, 3),)), P.Sequence("shortcut", ()), None)
    with pytest.raises(GeometryError, match="padding: same"):
        layer_table(net(P.Conv("c", 4, 3, padding=1), block), (1, 8, 8))
