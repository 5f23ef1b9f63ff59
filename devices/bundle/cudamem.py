"""GPU buffers and a stream for run.py's TensorRT backend, through whichever CUDA binding this board has.

Tried in this order (or the one asked for with run.py --cuda): cuda-python (`cuda.bindings.runtime`,
or `cuda.cudart` of older releases), PyTorch's CUDA tensors and streams (when torch is installed and
sees a GPU), and the CUDA runtime library itself (libcudart.so) through ctypes. Python >= 3.8, the
standard library and numpy only; each binding is imported when it is tried.

Every binding offers the same few calls: alloc(nbytes) -> device address, free(address),
to_device(address, array), to_host(array, address) (both queued on the binding's stream),
stream_handle() (an int for TensorRT's execute_async_v3), synchronize() and close().
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import numpy as np

BINDINGS = ("cuda-python", "torch", "ctypes")
# cudaMemcpyKind values of the CUDA runtime API (driver_types.h).
HOST_TO_DEVICE, DEVICE_TO_HOST = 1, 2
# Where libcudart lives when it is not on the loader's path: the CUDA toolkit, and JetPack (aarch64 target dir).
CUDART_NAMES = ("libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0")
CUDART_DIRS = ("/usr/local/cuda/lib64", "/usr/local/cuda/targets/aarch64-linux/lib",
               "/usr/local/cuda/targets/x86_64-linux/lib")


class CudaError(Exception):
    """A CUDA call that returned an error (its name and the runtime's message)."""


class Unavailable(Exception):
    """This binding cannot be used here; the message says why (it goes into the list of what was tried)."""


class _RuntimeAPI:
    """What cuda-python and ctypes share: both call the CUDA runtime API (self.api) and check each call (_ck)."""

    def _call(self, name, *args):
        return self._ck(name, getattr(self.api, name)(*args))

    def synchronize(self):
        self._call("cudaStreamSynchronize", self.stream)

    def close(self):
        for ptr in list(self.live):
            self.free(ptr)
        if self.stream is not None:
            self._call("cudaStreamDestroy", self.stream)
            self.stream = None


class CudaPython(_RuntimeAPI):
    """cuda-python: every call returns (cudaError_t, values...)."""

    name = "cuda-python"

    def __init__(self):
        try:
            from cuda.bindings import runtime as rt  # cuda-python >= 12.6
        except ImportError:
            try:
                from cuda import cudart as rt  # older cuda-python (removed in 13)
            except ImportError:
                raise Unavailable("not installed (pip3 install cuda-python)")
        self.rt = self.api = rt
        self.stream = self._ck("cudaStreamCreate", rt.cudaStreamCreate())
        self.live = set()

    def describe(self):
        try:
            from cuda import bindings
            return "cuda-python %s" % getattr(bindings, "__version__", "?")
        except ImportError:
            return "cuda-python (cuda.cudart)"

    def _ck(self, what, result):
        err = result[0]
        if int(err) != 0:
            msg = self.rt.cudaGetErrorString(err)
            text = msg[1].decode() if isinstance(msg, tuple) and isinstance(msg[1], bytes) else str(msg)
            raise CudaError("%s failed: %s (%s)" % (what, getattr(err, "name", int(err)), text))
        return result[1] if len(result) == 2 else None

    def alloc(self, nbytes):
        ptr = int(self._ck("cudaMalloc", self.rt.cudaMalloc(nbytes)))
        self.live.add(ptr)
        return ptr

    def free(self, ptr):
        self.live.discard(ptr)
        self._ck("cudaFree", self.rt.cudaFree(ptr))

    def _copy(self, dst, src, nbytes, kind):
        kinds = self.rt.cudaMemcpyKind
        k = kinds.cudaMemcpyHostToDevice if kind == HOST_TO_DEVICE else kinds.cudaMemcpyDeviceToHost
        self._ck("cudaMemcpyAsync", self.rt.cudaMemcpyAsync(dst, src, nbytes, k, self.stream))

    def to_device(self, ptr, arr):
        self._copy(ptr, arr.ctypes.data, arr.nbytes, HOST_TO_DEVICE)

    def to_host(self, arr, ptr):
        self._copy(arr.ctypes.data, ptr, arr.nbytes, DEVICE_TO_HOST)

    def stream_handle(self):
        return int(self.stream)


class Torch:
    """PyTorch's CUDA caching allocator and a stream of its own: a byte tensor per buffer."""

    name = "torch"

    def __init__(self, device="cuda"):
        try:
            import torch
        except ImportError:
            raise Unavailable("not installed")
        except OSError as exc:  # a wheel whose CUDA libraries do not load
            raise Unavailable("does not import (%s)" % exc)
        if device == "cuda" and not torch.cuda.is_available():
            raise Unavailable("torch %s sees no CUDA device" % torch.__version__)
        self.torch, self.device, self.version = torch, device, torch.__version__
        # A CPU device (tests only: no GPU there) has no stream; copies are then synchronous.
        try:
            self.stream = torch.cuda.Stream() if device == "cuda" else None
        except RuntimeError as exc:
            raise Unavailable("torch could not make a CUDA stream (%s)" % exc)
        self.tensors = {}  # address -> the tensor that owns it

    def describe(self):
        return "torch %s" % self.version

    def _on_stream(self):
        return self.torch.cuda.stream(self.stream) if self.stream is not None else _NoStream()

    def alloc(self, nbytes):
        t = self.torch.empty(nbytes, dtype=self.torch.uint8, device=self.device)
        self.tensors[t.data_ptr()] = t
        return t.data_ptr()

    def free(self, ptr):
        self.tensors.pop(ptr, None)

    def _bytes(self, arr):
        if not arr.flags.c_contiguous:  # a copy would be filled instead of arr
            raise ValueError("the torch binding copies C-contiguous arrays only")
        return self.torch.from_numpy(arr.reshape(-1).view(np.uint8))

    def to_device(self, ptr, arr):
        if arr.nbytes:
            with self._on_stream():
                self.tensors[ptr][:arr.nbytes].copy_(self._bytes(arr), non_blocking=False)

    def to_host(self, arr, ptr):
        if arr.nbytes:
            with self._on_stream():
                self._bytes(arr).copy_(self.tensors[ptr][:arr.nbytes])  # arr is contiguous: written in place

    def stream_handle(self):
        return self.stream.cuda_stream if self.stream is not None else 0

    def synchronize(self):
        if self.stream is not None:
            self.stream.synchronize()

    def close(self):
        self.synchronize()
        self.tensors = {}


class _NoStream:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class Ctypes(_RuntimeAPI):
    """libcudart.so through ctypes: the runtime API's own C signatures (cuda_runtime_api.h), each call checked.

    Written by hand: no maintained package binds the CUDA runtime without either cuda-python or a framework, and
    this is the fallback for boards that have neither."""

    name = "ctypes"

    def __init__(self, path=None):
        self.lib, self.path = _load_cudart(path)
        self.api = self.lib
        vp, size_t, c_int = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
        sigs = {  # cudaError_t (an enum: int) name(args)
            "cudaMalloc": [ctypes.POINTER(vp), size_t],
            "cudaFree": [vp],
            "cudaMemcpyAsync": [vp, vp, size_t, c_int, vp],  # dst, src, count, cudaMemcpyKind, cudaStream_t
            "cudaStreamCreate": [ctypes.POINTER(vp)],
            "cudaStreamSynchronize": [vp],
            "cudaStreamDestroy": [vp],
        }
        try:
            for name, args in sigs.items():
                fn = getattr(self.lib, name)
                fn.argtypes, fn.restype = args, c_int
            self.lib.cudaGetErrorString.argtypes = [c_int]
            self.lib.cudaGetErrorString.restype = ctypes.c_char_p
        except AttributeError as exc:
            raise Unavailable("%s is not the CUDA runtime (%s)" % (self.path, exc))
        stream = vp()
        self._ck("cudaStreamCreate", self.lib.cudaStreamCreate(ctypes.byref(stream)))
        self.stream = stream
        self.live = set()

    def describe(self):
        return "ctypes %s" % self.path

    def _ck(self, what, err):
        if err != 0:
            msg = self.lib.cudaGetErrorString(err)
            raise CudaError("%s failed: error %d (%s)" % (what, err, (msg or b"?").decode(errors="replace")))

    def alloc(self, nbytes):
        ptr = ctypes.c_void_p()
        self._ck("cudaMalloc", self.lib.cudaMalloc(ctypes.byref(ptr), nbytes))
        self.live.add(ptr.value)
        return ptr.value

    def free(self, ptr):
        self.live.discard(ptr)
        self._ck("cudaFree", self.lib.cudaFree(ptr))

    def to_device(self, ptr, arr):
        self._ck("cudaMemcpyAsync", self.lib.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, HOST_TO_DEVICE,
                                                            self.stream))

    def to_host(self, arr, ptr):
        self._ck("cudaMemcpyAsync", self.lib.cudaMemcpyAsync(arr.ctypes.data, ptr, arr.nbytes, DEVICE_TO_HOST,
                                                            self.stream))

    def stream_handle(self):
        return self.stream.value or 0


