"""cunet-edge: continuous U-Net diffusion models, made fast for edge GPUs.

Importing the package is cheap: torch, onnxruntime and TensorRT are imported only by the
modules that use them.
"""

from .errors import (
    ArtifactError,
    BackendMissingError,
    ConfigError,
    CunetEdgeError,
    DatasetError,
    OutputPathError,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "CunetEdgeError",
    "ConfigError",
    "ArtifactError",
    "DatasetError",
    "OutputPathError",
    "BackendMissingError",
]
