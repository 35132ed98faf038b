"""Reference networks for benchmarks and examples, and :func:`make_classifier`.

Every network names its layers (``conv1``, ``relu1``, ..., ``fc1``, ``logits``) so that detectors can be
pointed at an internal layer by name, carries ``input_shape`` and ``nb_classes`` attributes, and returns
logits.

- :class:`DigitsCNN` for scikit-learn's 8x8 digits.
- :class:`BadNetsCNN` the MNIST network of BadNets (Gu et al., 2017) for 28x28 grayscale.
- :class:`CifarCNN` the Carlini-Wagner CIFAR network (Carlini & Wagner, 2017) for 32x32 colour.
- :class:`ResNet18` ResNet-18 adapted to 32x32 inputs (3x3 stem, no max-pool).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from art_backdoor_ext.exceptions import InvalidParameterError

__all__ = ["DigitsCNN", "BadNetsCNN", "CifarCNN", "ResNet18", "ARCHITECTURES", "build_model", "make_classifier"]


class DigitsCNN(nn.Module):
    """Small CNN for 8x8 grayscale digits: two 3x3 convolutions, one pooling, two fully connected layers."""

    def __init__(self, nb_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.input_shape = (1, 8, 8)
        self.nb_classes = nb_classes
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(2 * width * 4 * 4, 64)
        self.relu3 = nn.ReLU()
        self.logits = nn.Linear(64, nb_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x)))))
        return self.logits(self.relu3(self.fc1(self.flatten(x))))


class BadNetsCNN(nn.Module):
    """The BadNets MNIST CNN (Gu et al., 2017): conv 16@5x5, pool, conv 32@5x5, pool, FC 512, FC K."""

    def __init__(self, nb_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.input_shape = (in_channels, 28, 28)
        self.nb_classes = nb_classes
        self.conv1 = nn.Conv2d(in_channels, 16, 5)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.AvgPool2d(2)
        self.conv2 = nn.Conv2d(16, 32, 5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.AvgPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(32 * 4 * 4, 512)
        self.relu3 = nn.ReLU()
        self.logits = nn.Linear(512, nb_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.logits(self.relu3(self.fc1(self.flatten(x))))


class CifarCNN(nn.Module):
    """The Carlini-Wagner CIFAR-10 CNN: 2x conv 64, pool, 2x conv 128, pool, FC 256, FC 256, FC K."""

    def __init__(self, nb_classes: int = 10) -> None:
        super().__init__()
        self.input_shape = (3, 32, 32)
        self.nb_classes = nb_classes
        self.conv1, self.relu1 = nn.Conv2d(3, 64, 3), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(64, 64, 3), nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv3, self.relu3 = nn.Conv2d(64, 128, 3), nn.ReLU()
        self.conv4, self.relu4 = nn.Conv2d(128, 128, 3), nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1, self.relu5 = nn.Linear(128 * 5 * 5, 256), nn.ReLU()
        self.fc2, self.relu6 = nn.Linear(256, 256), nn.ReLU()
        self.logits = nn.Linear(256, nb_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu2(self.conv2(self.relu1(self.conv1(x)))))
        x = self.pool2(self.relu4(self.conv4(self.relu3(self.conv3(x)))))
        x = self.relu6(self.fc2(self.relu5(self.fc1(self.flatten(x)))))
        return self.logits(x)


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 (He et al., 2016) adapted to 32x32 inputs: 3x3 stem, four stages, global pooling."""

    def __init__(self, nb_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.input_shape = (in_channels, 32, 32)
        self.nb_classes = nb_classes
        self.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu1 = nn.ReLU()
        layers: list[nn.Module] = []
        in_planes = 64
        for i, planes in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            stage = nn.Sequential(_BasicBlock(in_planes, planes, stride), _BasicBlock(planes, planes, 1))
            layers.append(stage)
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.logits = nn.Linear(512, nb_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.logits(self.flatten(self.pool(x)))


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "digits-cnn": DigitsCNN,
    "badnets-cnn": BadNetsCNN,
    "cifar-cnn": CifarCNN,
    "resnet18": ResNet18,
}


def build_model(arch: str, *, nb_classes: int = 10, random_state: int | None = None, **kwargs: Any) -> nn.Module:
    """Build a reference network by name (see :data:`ARCHITECTURES`), with seeded initial weights."""
    if arch not in ARCHITECTURES:
        raise InvalidParameterError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    if random_state is None:
        return ARCHITECTURES[arch](nb_classes=nb_classes, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(random_state))
        return ARCHITECTURES[arch](nb_classes=nb_classes, **kwargs)


def make_classifier(
    model: nn.Module,
    *,
    input_shape: tuple[int, ...] | None = None,
    nb_classes: int | None = None,
    learning_rate: float = 1e-3,
    clip_values: tuple[float, float] = (0.0, 1.0),
    preprocessing: tuple[Any, Any] | None = None,
    device_type: str = "auto",
) -> Any:
    """Wrap ``model`` in an ART ``PyTorchClassifier`` (cross-entropy, Adam, clip values, CUDA when available).

    :param model: A PyTorch module returning logits.
    :param input_shape: (C, H, W); defaults to ``model.input_shape``.
    :param nb_classes: Defaults to ``model.nb_classes``.
    :param device_type: ``"auto"`` (CUDA when available), ``"gpu"`` or ``"cpu"``.
    :return: ``art.estimators.classification.PyTorchClassifier``.

    Example::

        from art_backdoor_ext.models import DigitsCNN, make_classifier
        classifier = make_classifier(DigitsCNN())
    """
    from art.estimators.classification import PyTorchClassifier

    if not isinstance(model, nn.Module):
        raise InvalidParameterError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    shape = input_shape if input_shape is not None else getattr(model, "input_shape", None)
    classes = nb_classes if nb_classes is not None else getattr(model, "nb_classes", None)
    if shape is None or classes is None:
        raise InvalidParameterError(
            "input_shape and nb_classes are needed: pass them or give the model input_shape/nb_classes attributes"
        )
    if device_type not in ("auto", "gpu", "cpu"):
        raise InvalidParameterError(f"device_type must be 'auto', 'gpu' or 'cpu', got {device_type!r}")
    use_gpu = device_type == "gpu" or (device_type == "auto" and torch.cuda.is_available())
    return PyTorchClassifier(
        model=model,
        loss=nn.CrossEntropyLoss(),
        optimizer=torch.optim.Adam(model.parameters(), lr=learning_rate),
        input_shape=tuple(shape),
        nb_classes=int(classes),
        clip_values=clip_values,
        preprocessing=preprocessing if preprocessing is not None else (0.0, 1.0),
        device_type="gpu" if use_gpu else "cpu",
    )
