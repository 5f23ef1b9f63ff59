"""Inception-v3 features for FID/KID: torch-fidelity's network as torchmetrics' FID runs it, behind the same
feature-module interface as the classifier's (`cunet_edge.evaluation` finds the weights and builds it).

The network takes what torch-fidelity expects: uint8 RGB images, 0..255, any size; it resizes them to 299 x 299
itself (torchmetrics' bilinear, antialiased resize, as `FrechetInceptionDistance` does). This wrapper turns the
project's (N, C, S, S) float images in [-1, 1] into that: rounded to uint8, a gray channel repeated to three.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..compat import ensure_torchvision_imports

__all__ = ["InceptionFeatures", "load_inception_v3", "to_uint8_rgb"]

INCEPTION_FEATURES = 2048  # pool3 features: the layer FID and KID are defined on


def to_uint8_rgb(x: torch.Tensor) -> torch.Tensor:
    """(N, 1 or 3, H, W) images in [-1, 1] -> (N, 3, H, W) uint8 in 0..255 (gray repeated to three channels)."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected (N, 1 or 3, H, W) images, got {tuple(x.shape)}")
    u8 = ((x.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return u8.expand(-1, 3, -1, -1).contiguous() if u8.shape[1] == 1 else u8


class InceptionFeatures(nn.Module):
    """A network on uint8 RGB images as a torchmetrics feature module on [-1, 1] images: eval mode, no grad,
    float64 (N, num_features) out, like `models.classifier.FeatureExtractor`.

    `network` is torch-fidelity's Inception-v3 (`load_inception_v3`), or any module with the same contract:
    (N, 3, H, W) uint8 in, (N, num_features) (or (N, num_features, 1, 1)) features out.
    """

    def __init__(self, network: nn.Module, num_features: int = INCEPTION_FEATURES):
        super().__init__()
        self.network = network.eval()
        self.num_features = num_features

    def train(self, mode: bool = True) -> InceptionFeatures:
        """Stay in eval mode whatever torchmetrics asks."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(to_uint8_rgb(x)).reshape(x.shape[0], -1).double()


def load_inception_v3(weights: Path) -> nn.Module:
    """torchmetrics' `NoTrainInceptionV3` (torch-fidelity's Inception-v3, the network of its FID and KID) with
    its 2048-d pool3 features, built from a local weights file: never downloads (the path is always given).

    Raises ImportError without torch-fidelity, RuntimeError/OSError/pickle errors on a file that is not its
    weights (the caller turns them into one-line errors).
    """
    ensure_torchvision_imports()  # torch-fidelity and torchmetrics import torchvision
    import torch_fidelity  # noqa: F401  (torchmetrics' class is a stand-in Module without it)
    from torchmetrics.image.fid import NoTrainInceptionV3

    return NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(INCEPTION_FEATURES)],
                              feature_extractor_weights_path=str(weights))
