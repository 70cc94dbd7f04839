"""The model plan: a small, torch-free description of a network.

A preset turns knobs into a plan; `geometry` walks the plan with textbook formulas (shapes, params,
MACs, receptive field) before anything is built, and `build` turns the same plan into torch modules.
One description, two readers: the layer table and the built model cannot drift apart unnoticed
(tests cross-check them).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Conv:
    name: str
    out: int  # output channels
    kernel: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1
    bias: bool = True


@dataclass(frozen=True)
class BatchNorm:
    name: str


@dataclass(frozen=True)
class Activation:
    name: str
    kind: str  # relu | leaky_relu | elu | gelu | silu | sigmoid | tanh


@dataclass(frozen=True)
class Pool:
    name: str
    kind: str  # max | avg
    kernel: int
    stride: int
    padding: int = 0
    ceil: bool = False  # ceil_mode: keeps a last partial window (VGG on 28x28 inputs)


@dataclass(frozen=True)
class GlobalAvgPool:
    name: str  # (B, C, H, W) -> (B, C)


@dataclass(frozen=True)
class Flatten:
    name: str  # (B, C, H, W) -> (B, C*H*W)


@dataclass(frozen=True)
class Dropout:
    name: str
    p: float


@dataclass(frozen=True)
class Linear:
    name: str
    out: int
    bias: bool = True


@dataclass(frozen=True)
class Sequence:
    name: str
    layers: tuple[Node, ...]


@dataclass(frozen=True)
class Residual:
    """out = post(body(x) + shortcut(x)); an empty shortcut is the identity."""

    name: str
    body: Sequence
    shortcut: Sequence
    post: Activation | None


@dataclass(frozen=True)
class Concat:
    """Parallel branches on the same input, concatenated along channels (inception)."""

    name: str
    branches: tuple[Sequence, ...]


Node = Conv | BatchNorm | Activation | Pool | GlobalAvgPool | Flatten | Dropout | Linear | Sequence | Residual | Concat


@dataclass(frozen=True)
class Network:
    """A whole model: `features` (convolutional trunk, ends in a feature map) and `head` (to logits)."""

    features: Sequence
    head: Sequence


def plan_digest(net: Network) -> str:
    """The plan's fingerprint in every run's identity: any change to what a preset builds (or to the plan's
    own fields) changes it, so cached runs of that network stop matching. tests/expect/models/ holds each
    preset's digest, so such a change is a reviewed diff, never a silent retrain."""
    return hashlib.sha256(repr(net).encode()).hexdigest()[:16]
