"""Torch-Pruning's dependency graph (DepGraph) over an imported network: what prune may shrink, and what it refuses.

An imported network is the user's own code, so nothing here knows its layers. DepGraph traces one
call through autograd and couples every layer that shares a channel dimension; where its tracing
cannot see how channels are used, it guesses (an unknown op is taken as element-wise, a parameter
outside a standard layer is pruned along its last non-singleton dimension). `plan` checks that the
graph holds for this network before any pruning, and refuses, naming each layer, what it cannot handle:

- a layer with parameters that runs outside the traced autograd graph (under torch.no_grad,
  .detach(), a custom autograd Function) or does not run at all: the channels it shares are unknown;
- a parameter outside a standard layer used on channels, with more than one dimension it could be
  pruned along (a per-channel vector such as an RMSNorm gain is pruned along its one dimension);
- a torch.cat along channels whose inputs DepGraph cannot place (an untraced input before a traced one);
- a group whose channel indices run past the size of one of its layers (the graph misread an op);
- and, for every group that passes, a probe: the network with one channel per channel group removed
  from it must still run, return a finite tensor like its input, or the layer it fails in is named.

Each refusal says which module to `--keep` whole (its channels and every group that touches them left
as they are); the layers that write the network's output keep their output channels always. A
network that calls torchdiffeq is traced as one explicit midpoint step per solve (an unrolled one as
its own unrolled steps): the same modules on the same tensors, so the coupling holds for any solver.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from dataclasses import dataclass

from . import models
from .constants import PROFILE_TIMESTEP
from .errors import ConfigError

__all__ = ["Plan", "check_runs", "example_inputs", "first_line", "metapruner", "plan", "traceable"]

ROOT = "net"  # the imported network's path inside ImportedDenoiser
MAX_REFUSALS = 12  # probe failures collected (each needs the graph traced again) before the refusal is raised


@dataclass(frozen=True)
class Plan:
    """How Torch-Pruning prunes an imported network: the layers whose groups stay whole, and the parameters
    outside standard layers with the dimension each is pruned along (module paths inside the denoiser)."""

    ignored: tuple[str, ...]
    unwrapped: tuple[tuple[str, int], ...]
    kept: tuple[str, ...]  # what --keep named (paths inside the network)
    groups: int  # groups of coupled channels that may be pruned
    whole: int  # groups left whole: touching a kept module or an output layer's output, or too narrow to probe
    outputs: tuple[str, ...]  # the layers whose output channels are the network's output

    def as_dict(self) -> dict:
        return {"kept": list(self.kept), "prunable_groups": self.groups, "groups_left_whole": self.whole,
                "output_layers": [_user(p) for p in self.outputs]}


@contextlib.contextmanager
def traceable(model):
    """Run the network's torchdiffeq solves as one explicit midpoint step while it is traced.

    torchdiffeq's solvers loop adaptively, and odeint_adjoint hides the ODE function from autograd
    behind a custom Function; the explicit step calls the same modules on the same tensors. An
    unrolled network already runs its solves as explicit steps (its forward enters the patch).
    """
    if model.cfg.unroll_method:
        yield
        return
    with models.unrolled_odeint("midpoint", 1, model=model.net):
        yield


def example_inputs(model, batch: int = 1, seed: int | None = None):
    """x (batch, C, H, W) (zeros, or seeded normal noise) and t (batch,) int64 on the model's device."""
    import torch

    m, p = model.cfg, next(model.parameters())
    shape = (batch, m.in_channels, m.image_size, m.image_size)
    if seed is None:
        x = torch.zeros(shape)
    else:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    t = torch.full((batch,), PROFILE_TIMESTEP, dtype=torch.long)
    if batch > 1:
        t[0] = 0  # the start of the schedule too
    return x.to(device=p.device, dtype=p.dtype), t.to(p.device)


def _user(path: str) -> str:
    """A module path inside the denoiser as the user's network names it ("" for the network itself)."""
    return path[len(ROOT) + 1:] if path.startswith(ROOT + ".") else "" if path == ROOT else path


