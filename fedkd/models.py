"""The model zoo: teachers and students as plain `nn.Module`s, sized from the data's shape.

Owns: MLP, a small CNN, a ResNet-8-style net for 32x32 colour images, and `build_model`, which
maps a name ("auto" included) and an input shape to a module. Must not touch: data or training.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fedkd.config import MODELS

# The option's names are Config's vocabulary (it validates them without importing torch); this
# module implements every one of them but "auto".
MODEL_NAMES = tuple(name for name in MODELS if name != "auto")


class MLP(nn.Module):
    """Flatten -> two hidden layers with ReLU -> logits. Enough for digits and MNIST-sized inputs."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, *shape) -> (B, K)
        return self.net(x)


class CNN(nn.Module):
    """Two 3x3 conv blocks (the second pools only if the image is large enough), then a linear head."""

    def __init__(self, channels: int, height: int, width: int, num_classes: int, width_mult: int = 32):
        super().__init__()
        c1, c2 = width_mult, 2 * width_mult
        pool2 = min(height, width) >= 16  # an 8x8 digit keeps its second-stage resolution
        self.features = nn.Sequential(
            nn.Conv2d(channels, c1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2) if pool2 else nn.Identity(),
        )
        h, w = height // 2, width // 2
        if pool2:
            h, w = h // 2, w // 2
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c2 * h * w, 128), nn.ReLU(), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, K)
        return self.head(self.features(x))


class _Block(nn.Module):
    """Basic residual block: two 3x3 convs with batch norm; a 1x1 projection when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.skip(x))


class ResNet8(nn.Module):
    """ResNet-8 in the CIFAR style: a stem conv, three residual stages (16/32/64 channels), pool, linear.

    1 + 3*2 + 1 = 8 weighted layers, as in the small ResNets of He et al. (2016) for 32x32 images.
    """

    def __init__(self, channels: int, num_classes: int, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.stages = nn.Sequential(
            _Block(width, width, 1), _Block(width, 2 * width, 2), _Block(2 * width, 4 * width, 2)
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, K)
        return self.head(self.stages(self.stem(x)))


def auto_model(input_shape: tuple[int, ...]) -> str:
    """The default architecture for a data shape: MLP for features and tiny images, CNN for
    greyscale images, ResNet-8 for colour images of 32x32 and up."""
    if len(input_shape) != 3 or min(input_shape[1:]) < 16:
        return "mlp"
    return "resnet8" if input_shape[0] == 3 and min(input_shape[1:]) >= 32 else "cnn"


def resolve(name: str, input_shape: tuple[int, ...]) -> str:
    """The architecture a model name stands for on this data ("auto" resolved)."""
    return auto_model(input_shape) if name == "auto" else name


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A fresh module. `input_shape` is one example's shape, channels first (e.g. (1, 8, 8))."""
    name = resolve(name, input_shape)
    if name == "mlp":
        return MLP(math.prod(input_shape), num_classes)
    if name not in MODEL_NAMES:
        raise ValueError(f"model '{name}' is unknown; choose one of {', '.join(MODELS)}")
    if len(input_shape) != 3:
        raise ValueError(f"model '{name}' needs image input (C, H, W); this data has shape {input_shape}: use mlp")
    c, h, w = input_shape
    if name == "cnn":
        return CNN(c, h, w, num_classes)
    if min(h, w) < 8:
        raise ValueError(f"resnet8 needs images of at least 8x8; this data has {h}x{w}")
    return ResNet8(c, num_classes)
