"""Textbook arithmetic on a plan, before anything is built.

Output size  n_out = floor((n + 2p - d(k-1) - 1) / s) + 1        (ceil in pooling's ceil_mode)
Conv params  (k*k*c_in/groups + bias) * c_out;  MACs = k*k*c_in/groups * c_out * H_out * W_out
Receptive field (one side, in input pixels): r += d(k-1) * j;  j *= s   (j: input pixels per step)

MACs count multiply-accumulates of convolutions and linear layers only, which is what
`torch.utils.flop_counter.FlopCounterMode` counts (as 2 FLOPs per MAC).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cnnbench.errors import ConfigError
from cnnbench.models import plan as P


class GeometryError(ConfigError):
    """A plan whose shapes cannot work (a map below 1x1, channels not divisible by groups, ...). `fix`: the
    remedy where it is specific to the cause (None: the map became too small)."""

    def __init__(self, message: str, fix: str | None = None):
        super().__init__(message)
        self.fix = fix


@dataclass(frozen=True)
class LayerRow:
    name: str  # dotted path, the same as the built module's name
    kind: str  # human-readable description, e.g. "conv 3x3 s1 p1"
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]  # (C, H, W) for feature maps, (F,) after flatten/pool
    params: int
    macs: int  # multiply-accumulates per image
    rf: int | None  # receptive-field side in input pixels; None = the whole input


@dataclass(frozen=True)
class _State:
    shape: tuple[int, ...]
    rf: int | None = 1
    jump: int = 1


def conv_output_size(n: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1,
                     ceil: bool = False) -> int:
    """Output side of a convolution or pooling window (PyTorch's rule, ceil_mode included)."""
    span = n + 2 * padding - dilation * (kernel - 1) - 1
    if not ceil:
        return span // stride + 1
    out = math.ceil(span / stride) + 1
    if (out - 1) * stride >= n + padding:  # the last window must start inside the input
        out -= 1
    return out


def conv_params(c_in: int, c_out: int, kernel: int, groups: int = 1, bias: bool = True) -> int:
    return (kernel * kernel * c_in // groups + int(bias)) * c_out


def conv_macs(c_in: int, c_out: int, kernel: int, h_out: int, w_out: int, groups: int = 1) -> int:
    return kernel * kernel * c_in // groups * c_out * h_out * w_out


def layer_table(net: P.Network, input_shape: tuple[int, int, int]) -> list[LayerRow]:
    """Every layer of `net` with shape, params, MACs and receptive field; raises GeometryError."""
    rows: list[LayerRow] = []
    state = _walk(net.features, _State(tuple(input_shape)), "features", rows)
    if len(state.shape) != 3:
        raise GeometryError("the feature trunk must end in a feature map")
    _walk(net.head, state, "head", rows)
    return rows


def output_shape(net: P.Network, input_shape: tuple[int, int, int]) -> tuple[int, ...]:
    return layer_table(net, input_shape)[-1].out_shape


def _walk(node: P.Node, state: _State, path: str, rows: list[LayerRow]) -> _State:
    if isinstance(node, P.Sequence):
        for layer in node.layers:
            state = _walk(layer, state, f"{path}.{layer.name}", rows)
        return state
    if isinstance(node, P.Residual):
        body = _walk(node.body, state, f"{path}.body", rows)
        skip = _walk(node.shortcut, state, f"{path}.shortcut", rows)
        if body.shape != skip.shape:
            raise GeometryError(
                f"layer '{path}': the residual body gives {_fmt(body.shape)} but the shortcut gives "
                f"{_fmt(skip.shape)}; a shortcut needs shape-preserving convolutions (padding: same)")
        out = _State(body.shape, _max_rf(body.rf, skip.rf), body.jump)
        rows.append(LayerRow(f"{path}.add", "add (shortcut)", body.shape, out.shape, 0, 0, out.rf))
        if node.post is not None:
            out = _walk(node.post, out, f"{path}.{node.post.name}", rows)
        return out
    if isinstance(node, P.Concat):
        outs = [_walk(b, state, f"{path}.{b.name}", rows) for b in node.branches]
        sizes = {o.shape[1:] for o in outs}
        if len(sizes) != 1:
            raise GeometryError(f"layer '{path}': branches give different map sizes {sorted(sizes)}")
        shape = (sum(o.shape[0] for o in outs), *outs[0].shape[1:])
        rf = max((o.rf for o in outs), key=lambda r: math.inf if r is None else r)
        out = _State(shape, rf, outs[0].jump)
        rows.append(LayerRow(f"{path}.concat", "concat", state.shape, shape, 0, 0, rf))
        return out
    out, params, macs, kind = _leaf(node, state, path)
    rows.append(LayerRow(path, kind, state.shape, out.shape, params, macs, out.rf))
    return out


def _leaf(node: P.Node, state: _State, path: str) -> tuple[_State, int, int, str]:
    shape = state.shape
    if isinstance(node, (P.Conv, P.Pool)):
        if len(shape) != 3:
            raise GeometryError(f"layer '{path}': needs a feature map but gets a vector of {shape[0]}")
        c, h, w = shape
        k, s, p = node.kernel, node.stride, node.padding
        d = getattr(node, "dilation", 1)
        ceil = getattr(node, "ceil", False)
        ho, wo = (conv_output_size(n, k, s, p, d, ceil) for n in (h, w))
        desc = _window_desc(node)
        if ho < 1 or wo < 1:
            raise GeometryError(
                f"layer '{path}': {desc} maps {h}x{w} to {ho}x{wo}, so the feature map shrinks below "
                f"1x1 (n_out = floor((n + 2p - d(k-1) - 1)/s) + 1)")
        rf = None if state.rf is None else state.rf + d * (k - 1) * state.jump
        if isinstance(node, P.Pool):
            return _State((c, ho, wo), rf, state.jump * s), 0, 0, desc
        g = node.groups
        if c % g or node.out % g:
            common = [d for d in range(1, min(c, node.out) + 1) if c % d == 0 and node.out % d == 0]
            raise GeometryError(
                f"layer '{path}': groups={g} must divide both input channels ({c}) and output "
                f"channels ({node.out})", fix=f"groups: one of {', '.join(map(str, common))} (or widths it divides)")
        params = conv_params(c, node.out, k, g, node.bias)
        return (_State((node.out, ho, wo), rf, state.jump * s), params,
                conv_macs(c, node.out, k, ho, wo, g), desc)
    if isinstance(node, P.BatchNorm):
        return state, 2 * shape[0], 0, "batchnorm"
    if isinstance(node, (P.Activation, P.Dropout)):
        kind = node.kind if isinstance(node, P.Activation) else f"dropout p={node.p:g}"
        return state, 0, 0, kind
    if isinstance(node, P.GlobalAvgPool):
        return _State((shape[0],), None, 1), 0, 0, "global avg pool"
    if isinstance(node, P.Flatten):
        return _State((math.prod(shape),), None, 1), 0, 0, "flatten"
    if isinstance(node, P.Linear):
        if len(shape) != 1:
            raise GeometryError(f"layer '{path}': a linear layer needs a flattened input")
        return (_State((node.out,), None, 1), (shape[0] + int(node.bias)) * node.out,
                shape[0] * node.out, "linear")
    raise TypeError(f"unknown plan node {node!r}")


def _window_desc(node: P.Conv | P.Pool) -> str:
    head = f"conv {node.kernel}x{node.kernel}" if isinstance(node, P.Conv) else f"{node.kind}pool {node.kernel}x{node.kernel}"
    parts = [head, f"s{node.stride}", f"p{node.padding}"]
    if isinstance(node, P.Conv):
        if node.dilation > 1:
            parts.append(f"d{node.dilation}")
        if node.groups > 1:
            parts.append(f"g{node.groups}")
    elif node.ceil:
        parts.append("ceil")
    return " ".join(parts)


def _max_rf(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else max(a, b)


def _fmt(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))
