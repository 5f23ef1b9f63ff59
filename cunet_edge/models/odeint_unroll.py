"""Generic unroll: every torchdiffeq `odeint` / `odeint_adjoint` call a model makes becomes fixed explicit steps.

Models trained elsewhere call torchdiffeq from their own code, in their own way. Under
`unrolled_odeint(method, steps)` each such call runs `fixed_grid_odeint` instead: an explicit
Python loop over the Butcher tableau of `method` (`models.explicit`, torchdiffeq's coefficients),
`steps` equal steps on each interval of the requested output times. Traced or exported, the
network then holds only the tensor ops of every stage: a static graph, no solver loop.

How calls are caught: torchdiffeq's functions are looked up by name when the user's code runs,
so the context manager rebinds every name bound to them (module globals such as
`from torchdiffeq import odeint as solve`, torchdiffeq's own attributes, and, given the model,
attributes of its submodules such as `self.solver = odeint_adjoint`) and puts them back on exit.
A call that still reaches the real solver (a reference the scan cannot see: a closure variable,
a default argument, a class attribute) is refused with a ConfigError rather than run unrolled
silently wrong: the guard sits in torchdiffeq's input checks, which every real call goes through.
The user's method, rtol, atol, options and adjoint arguments are ignored (the chosen fixed-step
method replaces them; gradients flow by plain backprop through the steps); `event_fn` is refused
(a data-dependent stop time has no static graph).

The patch is process-wide (module globals): contexts are serialized by a lock, and other threads
calling torchdiffeq through a rebound name meanwhile are unrolled too.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch

from ..errors import ConfigError
from .explicit import NODES, TABLEAUS, UNROLLABLE, _combine  # one Runge–Kutta stage sum for both loops
from .solver import UniformGrid

__all__ = [
    "OdeintCall",
    "OdeintStats",
    "UnrolledOdeint",
    "count_odeint_calls",
    "fixed_grid_odeint",
    "patch_odeint",
    "reference_odeint",
    "require_odeint",
    "unrolled_odeint",
]

APIS = ("odeint", "odeint_adjoint")
# torchdiffeq's modules that hold its functions (and the input check every real solve goes through).
_TD_ODEINT = "torchdiffeq._impl.odeint"
_TD_ADJOINT = "torchdiffeq._impl.adjoint"
_TD_MODULES = ("torchdiffeq", "torchdiffeq._impl", _TD_ODEINT, _TD_ADJOINT)


# ---------------------------------------------------------------------------------------------
# The fixed-grid solve
# ---------------------------------------------------------------------------------------------


def _check_method(method: str, steps: int) -> None:
    if method not in TABLEAUS:
        raise ConfigError(f"odeint method {method!r} cannot be unrolled; unrollable methods: {', '.join(UNROLLABLE)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"odeint unroll steps must be an integer >= 1, got {steps!r}")


def _check_times(t: Any) -> None:
    if not isinstance(t, torch.Tensor) or t.ndim != 1 or t.shape[0] < 2 or not t.is_floating_point():
        what = f"a {t.dtype} tensor of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise ConfigError(f"odeint times t must be a 1-d floating tensor of 2 or more times, got {what}")
    # The order check reads values: eager only (a traced t has none; torchdiffeq checks the same).
    if not torch.compiler.is_compiling():
        d = t[1:] - t[:-1]
        if not bool((d > 0).all() | (d < 0).all()):
            raise ConfigError("odeint times t must be strictly increasing or strictly decreasing")


def _as_state(y0: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(y0, torch.Tensor):
        return (y0,)
    if isinstance(y0, tuple) and y0 and all(isinstance(y, torch.Tensor) for y in y0):
        return y0
    raise ConfigError(f"odeint y0 must be a tensor or a tuple of tensors, got {type(y0).__name__}")


def fixed_grid_odeint(func: Callable, y0: Any, t: torch.Tensor, *, method: str, steps: int) -> Any:
    """Solve dy/ds = func(s, y), y(t[0]) = y0, with `steps` explicit `method` steps on each interval of `t`.

    Same semantics as ``torchdiffeq.odeint(func, y0, t, method=method,
    options={"grid_constructor": UniformGrid(steps)})``: `t` is 1-d (2 or more times, strictly
    increasing or decreasing), `func(s, y)` gets each stage's time s = s0 + c_i·ds as a tensor of
    the state's dtype, `y0` is a tensor or a tuple of tensors, and the result stacks the solution
    at every time of `t`: (len(t), *y0.shape), or a tuple of such. The grid is computed in tensor
    ops (no .item() on t), so the loop traces into a static graph.
    """
    _check_method(method, steps)
    state = _as_state(y0)
    _check_times(t)
    is_tuple = not isinstance(y0, torch.Tensor)
    real = functools.reduce(torch.promote_types, [y.real.dtype if y.is_complex() else y.dtype for y in state])
    a, b = TABLEAUS[method]
    c = NODES[method]
    grid = UniformGrid(steps)(func, y0, t)  # steps points per interval of t, each t_k exactly on it

    def derivative(s: torch.Tensor, ys: tuple) -> tuple:
        s = s.to(real)  # torchdiffeq hands func the time in the state's dtype
        return tuple(func(s, ys)) if is_tuple else (func(s, ys[0]),)

    outs = [state]
    i = 0
    for _ in range(t.shape[0] - 1):
        for _ in range(steps):
            t0, t1 = grid[i], grid[i + 1]
            dt = t1 - t0
            ks: list[tuple] = []
            for row, ci in zip(a, c):
                s = t0 if ci == 0.0 else t1 if ci == 1.0 else t0 + dt * ci
                ks.append(derivative(s, _combine(state, ks, row, dt) if row else state))
            state = _combine(state, ks, b, dt)
            i += 1
        outs.append(state)
    stacked = tuple(torch.stack([o[j] for o in outs]) for j in range(len(state)))
    return stacked if is_tuple else stacked[0]


def reference_odeint(func: Callable, y0: Any, t: torch.Tensor, *, method: str, steps: int) -> Any:
    """torchdiffeq's own solver on the grid `fixed_grid_odeint` uses: the reference it must equal.

    Runs the real ``torchdiffeq.odeint`` (also inside `patch_odeint`, which would refuse it otherwise).
    """
    _check_method(method, steps)
    real = _originals()["odeint"]
    _STATE.allow += 1
    try:
        return real(func, y0, t, method=method, options={"grid_constructor": UniformGrid(steps)})
    finally:
        _STATE.allow -= 1


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OdeintCall:
    """One odeint call seen under the patch: which function, how many output times, evaluations made."""

    api: str
    times: int
    nfe: int


@dataclass
class OdeintStats:
    """What the patched calls did: one `OdeintCall` per call, in call order."""

    method: str | None = None
    steps: int | None = None
    log: list[OdeintCall] = field(default_factory=list)

    @property
    def calls(self) -> int:
        """Number of odeint / odeint_adjoint calls (the model's ODE blocks, once per forward)."""
        return len(self.log)

    @property
    def nfe(self) -> int:
        """Function evaluations made by all calls, counted as they happened."""
        return sum(c.nfe for c in self.log)

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "steps": self.steps, "calls": self.calls, "nfe": self.nfe,
                "per_call": [{"api": c.api, "times": c.times, "nfe": c.nfe} for c in self.log]}