def _under(path: str, roots) -> bool:
    return any(path == r or path.startswith(r + ".") for r in roots)


def first_line(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


@contextlib.contextmanager
def _quiet():
    """Torch-Pruning warns on every unknown op and loose parameter: the checks here say what matters, once."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class _Calls:
    """Which modules ran, and the chain running when an exception left the forward (innermost last)."""

    def __init__(self, model):
        self.names = {m: n for n, m in model.named_modules()}
        self.ran: set[str] = set()
        self.stack: list[str] = []
        self.handles = []
        for m in self.names:
            self.handles.append(m.register_forward_pre_hook(self._enter))
            self.handles.append(m.register_forward_hook(self._leave))

    def _enter(self, module, _args):
        name = self.names[module]
        self.ran.add(name)
        self.stack.append(name)

    def _leave(self, _module, _args, _out):
        self.stack.pop()

    def close(self):
        for h in self.handles:
            h.remove()


@dataclass
class _Refusal:
    reason: str  # what Torch-Pruning cannot handle (refusals with the same reason are listed together)
    layer: str  # the module named (path inside the denoiser)
    kind: str  # its type
    detail: str  # what about it
    keep: str  # the module to keep whole (path inside the denoiser)


UNTRACED = "layers outside the autograd graph Torch-Pruning traces (torch.no_grad, .detach(), a custom autograd " \
    "Function), so the channels they share are unknown"
NOT_RUN = "layers that did not run in the traced call, so the channels they share are unknown"
LOOSE = "parameters outside a standard layer used on channels, with more than one dimension Torch-Pruning could " \
    "prune"
CONCAT = "a torch.cat along channels whose inputs Torch-Pruning cannot place (an input outside the traced graph, " \
    "or of unknown width, before a traced one)"
INCOHERENT = "groups whose channel indices run past a layer's width (the dependency graph misreads the ops " \
    "between their layers)"
BROKEN = "layers that fail once one channel per channel group is removed"


def _describe(refusals: list[_Refusal], more: bool) -> str:
    parts = []
    for reason in dict.fromkeys(r.reason for r in refusals):
        layers = ", ".join(f"{_user(r.layer) or 'the network'} ({r.kind}{': ' + r.detail if r.detail else ''})"
                           for r in refusals if r.reason == reason)
        parts.append(f"{reason}: {layers}")
    keep = " ".join(f"--keep {_user(k)}" for k in dict.fromkeys(r.keep for r in refusals))
    return (f"cannot prune the imported network where Torch-Pruning's dependency graph does not hold -- "
            f"{'; '.join(parts)}{'; and more' if more else ''} -- keep those modules whole with {keep}")


def _graph(tp, work, example):
    """The dependency graph of `work`, traced once; and the modules that ran."""
    calls = _Calls(work)
    try:
        with _quiet(), traceable(work):
            dg = tp.DependencyGraph().build_dependency(work, example, verbose=False)
    finally:
        calls.close()
    return dg, calls.ran


def _param_names(work) -> dict[int, str]:
    return {id(p): n for n, p in work.named_parameters(remove_duplicate=False)}


def _node_path(node_module, names: dict, pnames: dict[int, str]) -> str | None:
    """The module path of a graph node's layer (a parameter's owner for a loose parameter); None for an op."""
    if node_module in names:
        return names[node_module]
    if id(node_module) in pnames:
        return pnames[id(node_module)].rpartition(".")[0]
    return None


def _common(a: str, b: str) -> str:
    pa, pb = a.split("."), b.split(".")
    i = 0
    while i < min(len(pa), len(pb)) and pa[i] == pb[i]:
        i += 1
    return ".".join(pa[:i])


def _output_layers(tp, dg, names: dict, pnames) -> list:
    """The layers (and loose parameters) whose output channels are the network's output channels."""
    # The graph is traced back from the outputs: its sinks make them (a layer, or an op such as an add that
    # Torch-Pruning marks as an output node), and behind an op, the layers that feed it.
    stack = [n for n in dg.module2node.values() if not n.outputs]
    seen, found = set(stack), []
    while stack:
        node = stack.pop()
        if _node_path(node.module, names, pnames) is not None:  # a layer, or a loose parameter
            found.append(node.module)
            continue
        for src in node.inputs:
            if src not in seen:
                seen.add(src)
                stack.append(src)
    return found


