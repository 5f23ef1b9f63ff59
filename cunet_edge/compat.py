"""Work-arounds for broken third-party combinations that users really have, each with its reason.

Written by hand because no library does it; keep each one small and a no-op where the combination
is healthy.
"""

from __future__ import annotations

import importlib.util
import re
import sys

from .errors import BackendMissingError

__all__ = ["ensure_torchvision_imports"]

# torchvision's C++ op schemas that its `_meta_registrations` registers fake kernels for without first
# checking that its op library loaded (torchvision ≥ 0.17); the schemas are torchvision's own.
_UNGUARDED_OPS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBRARY = []  # the torch.library fragment must outlive the call, or its definitions are dropped


def ensure_torchvision_imports() -> None:
    """Let `import torchvision` (and torchmetrics, which imports it when installed) succeed beside a CPU-only torch.

    PyPI's Linux torchvision wheels are CUDA builds. Beside a CPU-only torch (the CPU wheel, or a
    Jetson/ARM build) their C++ op library cannot load, and `import torchvision` then fails with
    "operator torchvision::nms does not exist": its `_meta_registrations` registers fake kernels
    for `nms` and `qnms` without checking the ops exist. Defining those two schemas (with no
    kernel) lets its pure-Python parts (transforms, datasets, utils) import; its C++ ops
    (nms, roi_align, ...) stay unavailable, as they were. A healthy torchvision is not touched, and
    without torchvision this does nothing.
    """
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is None:
        return
    try:
        import torchvision  # noqa: F401
        return
    except RuntimeError as exc:
        missing = re.search(r"operator torchvision::(\w+) does not exist", str(exc))
        if missing is None or missing.group(1) not in _UNGUARDED_OPS:
            raise BackendMissingError("torchvision", f"it does not import beside torch here ({exc}); install the "
                                                     "torchvision build that matches your torch") from None
    import torch

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]  # the failed import left its submodules behind; import them afresh
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _UNGUARDED_OPS.values():
        lib.define(schema)
    _LIBRARY.append(lib)
    import torchvision  # noqa: F401,F811