# ---------------------------------------------------------------------------------------------
# The patch
# ---------------------------------------------------------------------------------------------


class _State(threading.local):
    allow = 0  # > 0 while reference_odeint runs the real solver


_STATE = _State()
_LOCK = threading.RLock()
_OWNER: list[int] = []  # thread idents of the active contexts (one thread at a time: the lock)
_ORIGINALS: dict[str, Callable] = {}
_REAL_CHECKS: dict[str, Callable] = {}
_ACTIVE: dict[int, str] = {}  # id(replacement) -> api, for the replacements live now (nested contexts)
_ALL_SITES: tuple[int, list[tuple[str, str]]] = (-1, [])  # (len(sys.modules) scanned, (module, name) sites)
_MODULE_SITES: dict[str, tuple[int, list[str]]] = {}  # module name -> (id of its dict, names bound)
_MODEL_SITES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (modules, attribute sites)


def _originals() -> dict[str, Callable]:
    """torchdiffeq's real functions, read once from the modules that define them (before any patch)."""
    if not _ORIGINALS:
        import torchdiffeq  # noqa: F401  (loads the _impl modules)

        _ORIGINALS["odeint"] = sys.modules[_TD_ODEINT].odeint
        _ORIGINALS["odeint_adjoint"] = sys.modules[_TD_ADJOINT].odeint_adjoint
        for mod in (_TD_ODEINT, _TD_ADJOINT):
            _REAL_CHECKS[mod] = vars(sys.modules[mod])["_check_inputs"]
    return _ORIGINALS