def _channel_groups(dg, group) -> int:
    """How many equal channel groups the group's layers split their channels into (GroupNorm groups, ...)."""
    from torch import nn

    counts = [1]
    for dep, _ in group:
        m = dep.target.module
        p = dg.get_pruner_of_module(m) if isinstance(m, nn.Module) and not isinstance(m, nn.Parameter) else None
        if p is None or (isinstance(m, nn.modules.conv._ConvNd) and m.groups == m.out_channels):  # depthwise
            continue
        counts.append(p.get_out_channel_groups(m) if dg.is_out_channel_pruning_fn(dep.handler)
                      else p.get_in_channel_groups(m))
    return max(counts)


def _incoherent(dg, group):
    """The first (dep, index, width) of a group whose index runs past its layer's width, or None."""
    for dep, idxs in group:
        if not idxs:
            continue
        size = None
        try:
            if dg.is_out_channel_pruning_fn(dep.handler):
                size = dg.get_out_channels(dep.target)
            elif dg.is_in_channel_pruning_fn(dep.handler):
                size = dg.get_in_channels(dep.target)
        except Exception:  # noqa: BLE001 -- an op node Torch-Pruning cannot size: nothing to check
            size = None
        if size is not None and (max(idxs) >= size or len(set(idxs)) > size):
            return dep, max(idxs), size
    return None


class _Net:
    """A copy of the denoiser, its dependency graph, and the names of its modules and parameters."""

    def __init__(self, tp, model):
        self.tp = tp
        self.work = copy.deepcopy(model).requires_grad_(True)
        self.dg, self.ran = _graph(tp, self.work, example_inputs(self.work))
        self.names = {m: n for n, m in self.work.named_modules()}
        self.pnames = _param_names(self.work)
        self.outputs = _output_layers(tp, self.dg, self.names, self.pnames)

    def path(self, node_module) -> str | None:
        return _node_path(node_module, self.names, self.pnames)

    def item(self, node_module) -> str | None:
        """A graph node's layer path, or a loose parameter's own name (what --keep may name)."""
        return self.pnames.get(id(node_module)) or _node_path(node_module, self.names, self.pnames)

    def kind(self, path: str) -> str:
        return type(self.work.get_submodule(path)).__name__

    def groups(self, kept: list[str]) -> tuple[list, list, list]:
        """(root, group) of every group that may be pruned; the roots of those touching a kept module; and
        the layers left out of pruning (the kept modules, the output layers)."""
        ignored = [m for m, n in self.names.items() if _under(n, kept)] + self.outputs
        prunable, dropped = [], []
        for group in self.dg.get_all_groups(ignored_layers=ignored, root_module_types=_root_types(self.tp)):
            root = group[0].dep.target.module
            paths = [self.item(dep.target.module) for dep, _ in group]
            if any(p is not None and _under(p, kept) for p in paths):
                dropped.append(root)
            else:
                prunable.append((root, group))
        return prunable, dropped, ignored


def _root_types(tp):
    return [tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR, tp.ops.TORCH_LSTM]


