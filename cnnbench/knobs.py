"""The training protocol's knobs: one typed, commented field each (the model's are in models/convnet.py).

Study-wide defaults go under `protocol:`, overridable per variant; the schema's types and bounds check
the same names (tests/test_config.py keeps them in step).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass(frozen=True)
class AugmentKnobs:
    """On-device, per-batch augmentation (applied to training batches only)."""

    flip: bool = False  # random horizontal flip (p = 0.5)
    shift: int = 0  # random translation, up to this many pixels in x and y
    rotate: float = 0.0  # random rotation, up to +-degrees
    shear: float = 0.0  # random shear, up to +-degrees
    brightness: float = 0.0  # multiply by a factor in [1-b, 1+b]
    contrast: float = 0.0  # scale deviations from the image mean by [1-c, 1+c]
    saturation: float = 0.0  # RGB only: blend with the grey image by [1-s, 1+s]


@dataclass(frozen=True)
class TrainKnobs:
    """Training protocol; study-wide defaults under `protocol:`, overridable per variant."""

    epochs: int = 10
    batch_size: int = 64  # images per step; the last partial batch of an epoch is dropped
    optimizer: str = "sgd"  # sgd | adam | adamw
    lr: float = 0.05  # peak learning rate
    momentum: float = 0.9  # sgd momentum (adam: beta1)
    nesterov: bool = True  # sgd only
    weight_decay: float = 5e-4  # L2 penalty (decoupled for adamw)
    l1: float = 0.0  # L1 penalty on conv and linear weights (kernels), added to the loss
    decay_biases: bool = True  # weight_decay and l1 also act on biases and BatchNorm's scale and shift
    activity: float = 0.0  # activity penalty: this x the sum over activation layers of the mean |output|
    schedule: str = "onecycle"  # constant | cosine | onecycle (linear up 20%, down to 0) | step (/10 at 50%, 75%)
    label_smoothing: float = 0.0
    augment: AugmentKnobs = field(default_factory=AugmentKnobs)
    labels_per_class: int | None = None  # train on this many images per class of each fold's training part
    pretrained: str | None = None  # start from the weights of this `pretrain:` entry (all but the head)
    freeze: bool = False  # with pretrained: train the head only (the pretrained layers stay bit-identical)
    finetune_lr_factor: float = 1.0  # with pretrained: the pretrained layers' lr is the lr times this


TRAIN_KNOBS = tuple(f.name for f in fields(TrainKnobs))