def _api_of(value: Any) -> str | None:
    """'odeint' / 'odeint_adjoint' for torchdiffeq's function or a live replacement of it, else None."""
    for api, fn in _ORIGINALS.items():
        if value is fn:
            return api
    return _ACTIVE.get(id(value)) if callable(value) else None


def _bound_names(namespace: dict) -> list[str]:
    targets = {id(fn) for fn in _ORIGINALS.values()} | set(_ACTIVE)
    return [name for name, value in namespace.items() if id(value) in targets]


def _all_module_sites() -> list[tuple[str, str]]:
    """(module, name) of every loaded module's global bound to torchdiffeq's functions.

    One pass over sys.modules (~30 ms with torch loaded), redone only when modules were loaded since.
    """
    global _ALL_SITES
    n = len(sys.modules)
    if _ALL_SITES[0] != n:
        sites = []
        for modname, mod in list(sys.modules.items()):
            ns = getattr(mod, "__dict__", None)
            if isinstance(mod, ModuleType) and isinstance(ns, dict):
                sites.extend((modname, name) for name in _bound_names(ns))
        _ALL_SITES = (n, sites)
    return _ALL_SITES[1]


def _module_sites(modname: str) -> list[tuple[str, str]]:
    mod = sys.modules.get(modname)
    ns = getattr(mod, "__dict__", None)
    if not isinstance(ns, dict):
        return []
    cached = _MODULE_SITES.get(modname)
    if cached is None or cached[0] != id(ns):
        cached = _MODULE_SITES[modname] = (id(ns), _bound_names(ns))
    return [(modname, name) for name in cached[1]]


def _model_sites(model: torch.nn.Module) -> tuple[list[str], list[tuple[weakref.ref, str]]]:
    """The modules defining the classes of `model`'s submodules (and their bases), and the submodule
    attributes bound to torchdiffeq's functions; scanned once per model."""
    cached = _MODEL_SITES.get(model)
    if cached is None:
        modnames: set[str] = set()
        attrs = []
        for sub in model.modules():
            modnames.update(cls.__module__ for cls in type(sub).__mro__ if cls.__module__ != "builtins")
            attrs.extend((weakref.ref(sub), name) for name in _bound_names(vars(sub)))
        cached = _MODEL_SITES[model] = (sorted(modnames), attrs)
    return cached


def _resolve_modules(modules: Iterable[ModuleType | str] | None) -> list[tuple[str, str]]:
    if modules is None:
        return list(_all_module_sites())
    sites = []
    for m in modules:
        name = m.__name__ if isinstance(m, ModuleType) else m
        if not isinstance(name, str) or name not in sys.modules:
            raise ConfigError(f"unrolled_odeint modules: {m!r} is not a loaded module")
        sites.extend(_module_sites(name))
    return sites


def _guard(modname: str) -> Callable:
    real = _REAL_CHECKS[modname]

    def _check_inputs(*args, **kwargs):
        if _STATE.allow or not _OWNER or _OWNER[-1] != threading.get_ident():
            return real(*args, **kwargs)
        raise ConfigError(
            "a torchdiffeq odeint call escaped the unroll patch: it reached torchdiffeq through a reference the "
            "patch cannot rebind (a closure variable, a default argument, a class attribute); call it as "
            "torchdiffeq.odeint(...) or through a module-level name or a submodule attribute")

    return _check_inputs


_GUARDS: dict[str, Callable] = {}


def _replacement(api: str, impl: Callable, stats: OdeintStats) -> Callable:
    def odeint(func, y0, t, *, event_fn=None, **ignored):
        if event_fn is not None:
            raise ConfigError(f"torchdiffeq.{api} with event_fn cannot be unrolled: the stop time of an event is "
                              "data-dependent, a fixed-step graph has none")
        n = [0]

        def counted(s, y):
            n[0] += 1
            return func(s, y)

        out = impl(counted, y0, t)
        stats.log.append(OdeintCall(api, int(t.shape[0]) if isinstance(t, torch.Tensor) else 0, n[0]))
        return out

    odeint.__name__ = odeint.__qualname__ = api
    odeint.__doc__ = f"torchdiffeq.{api}, replaced by {impl!r} while a cunet_edge odeint patch is active."
    return odeint