def _static_refusals(net: _Net, kept: list[str]) -> list[_Refusal]:
    """What the traced graph shows without pruning: layers it does not cover, loose parameters it cannot place,
    channel concats it cannot map, groups whose indices run past a layer's width."""
    work, dg = net.work, net.dg
    in_graph = {id(m) for m in dg.module2node}
    refusals = []
    for path, m in work.named_modules():
        direct = [p for p in m._parameters.values() if p is not None]
        if not direct or _under(path, kept) or id(m) in in_graph or any(id(p) in in_graph for p in direct):
            continue
        refusals.append(_Refusal(UNTRACED if path in net.ran else NOT_RUN, path, type(m).__name__, "", path))
    for p, _dim in dg.unwrapped_parameters:
        name = net.pnames.get(id(p))
        owner = name.rpartition(".")[0] if name else ""
        if name is None or id(p) not in in_graph or _under(name, kept) or sum(s > 1 for s in p.shape) < 2:
            continue
        refusals.append(_Refusal(LOOSE, owner, net.kind(owner), f"{name.rpartition('.')[2]} {tuple(p.shape)}",
                                 owner if owner != ROOT else name))
    for node in dg.module2node.values():
        if node.type != net.tp.ops.OPTYPE.CONCAT or node.module.offsets is not None:
            continue
        gf = node.grad_fn
        if getattr(gf, "_saved_dim", 1) not in (1, -3):  # along another dimension than channels: nothing to map
            continue
        traced = [f[0] is not None for f in gf.next_functions]
        if traced and traced[0] and sum(traced) == 1:  # one traced input, first: its channels keep their indices
            continue
        layer = next((r for r in (net.path(o.module) for o in node.outputs) if r), ROOT)
        if not _under(layer, kept):
            refusals.append(_Refusal(CONCAT, layer, net.kind(layer), "reading it", layer))
    kept = kept + [r.keep for r in refusals]
    for root, group in net.groups(kept)[0]:
        bad = _incoherent(dg, group)
        if bad is None:
            continue
        dep, idx, size = bad
        rpath = net.names[root]
        path = net.path(dep.target.module) or rpath
        keep = _common(path, rpath)
        keep = keep if keep and keep != ROOT else rpath
        where = "" if path == rpath else f" of {_user(path)}"
        refusals.append(_Refusal(INCOHERENT, rpath, type(root).__name__, f"index {idx}{where}, width {size}", keep))
    return refusals


def _probe(net: _Net, root, x, t) -> _Refusal | bool:
    """Remove one channel per channel group of `root`'s group from the copy (in place): the refusal if the network
    breaks, else whether it was probed (False: too few channels per channel group to remove one)."""
    import torch

    dg, rpath = net.dg, net.names[root]
    pruner = dg.get_pruner_of_module(root)
    try:
        full = dg.get_pruning_group(root, pruner.prune_out_channels, list(range(pruner.get_out_channels(root))))
        ch = _channel_groups(dg, full)
        per = pruner.get_out_channels(root) // ch
        if per < 2:
            return False
        idxs = [k * per + per - 1 for k in range(ch)]
        dg.get_pruning_group(root, pruner.prune_out_channels, idxs).prune(record_history=False)
    except Exception as exc:  # noqa: BLE001 -- Torch-Pruning failing on this group: refuse it, named
        return _Refusal(BROKEN, rpath, type(root).__name__, f"Torch-Pruning fails on its group: {first_line(exc)}",
                        rpath)
    calls = _Calls(net.work)
    try:
        with torch.no_grad(), traceable(net.work):
            y = net.work(x, t)
    except Exception as exc:  # noqa: BLE001 -- the user's forward on the pruned network: name where it broke
        inner = next((p for p in reversed(calls.stack) if p not in ("", ROOT)), rpath)
        members = [rpath] + [p for p in (net.item(d.target.module) for d, _ in full) if p]
        keep = inner if any(_under(p, [inner]) for p in members) else rpath
        return _Refusal(BROKEN, inner, net.kind(inner),
                        f"output channels of {_user(rpath)} removed: {first_line(exc)}", keep)
    finally:
        calls.close()
    if tuple(y.shape) != tuple(x.shape) or not torch.isfinite(y).all():
        what = f"shape {tuple(y.shape)}" if tuple(y.shape) != tuple(x.shape) else "non-finite values"
        return _Refusal(BROKEN, rpath, type(root).__name__, f"the network returns {what} without them", rpath)
    return True


def _check_keep(model, keep) -> list[str]:
    """The --keep paths inside the denoiser: each a module of the network, or a parameter outside a layer."""
    paths = []
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    for k in keep:
        path = f"{ROOT}.{k}"
        try:
            model.get_submodule(path)
        except AttributeError:
            if path not in params:
                raise ConfigError(f"--keep {k}: the imported network has no module or parameter {k!r}") from None
        paths.append(path)
    return paths


