"""Plan -> torch modules. Module names follow the plan, so the layer-table row
`features.stage1.block0.conv1` is `model.get_submodule("features.stage1.block0.conv1")`, and every
layer's input shape comes from the geometry walk (which also validates the plan first)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from cnnbench.models import plan as P
from cnnbench.models.geometry import layer_table

ACTIVATIONS = {
    "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU, "gelu": nn.GELU,
    "silu": nn.SiLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh,
}


class ConvNet(nn.Module):
    """`features` (conv trunk -> feature map) then `head` (-> logits); CAMs hook `features`' last stage."""

    def __init__(self, features: nn.Sequential, head: nn.Sequential):
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, classes)
        return self.head(self.features(x))


class Residual(nn.Module):
    """out = post(body(x) + shortcut(x))"""

    def __init__(self, body: nn.Module, shortcut: nn.Module, post: tuple[str, nn.Module] | None):
        super().__init__()
        self.body = body
        self.shortcut = shortcut
        self.post_name = post[0] if post else None
        if post:
            self.add_module(*post)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x) + self.shortcut(x)
        return self.get_submodule(self.post_name)(y) if self.post_name else y


class Concat(nn.Module):
    """Branches on the same input, concatenated along channels."""

    def __init__(self, branches: list[tuple[str, nn.Module]]):
        super().__init__()
        for name, module in branches:
            self.add_module(name, module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.children()], dim=1)


class _FlattenKeepLayout(torch.autograd.Function):
    """(B, C, H, W) -> (B, C*H*W) in the usual (C, H, W) order, whatever the memory layout; the gradient
    goes back in the input's layout. A plain flatten of a channels_last map sends an NCHW gradient back,
    and every backward op before it then mixes layouts and takes TensorIterator's slow strided path
    (measured here: ReLU backward on 64x16x28x28, 0.1 ms with matching layouts, 3.7 ms mixed)."""

    generate_vmap_rule = True  # torch.func.vmap can batch it (k fold models as one computation: gpusweep)

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1)

    @staticmethod
    def setup_context(ctx, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        (x,) = inputs
        ctx.shape = x.shape
        ctx.channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
            memory_format=torch.channels_last)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.reshape(ctx.shape)
        return grad.contiguous(memory_format=torch.channels_last) if ctx.channels_last else grad


class Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C*H*W)
        return _FlattenKeepLayout.apply(x)


class GlobalAvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C)
        return x.mean(dim=(2, 3))


def build_model(net: P.Network, input_shape: tuple[int, int, int]) -> ConvNet:
    in_shapes = {row.name: row.in_shape for row in layer_table(net, input_shape)}
    return ConvNet(_build(net.features, "features", in_shapes), _build(net.head, "head", in_shapes))


def _build(node: P.Node, path: str, in_shapes: dict[str, tuple[int, ...]]) -> nn.Module:
    if isinstance(node, P.Sequence):
        return nn.Sequential(OrderedDict(
            (child.name, _build(child, f"{path}.{child.name}", in_shapes)) for child in node.layers))
    if isinstance(node, P.Residual):
        shortcut = _build(node.shortcut, f"{path}.shortcut", in_shapes) if node.shortcut.layers else nn.Identity()
        post = (node.post.name, _build(node.post, f"{path}.{node.post.name}", in_shapes)) if node.post else None
        return Residual(_build(node.body, f"{path}.body", in_shapes), shortcut, post)
    if isinstance(node, P.Concat):
        return Concat([(b.name, _build(b, f"{path}.{b.name}", in_shapes)) for b in node.branches])
    shape = in_shapes[path]
    if isinstance(node, P.Conv):
        return nn.Conv2d(shape[0], node.out, node.kernel, node.stride, node.padding, node.dilation, node.groups,
                         bias=node.bias)
    if isinstance(node, P.BatchNorm):
        return nn.BatchNorm2d(shape[0])
    if isinstance(node, P.Activation):
        return ACTIVATIONS[node.kind]()
    if isinstance(node, P.Pool):
        pool = nn.MaxPool2d if node.kind == "max" else nn.AvgPool2d
        return pool(node.kernel, node.stride, node.padding, ceil_mode=node.ceil)
    if isinstance(node, P.GlobalAvgPool):
        return GlobalAvgPool()
    if isinstance(node, P.Flatten):
        return Flatten()
    if isinstance(node, P.Dropout):
        return nn.Dropout(node.p)
    if isinstance(node, P.Linear):
        return nn.Linear(shape[0], node.out, bias=node.bias)
    raise TypeError(f"unknown plan node {node!r}")
