"""The report's pipeline: torchvision's CIFAR100 __getitem__ (uint8 HWC -> PIL) and the template loop."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from tune_cifar.data import DeviceData
from tune_cifar.models import build_model


class PilDataset(torch.utils.data.Dataset):
    """Images handed out one at a time as PIL, as torchvision.datasets.CIFAR100 does."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Any):
        self.images = np.ascontiguousarray(images.transpose(0, 2, 3, 1))  # (N, 32, 32, 3) HWC
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def template_transform(mean: torch.Tensor, std: torch.Tensor) -> Any:
    import torchvision.transforms as T

    return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                      T.Normalize(mean.tolist(), std.tolist())])


def template_loader(dd: DeviceData, batch_size: int, workers: int) -> torch.utils.data.DataLoader:
    """The template's training loader over the same images as `dd`; persistent workers (kinder than
    the template, which restarts them every epoch) so that a timed pass holds no worker start-up."""
    ds = PilDataset(dd.train_x.cpu().numpy(), dd.train_y.cpu().numpy(), template_transform(dd.mean.cpu(), dd.std.cpu()))
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                       persistent_workers=workers > 0)


def reference_model(seed: int, device: torch.device, lr: float = 0.05) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)  # the same initial weights as TrainState(cfg) with cfg.seed == seed
    model = build_model("mobilenet").to(device)
    return model, torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)


def reference_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, loader: Any,
                    device: torch.device) -> tuple[float, float, int]:
    """The course template's training loop: mean loss, accuracy, images seen."""
    criterion = nn.CrossEntropyLoss()
    model.train()
    running_loss, correct, total = 0.0, 0, 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        outputs = model(images)
        loss = criterion(outputs, labels)
        loss.backward()
        optimizer.step()
        running_loss += loss.item() * labels.size(0)  # a host sync every step
        _, predicted = outputs.max(1)
        total += labels.size(0)
        correct += predicted.eq(labels).sum().item()
    return running_loss / total, correct / total, total