def _load_cudart(path):
    """(library, path) of the CUDA runtime: `path` if given, else the loader's libcudart.so, then the toolkit's."""
    if path:
        candidates = [path]
    else:
        found = ctypes.util.find_library("cudart")
        candidates = list(CUDART_NAMES) + ([found] if found else [])
        candidates += [os.path.join(d, n) for d in CUDART_DIRS for n in CUDART_NAMES]
    for c in candidates:
        try:
            return ctypes.CDLL(c), c
        except OSError:
            continue
    if path:
        raise Unavailable("%s could not be loaded" % path)
    raise Unavailable("libcudart.so not found on the loader's path or in /usr/local/cuda")


MAKERS = {"cuda-python": lambda cudart: CudaPython(), "torch": lambda cudart: Torch(),
          "ctypes": lambda cudart: Ctypes(cudart)}


def open_cuda(choice="auto", cudart=None):
    """The first binding that works (choice "auto": BINDINGS' order), or the one named; when none works, an
    Unavailable whose one line lists each binding tried and why it could not be used."""
    names = BINDINGS if choice == "auto" else (choice,)
    tried = []
    for name in names:
        try:
            return MAKERS[name](cudart)
        except (Unavailable, CudaError) as exc:
            tried.append("%s: %s" % (name, exc))
    raise Unavailable("no CUDA binding for the TensorRT backend works here (tried %s); install cuda-python "
                      "(pip3 install cuda-python) or use --backend onnxruntime" % "; ".join(tried))