@contextlib.contextmanager
def patch_odeint(
    impl: Callable[[Callable, Any, torch.Tensor], Any],
    *,
    modules: Iterable[ModuleType | str] | None = None,
    model: torch.nn.Module | None = None,
    stats: OdeintStats | None = None,
) -> Iterator[OdeintStats]:
    """Within the block, every torchdiffeq `odeint` / `odeint_adjoint` call runs `impl(func, y0, t)`.

    `modules`: where to rebind names bound to torchdiffeq's functions; None (the default) means
    every loaded module (scanned once, again only after new imports). `model`: also the modules
    defining its submodules' classes, and its submodules' attributes bound to them (scanned once
    per model). torchdiffeq's own attributes are always rebound. Yields the `OdeintStats` the
    calls are recorded in. Everything is put back on exit, exception or not.
    """
    stats = OdeintStats() if stats is None else stats
    with _LOCK:
        _originals()
        repl = {api: _replacement(api, impl, stats) for api in APIS}
        sites = _resolve_modules(modules)
        attrs: list[tuple[weakref.ref, str]] = []
        if model is not None:
            modnames, attrs = _model_sites(model)
            if modules is not None:
                sites += [s for name in modnames for s in _module_sites(name)]
        sites += [s for name in _TD_MODULES for s in _module_sites(name)]
        namespaces = [(vars(sys.modules[m]), name) for m, name in dict.fromkeys(sites) if m in sys.modules]
        namespaces += [(vars(sub), name) for ref, name in attrs if (sub := ref()) is not None]
        saved: list[tuple[dict, str, Any]] = []
        entered = False
        try:
            for ns, name in namespaces:
                old = ns.get(name)
                api = _api_of(old)
                if api is not None:
                    saved.append((ns, name, old))
                    ns[name] = repl[api]
            for modname in (_TD_ODEINT, _TD_ADJOINT):
                ns = vars(sys.modules[modname])
                saved.append((ns, "_check_inputs", ns["_check_inputs"]))
                ns["_check_inputs"] = _GUARDS.setdefault(modname, _guard(modname))
            _ACTIVE.update({id(fn): api for api, fn in repl.items()})
            _OWNER.append(threading.get_ident())
            entered = True
            yield stats
        finally:
            if entered:
                _OWNER.pop()
            for fn in repl.values():
                _ACTIVE.pop(id(fn), None)
            for ns, name, old in reversed(saved):
                ns[name] = old


def unrolled_odeint(
    method: str,
    steps: int,
    *,
    modules: Iterable[ModuleType | str] | None = None,
    model: torch.nn.Module | None = None,
) -> contextlib.AbstractContextManager[OdeintStats]:
    """Within the block, torchdiffeq's odeint / odeint_adjoint calls run `fixed_grid_odeint(..., method, steps)`.

    See `patch_odeint` for `modules` and `model`. The context yields the `OdeintStats` of the calls
    made inside it (calls, NFE).
    """
    _check_method(method, steps)
    impl = functools.partial(fixed_grid_odeint, method=method, steps=steps)
    return patch_odeint(impl, modules=modules, model=model, stats=OdeintStats(method, steps))


class UnrolledOdeint(torch.nn.Module):
    """`model` whose forward runs under `unrolled_odeint(method, steps)`: export it for a static graph.

    `last_stats` holds the `OdeintStats` of the latest forward. The wrapped model's state dict
    keys gain the prefix ``model.``.
    """

    def __init__(self, model: torch.nn.Module, method: str, steps: int):
        super().__init__()
        _check_method(method, steps)
        self.model = model
        self.method = method
        self.steps = steps
        self.last_stats: OdeintStats | None = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with unrolled_odeint(self.method, self.steps, model=self.model) as stats:
            out = self.model(*args, **kwargs)
        self.last_stats = stats
        return out


def require_odeint(stats: OdeintStats, what: str = "this model") -> OdeintStats:
    """`stats` if it saw an odeint call; else a ConfigError: a forward with no torchdiffeq solve has nothing to unroll."""
    if stats.calls == 0:
        raise ConfigError(f"{what}'s forward calls no torchdiffeq odeint/odeint_adjoint: nothing to unroll")
    return stats


def count_odeint_calls(
    model: torch.nn.Module, *inputs: Any, method: str, steps: int, require: bool = True
) -> OdeintStats:
    """Run `model(*inputs)` once, without gradients, under `unrolled_odeint(method, steps)`: its calls and NFE.

    With `require` (the default) a model whose forward calls no odeint is refused (`require_odeint`).
    """
    with torch.no_grad(), unrolled_odeint(method, steps, model=model) as stats:
        model(*inputs)
    return require_odeint(stats, type(model).__name__) if require else stats