def plan(tp, model, keep: tuple[str, ...] = ()) -> Plan:
    """Check that Torch-Pruning's dependency graph handles `model` (an ImportedDenoiser, left untouched), and
    say how to prune it; ConfigError naming every layer it cannot handle (and what to --keep) otherwise.

    The probes prune a copy group after group; when one breaks, the module its refusal says to keep is
    kept and a fresh copy is probed again, so that one refusal names every layer (up to MAX_REFUSALS
    probe failures).
    """
    kept = _check_keep(model, keep)
    x, t = example_inputs(model, batch=2, seed=0)
    net = _Net(tp, model)
    refusals = _static_refusals(net, kept)
    broken = 0
    while True:
        keep_now = kept + [r.keep for r in refusals]
        prunable, dropped, ignored = net.groups(keep_now)
        thin, failed = [], None  # thin: groups too narrow to remove a channel per channel group
        with _quiet():
            for root, _group in prunable:
                result = _probe(net, root, x, t)
                if isinstance(result, _Refusal):
                    failed = result
                    break
                if not result:
                    thin.append(root)
        if failed is None:
            break
        refusals.append(failed)
        broken += 1
        if broken >= MAX_REFUSALS:
            raise ConfigError(_describe(refusals, more=True))
        net = _Net(tp, model)  # the probed copy is broken: probe a fresh one with the failing module kept
    if refusals:
        raise ConfigError(_describe(refusals, more=False))
    names = net.names
    unwrapped = tuple((net.pnames[id(p)], int(d)) for p, d in net.dg.unwrapped_parameters if id(p) in net.pnames)
    left = sorted({names[m] for m in ignored + dropped + thin if m in names})
    total = sum(1 for _ in net.dg.get_all_groups(root_module_types=_root_types(tp)))
    groups = len(prunable) - len(thin)
    return Plan(ignored=tuple(left), unwrapped=unwrapped, kept=tuple(keep), groups=groups, whole=total - groups,
                outputs=tuple(sorted(names[m] for m in net.outputs if m in names)))


def check_runs(model, what: str) -> None:
    """One call of `model` (an ImportedDenoiser) must return a finite tensor like its input; ConfigError naming the
    layer it fails in otherwise."""
    import torch

    x, t = example_inputs(model, batch=2, seed=0)
    calls = _Calls(model)
    try:
        with torch.no_grad():
            y = model(x, t)
    except Exception as exc:  # noqa: BLE001 -- the user's forward: name the layer it broke in
        inner = next((p for p in reversed(calls.stack) if p not in ("", ROOT)), ROOT)
        kind = type(model.get_submodule(inner)).__name__
        raise ConfigError(f"the imported network {what} fails in {_user(inner) or 'its forward'} ({kind}): "
                          f"{first_line(exc)}") from None
    finally:
        calls.close()
    if tuple(y.shape) != tuple(x.shape) or not torch.isfinite(y).all():
        raise ConfigError(f"the imported network {what} returns "
                          f"{'shape ' + str(tuple(y.shape)) if tuple(y.shape) != tuple(x.shape) else 'non-finite values'}")


def metapruner(tp, model, plan_: Plan, *, importance, ratio: float, global_pruning: bool):
    """Torch-Pruning's MetaPruner over `model` (an ImportedDenoiser, or a copy of one) as `plan_` says."""
    named = dict(model.named_modules())
    params = dict(model.named_parameters(remove_duplicate=False))
    ignored = [named[p] for p in plan_.ignored if p in named]
    unwrapped = [(params[n], d) for n, d in plan_.unwrapped if n in params]
    with _quiet(), traceable(model):
        return tp.pruner.MetaPruner(model, example_inputs(model), importance=importance, pruning_ratio=ratio,
                                    global_pruning=global_pruning, ignored_layers=ignored,
                                    unwrapped_parameters=unwrapped, round_to=None)
