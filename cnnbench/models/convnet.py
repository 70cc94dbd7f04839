"""One configurable CNN family whose knobs span the design choices a CNN course teaches.

Like RegNet's AnyNet design space: a network is an optional stem, then stages of blocks, then a head.
Every preset (LeNet, VGG, ResNet, Inception, MobileNet) is a point in this space, so any knob can be
ablated on any preset. `convnet_plan` turns knobs into a plan; nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from cnnbench.errors import ConfigError
from cnnbench.models import plan as P

BLOCKS = ("plain", "basic", "bottleneck", "dwsep", "inception")
ACTIVATIONS = ("relu", "leaky_relu", "elu", "gelu", "silu", "sigmoid", "tanh")
# act(maxpool(x)) == maxpool(act(x)) for these (monotone non-decreasing), forward and backward
MONOTONE = {"relu", "leaky_relu", "elu", "sigmoid", "tanh"}
POOLS = ("max", "avg", "none")
STEMS = ("none", "conv", "imagenet")
HEADS = ("flatten", "gap")

# Knobs a block type has no use for: setting one in a variant is an error, not a silent no-op.
UNUSED_BY_BLOCK = {
    "plain": {"bottleneck_ratio"},
    "basic": {"bottleneck_ratio"},
    "bottleneck": set(),
    "dwsep": {"bottleneck_ratio", "groups"},
    "inception": {"bottleneck_ratio", "groups", "kernel_size", "dilation", "padding"},
}


@dataclass(frozen=True)
class ConvNetKnobs:
    """The knobs of the family; defaults are the `cnn` baseline (a small LeNet-like net)."""

    widths: tuple[int, ...] = (16, 32)  # output channels of each stage; its length is the stage count
    width: int | None = None  # first-stage channels ("16 vs 64 kernels"); rescales widths, keeping ratios
    blocks: int | tuple[int, ...] = 1  # blocks per stage (one int for every stage)
    block: str = "plain"  # plain: conv | basic: 2 convs (ResNet) | bottleneck: 1x1-kxk-1x1 | dwsep | inception
    bottleneck_ratio: int = 4  # bottleneck: middle channels = block channels / ratio; a block whose input
    #                            has no more channels than that (the conv on the image) stays plain
    kernel_size: int = 3  # side of every kxk conv in the blocks
    padding: str | int = "same"  # same (keeps the map size) | valid (no padding) | pixels per side
    stride: int | tuple[int, ...] = 1  # stride of each stage's first block (one int for every stage)
    dilation: int = 1  # dilation of every kxk conv
    groups: int = 1  # groups of every kxk conv except the first one, which sees the image
    pool: str = "max"  # pooling after every stage: max | avg | none
    pool_size: int = 2  # pooling window and stride, pixels
    pool_ceil: bool = False  # ceil_mode: keep the last partial window (VGG on 28x28)
    shortcut: bool = False  # residual connection around every block; 1x1 projection when shapes change
    bn: bool = False  # BatchNorm after every conv (the conv then has no bias)
    activation: str = "relu"
    stem: str = "none"  # none | conv: kxk conv to widths[0] | imagenet: 7x7/2 conv + 3x3/2 max pool
    head: str = "flatten"  # flatten: all of the last map into the classifier | gap: global average pool
    hidden: tuple[int, ...] = ()  # hidden fully connected layers of the head
    dropout: float = 0.0  # dropout probability before every linear layer of the head


KNOB_NAMES = tuple(f.name for f in fields(ConvNetKnobs))


def make_knobs(values: dict) -> ConvNetKnobs:
    """Knobs from a (validated) dict; lists become tuples so knobs stay hashable."""
    unknown = set(values) - set(KNOB_NAMES)
    if unknown:
        raise ConfigError(f"unknown model knob(s) {sorted(unknown)}; known: {', '.join(KNOB_NAMES)}")
    clean = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return ConvNetKnobs(**clean)


def stage_widths(k: ConvNetKnobs) -> tuple[int, ...]:
    if k.width is None:
        return tuple(k.widths)
    scale = k.width / k.widths[0]
    return tuple(max(1, round(w * scale)) for w in k.widths)


def convnet_plan(k: ConvNetKnobs, input_shape: tuple[int, int, int], num_classes: int) -> P.Network:
    widths = stage_widths(k)
    n = len(widths)
    blocks = _per_stage(k.blocks, n, "blocks")
    strides = _per_stage(k.stride, n, "stride")
    pad = resolve_padding(k.padding, k.kernel_size, k.dilation)
    if k.block == "inception":
        if any(w % 16 for w in widths):
            raise ConfigError(f"widths: block 'inception' splits channels 4:8:2:2 with 1x1 reductions, so "
                              f"every stage width must be a multiple of 16 (got {list(widths)})")
        if any(s != 1 for s in strides):
            raise ConfigError("stride: block 'inception' keeps the map size; downsample with pool instead")
    layers: list[P.Node] = []
    c_in = input_shape[0]
    first = True  # the conv that sees the image is never grouped
    if k.stem != "none":
        layers.append(_stem(k, widths[0], pad))
        c_in, first = widths[0], False
    for i, (c_out, nb, s) in enumerate(zip(widths, blocks, strides)):
        stage: list[P.Node] = []
        for j in range(nb):
            stage.append(_block(k, f"block{j}", c_in, c_out, s if j == 0 else 1, pad, first))
            c_in, first = c_out, False
        if k.pool != "none":
            pool = P.Pool("pool", k.pool, k.pool_size, k.pool_size, 0, k.pool_ceil)
            stage += _pool_then_act(stage.pop(), pool) if k.pool == "max" and k.activation in MONOTONE else [pool]
        layers.append(P.Sequence(f"stage{i}", tuple(stage)))
    return P.Network(P.Sequence("features", tuple(layers)), _head(k, num_classes))


def _pool_then_act(block: P.Node, pool: P.Pool) -> list[P.Node]:
    """Move the block's final activation after the max pool: the same function (the max picks the same
    element, so values and gradients are identical), with the activation computed on 4x fewer values."""
    if isinstance(block, P.Residual) and block.post is not None:
        return [P.Residual(block.name, block.body, block.shortcut, None), pool, block.post]
    if isinstance(block, P.Sequence) and isinstance(block.layers[-1], P.Activation):
        return [P.Sequence(block.name, block.layers[:-1]), pool, block.layers[-1]]
    return [block, pool]  # e.g. inception: activations sit inside the branches


def resolve_padding(padding: str | int, kernel: int, dilation: int) -> int:
    if padding == "valid":
        return 0
    if padding == "same":
        if dilation * (kernel - 1) % 2:
            raise ConfigError(f"padding: 'same' needs an odd kernel_size (got {kernel}); use an odd kernel or "
                              "give padding in pixels")
        return dilation * (kernel - 1) // 2
    return int(padding)


def _per_stage(value: int | tuple[int, ...], n: int, field: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    if len(value) != n:
        raise ConfigError(f"{field}: has {len(value)} entries but there are {n} stages (one per entry of "
                          f"widths); give one number per stage or a single number for all")
    return tuple(value)


def _conv_bn_act(k: ConvNetKnobs, i: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, act: bool = True) -> list[P.Node]:
    """conv{i} -> [bn{i}] -> [act{i}]: the unit every block is made of."""
    out: list[P.Node] = [P.Conv(f"conv{i}", c_out, kernel, stride, padding, dilation, groups, bias=not k.bn)]
    if k.bn:
        out.append(P.BatchNorm(f"bn{i}"))
    if act:
        out.append(P.Activation(f"act{i}", k.activation))
    return out


def _stem(k: ConvNetKnobs, c_out: int, pad: int) -> P.Sequence:
    if k.stem == "imagenet":
        layers = _conv_bn_act(k, 1, c_out, 7, 2, 3) + [P.Pool("pool", "max", 3, 2, 1)]
    else:
        layers = _conv_bn_act(k, 1, c_out, k.kernel_size, 1, pad, k.dilation)
    return P.Sequence("stem", tuple(layers))


def _block(k: ConvNetKnobs, name: str, c_in: int, c_out: int, stride: int, pad: int, first: bool) -> P.Node:
    ks, d = k.kernel_size, k.dilation
    g = 1 if first else k.groups
    kind, mid = k.block, max(1, c_out // k.bottleneck_ratio)
    if kind == "bottleneck" and c_in <= mid:
        kind = "plain"  # nothing to reduce (e.g. the conv on a grey image): a 1x1 "reduction" would widen
    if kind == "plain":
        body = _conv_bn_act(k, 1, c_out, ks, stride, pad, d, g, act=False)
    elif kind == "basic":
        body = (_conv_bn_act(k, 1, c_out, ks, stride, pad, d, g)
                + _conv_bn_act(k, 2, c_out, ks, 1, pad, d, g, act=False))
    elif kind == "bottleneck":
        body = (_conv_bn_act(k, 1, mid, 1)
                + _conv_bn_act(k, 2, mid, ks, stride, pad, d, g)
                + _conv_bn_act(k, 3, c_out, 1, act=False))
    elif kind == "dwsep":
        body = (_conv_bn_act(k, 1, c_in, ks, stride, pad, d, groups=c_in)
                + _conv_bn_act(k, 2, c_out, 1, act=False))
    elif kind == "inception":
        body = [_inception(k, c_out)]
    else:  # the schema already restricts `block`; this guards direct library use
        raise ConfigError(f"block: unknown block type {k.block!r}; choose one of {', '.join(BLOCKS)}")
    act = P.Activation("act", k.activation)
    if not k.shortcut:
        if kind == "inception":
            return P.Sequence(name, tuple(body))
        return P.Sequence(name, (*body, act))
    projection: tuple[P.Node, ...] = ()
    if c_in != c_out or stride != 1:
        projection = (P.Conv("conv", c_out, 1, stride, 0, bias=not k.bn),) + ((P.BatchNorm("bn"),) if k.bn else ())
    return P.Residual(name, P.Sequence("body", tuple(body)), P.Sequence("shortcut", projection), act)


def _inception(k: ConvNetKnobs, c: int) -> P.Concat:
    """GoogLeNet module with inception-3a proportions: 1x1 c/4 | 1x1 3c/8 -> 3x3 c/2 |
    1x1 c/16 -> 5x5 c/8 | 3x3 max pool -> 1x1 c/8."""
    branches = (
        _conv_bn_act(k, 1, c // 4, 1),
        _conv_bn_act(k, 1, 3 * c // 8, 1) + _conv_bn_act(k, 2, c // 2, 3, padding=1),
        _conv_bn_act(k, 1, c // 16, 1) + _conv_bn_act(k, 2, c // 8, 5, padding=2),
        [P.Pool("pool", "max", 3, 1, 1)] + _conv_bn_act(k, 1, c // 8, 1),
    )
    return P.Concat("mixed", tuple(P.Sequence(f"branch{i + 1}", tuple(b)) for i, b in enumerate(branches)))


def _head(k: ConvNetKnobs, num_classes: int) -> P.Sequence:
    layers: list[P.Node] = [P.GlobalAvgPool("pool") if k.head == "gap" else P.Flatten("flatten")]
    for i, h in enumerate(k.hidden, start=1):
        if k.dropout > 0:
            layers.append(P.Dropout(f"drop{i}", k.dropout))
        layers += [P.Linear(f"fc{i}", h), P.Activation(f"act{i}", k.activation)]
    if k.dropout > 0:
        layers.append(P.Dropout("drop", k.dropout))
    layers.append(P.Linear("fc", num_classes))
    return P.Sequence("head", tuple(layers))
