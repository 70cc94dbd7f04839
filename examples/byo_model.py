"""A network of your own for cnnbench: any callable that takes the input shape and number of classes
(and the variant's `kwargs`) and returns an nn.Module. Used by config/byo.yaml as
`base: examples.byo_model:build_net`; editing this file reruns exactly the variants built from it."""

from torch import nn


def build_net(input_shape, num_classes, width=24, dropout=0.0):
    channels = input_shape[0]
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1, groups=width), nn.Conv2d(width, 2 * width, 1),  # depthwise-separable
        nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(2 * width, num_classes),
    )
