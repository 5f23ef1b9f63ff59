"""The small CNN whose features FID and KID are measured in (`cunet_edge.evaluation` trains and caches it)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Classifier", "FeatureExtractor"]


class Classifier(nn.Module):
    """Small CNN for (C, S, S) images in [-1, 1]: 64-d features, then a linear class head."""

    num_features = 64

    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.SiLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.SiLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.SiLU(),
            nn.AvgPool2d(2),
            # A 2x2 grid rather than a global average: where strokes are matters for digits.
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(64 * 4, self.num_features), nn.SiLU(),
        )
        self.head = nn.Linear(self.num_features, num_classes)
        self.test_accuracy: float | None = None  # set by load_or_train_classifier

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (N, 64): the space FID and KID are measured in."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (N, num_classes)."""
        return self.head(self.body(x))


class FeatureExtractor(nn.Module):
    """A classifier's features as a torchmetrics feature module: eval mode, no grad, float64."""

    def __init__(self, classifier: Classifier):
        super().__init__()
        self.classifier = classifier.eval()
        self.num_features = classifier.num_features

    def train(self, mode: bool = True) -> FeatureExtractor:
        """Stay in eval mode whatever torchmetrics asks, like its own Inception wrapper."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, S, S) images in [-1, 1] -> (N, 64) float64 features (FID sums are float64)."""
        return self.classifier.features(x.float()).double()
