"""Classifier architectures, registered by name in one visible place.

Every network here is split the same way: ``net.body(x)`` gives the penultimate features (``N×D``,
the FID feature space) and ``net.head`` is the final linear layer (``N×D → N×classes``).

* **Trainable by the tool** (``unlearnctl classifier train --arch``): :data:`TRAINABLE`.
  ``digitnet`` is the two-convolution CNN (the default for small grey images such as 8×8 digits);
  ``resnet8`` / ``resnet20`` are CIFAR-style ResNets (He et al. 2016, §4.2: a 3×3 stem, three stages of
  BasicBlocks at widths 16/32/64, global average pooling; depth = 6n + 2).
* **Brought by the user** (``--classifier PATH``): any torchvision classification architecture
  (``torchvision.models.list_models(module=torchvision.models)``), built with ``weights=None`` (nothing is
  downloaded) and filled from a safetensors state dict; ``stem="cifar"`` gives the ResNet family the
  common 32-px stem (3×3 stride-1 ``conv1``, no max-pool).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from unlearnctl.errors import BadInputError, require


class DigitNet(nn.Module):
    """conv(32) → conv(64) → pool to 4×4 → fc(128) [features] → fc(num_classes)."""

    def __init__(self, channels: int, num_classes: int, feature_dim: int = 128):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.GELU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(64 * 16, feature_dim), nn.GELU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with an identity (or 1×1 projection) shortcut: ``relu(F(x) + shortcut(x))``."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))  # N×c_out×H/s×W/s
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """CIFAR-style ResNet-(6n+2): stem conv(16) → n blocks at 16, 32 (stride 2), 64 (stride 2) → pool → fc.

    Features are the 64-d pooled output (``body``); ``head`` maps them to the classes.
    """

    def __init__(self, channels: int, num_classes: int, blocks_per_stage: int, widths: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()]
        c_in = widths[0]
        for stage, width in enumerate(widths):
            for block in range(blocks_per_stage):
                layers.append(BasicBlock(c_in, width, stride=2 if stage > 0 and block == 0 else 1))
                c_in = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class SplitNet(nn.Module):
    """A torchvision classifier with its final linear layer moved to ``head`` (``body`` ends in the features)."""

    def __init__(self, body: nn.Module, head: nn.Linear):
        super().__init__()
        self.body, self.head = body, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


# architecture name -> builder(channels, num_classes); the tool trains these (`classifier train --arch`)
TRAINABLE: dict[str, Callable[[int, int], nn.Module]] = {
    "digitnet": lambda channels, classes: DigitNet(channels, classes),
    "resnet8": lambda channels, classes: SmallResNet(channels, classes, blocks_per_stage=1),
    "resnet20": lambda channels, classes: SmallResNet(channels, classes, blocks_per_stage=3),
}
ARCH_ALIASES = {"resnet": "resnet20"}  # --arch resnet
RESNET_MIN_RESOLUTION = 32  # --arch auto: RGB data at least this size gets a ResNet


def auto_arch(channels: int, resolution: int) -> str:
    """``resnet20`` for RGB data of at least 32 px, else ``digitnet`` (so 8×8 digits keep their classifier)."""
    return "resnet20" if channels == 3 and resolution >= RESNET_MIN_RESOLUTION else "digitnet"


def trainable_arch(name: str, channels: int, resolution: int) -> str:
    """Resolve ``--arch`` (``auto``, an alias or a :data:`TRAINABLE` name) to a registered name."""
    if name == "auto":
        return auto_arch(channels, resolution)
    name = ARCH_ALIASES.get(name, name)
    require(name in TRAINABLE, f"unknown classifier architecture {name!r}; choose auto, "
            + ", ".join([*TRAINABLE, *ARCH_ALIASES]))
    return name


def torchvision_archs() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def build_net(arch: str, channels: int, num_classes: int, stem: str | None = None) -> nn.Module:
    """An untrained network of ``arch`` (a :data:`TRAINABLE` name or a torchvision classification model).

    Torchvision models are built with ``weights=None`` and split into ``body``/``head`` *after*
    :func:`load_weights` (their state-dict keys are torchvision's own).
    """
    if arch in TRAINABLE:
        require(stem is None, f"stem applies to torchvision ResNets, not {arch}")
        return TRAINABLE[arch](channels, num_classes)
    import torchvision

    names = torchvision_archs()
    require(arch in names, f"unknown classifier architecture {arch!r}; use one of {', '.join(TRAINABLE)} or a torchvision "
            f"classification model ({', '.join(n for n in names if n.startswith('resnet'))}, ...)")
    require(channels == 3, f"torchvision architectures take 3 input channels; the classifier file says {channels}")
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    if stem == "cifar":
        require(hasattr(model, "conv1") and hasattr(model, "maxpool"), f"stem cifar applies to the ResNet family, not {arch}")
        model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    else:
        require(stem in (None, "imagenet"), f"unknown stem {stem!r}; use imagenet (torchvision's) or cifar")
    return model


def load_weights(net: nn.Module, arch: str, state: dict[str, torch.Tensor], num_classes: int) -> nn.Module:
    """Fill ``net`` from ``state`` (strict: every key and shape must match) and split torchvision models."""
    nonfinite = [key for key, value in state.items() if value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if nonfinite:
        raise BadInputError(f"classifier weight {nonfinite[0]} holds NaN or Inf values; the file is broken")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise BadInputError(f"the weights do not fit architecture {arch} with {num_classes} classes: {detail[:300]}") from None
    if arch in TRAINABLE:
        return net
    linears = [(name, module) for name, module in net.named_modules() if isinstance(module, nn.Linear)]
    require(bool(linears), f"{arch} has no final linear layer to read class scores and features from")
    name, head = linears[-1]
    require(head.out_features == num_classes, f"{arch}'s last linear layer {name} has {head.out_features} outputs, "
            f"not the {num_classes} classes")
    parent = net.get_submodule(name.rpartition(".")[0]) if "." in name else net
    setattr(parent, name.rpartition(".")[2], nn.Identity())  # body now ends in the features
    return SplitNet(net, head)
