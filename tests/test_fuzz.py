"""A fuzzing campaign of hostile inputs (issue 19): manifests, configs, recipes and CLI numbers.

Every case must keep three promises: it succeeds or fails with a one-line error (a CunetEdgeError; the CLI:
`error: ...`, exit 1), nothing is half-written, and nothing outside the requested output changes (the whole
folder is hashed before and after). The default run tries a few cases per class (seconds); the campaign is the
same tests with more: `CUNET_FUZZ_EXAMPLES=300 CUNET_FUZZ_TALLY=tally.json pytest -m "" tests/test_fuzz.py`
(scripts/fuzz_campaign.sh), which writes how many cases each class tried and how each ended.
"""

from __future__ import annotations

import collections
import copy
import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from cli_helpers import cli_in_process  # noqa: E402
from conftest import TINY  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from cunet_edge.artifact import Artifact, ArtifactWriter  # noqa: E402
from cunet_edge.checkpoint import train_config_from_dict  # noqa: E402
from cunet_edge.config import from_dict, load_config_file  # noqa: E402
from cunet_edge.errors import CunetEdgeError, one_line  # noqa: E402
from cunet_edge.kinds import check_kind_files  # noqa: E402

EXAMPLES = int(os.environ.get("CUNET_FUZZ_EXAMPLES", "10"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize="CUNET_FUZZ_TALLY" not in os.environ,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
# A CLI case runs the command when its numbers are valid: fewer of them in the default run.
FUZZ_CLI = settings(FUZZ, max_examples=max(3, EXAMPLES // 3))
TALLY: collections.Counter = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def _write_tally():
    yield
    path = os.environ.get("CUNET_FUZZ_TALLY")
    if path:
        by_class: dict = {}
        for (cls, outcome), n in sorted(TALLY.items()):
            by_class.setdefault(cls, {"tried": 0})[outcome] = n
            by_class[cls]["tried"] += n
        Path(path).write_text(json.dumps(by_class, indent=2) + "\n")


def tree_hash(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(Path(root).rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = "->" + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


def handled(cls: str, fn) -> object:
    """Run a case: success, or a one-line CunetEdgeError; anything else fails the test. Counted in the tally."""
    try:
        result = fn()
    except CunetEdgeError as exc:
        text = one_line(exc)  # what the CLI prints after `error: `
        assert text.strip() and "\n" not in text, f"not a one-line error: {text!r}"
        TALLY[cls, "refused (one-line error)"] += 1
        return exc
    TALLY[cls, "accepted"] += 1
    return result


# --- values -----------------------------------------------------------------------------------------------------

NUMBERS = st.one_of(
    st.integers(), st.integers(min_value=2**63 - 2, max_value=2**70), st.integers(min_value=-(2**70), max_value=0),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0, -1, 1, 10**6, 10**12, 0.5, 1e-300, 1e308]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=12))
JSON_VALUES = st.recursive(SCALARS, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c,
                                                                                        max_size=3), max_leaves=8)
NAMES = st.one_of(st.sampled_from(["../x.bin", "/etc/passwd", "a/../../b", "~/x", "", "a\\b", "x" * 300,
                                   "./config.json", "config.json/..", "nul\x00byte", "manifest.json",
                                   "sub/../../../etc/hosts"]),
                  st.text(max_size=20))


# --- manifests --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fake_artifact(tmp_path_factory) -> Path:
    """A small checkpoint-kind artifact (the manifest is what is fuzzed; loading checks hashes, not weights)."""
    out = tmp_path_factory.mktemp("fuzz") / "art"
    with ArtifactWriter(out, kind="checkpoint", stage="train", config={"steps": 1}) as w:
        (w.dir / "config.json").write_text(json.dumps(TINY))
        (w.dir / "model.safetensors").write_bytes(b"\x08" * 64)
        (w.dir / "train_state").mkdir()
        (w.dir / "train_state" / "state.json").write_text("{}")
        w.manifest["signature"] = {"inputs": {"x": {"shape": [None, 1, 8, 8], "dtype": "float32"},
                                              "t": {"shape": [None], "dtype": "int64"}},
                                   "outputs": {"eps": {"shape": [None, 1, 8, 8], "dtype": "float32"}}}
        w.manifest["solver"] = {"method": "euler", "steps": 1, "nfe_per_block": 1, "nfe_per_call": 2, "ode_blocks": 2}
    return out


PATHS = [["kind"], ["files"], ["files", "config.json"], ["files", "config.json", "bytes"],
         ["files", "config.json", "sha256"], ["signature"], ["signature", "inputs"], ["signature", "inputs", "x"],
         ["signature", "inputs", "x", "shape"], ["signature", "inputs", "x", "dtype"], ["parent"], ["solver"],
         ["solver", "steps"], ["config"], ["manifest_version"], ["batch"], ["id"], ["precision"], ["versions"]]


@st.composite
def manifest_bytes(draw, base: dict) -> bytes:
    how = draw(st.sampled_from(["value", "value", "value", "name", "shape", "raw", "deep", "not-utf8", "drop"]))
    m = copy.deepcopy(base)
    if how == "raw":
        return draw(st.binary(max_size=200))
    if how == "deep":
        depth = draw(st.integers(min_value=20, max_value=200_000))
        return b'{"kind": "checkpoint", "files": {}, "x": ' + b"[" * depth + b"]" * depth + b"}"
    if how == "not-utf8":
        text = json.dumps(m).encode()
        at = draw(st.integers(min_value=0, max_value=len(text)))
        return text[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"])) + text[at:]
    if how == "name":
        m["files"][draw(NAMES)] = {"bytes": draw(st.integers(min_value=0, max_value=10**6)), "sha256": "0" * 64}
    elif how == "shape":
        m["signature"]["inputs"]["x"]["shape"] = draw(st.lists(st.one_of(st.none(), NUMBERS, st.text(max_size=4)),
                                                                max_size=10))
    elif how == "drop":
        m.pop(draw(st.sampled_from(sorted(m))))
    else:
        path = draw(st.sampled_from(PATHS))
        node = m
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = draw(JSON_VALUES)
    return json.dumps(m, allow_nan=True).encode()


def test_fuzz_manifests(fake_artifact, tmp_path):
    base = json.loads((fake_artifact / "manifest.json").read_text())
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"s" * 4321)

    @FUZZ
    @given(data=manifest_bytes(base))
    def case(data):
        art = tmp_path / "art"
        shutil.rmtree(art, ignore_errors=True)
        shutil.copytree(fake_artifact, art)
        (art / "manifest.json").write_bytes(data)
        before = tree_hash(tmp_path)

        def open_it():
            a = Artifact.load(art)
            check_kind_files(a.manifest, a.path)
            return a

        res = handled("manifest", open_it)
        assert tree_hash(tmp_path) == before  # opening writes nothing, anywhere
        if isinstance(res, CunetEdgeError):
            assert "4321" not in str(res)  # nothing outside the artifact was looked at

    case()


# --- configs ----------------------------------------------------------------------------------------------------

LEAVES = [["steps"], ["batch_size"], ["lr"], ["seed"], ["ema_decay"], ["grad_clip"], ["warmup_steps"],
          ["model", "base_channels"], ["model", "image_size"], ["model", "channel_mults"], ["model", "in_channels"],
          ["model", "norm_groups"], ["model", "time_emb_dim"], ["model", "attn_heads"], ["model", "solver", "steps"],
          ["model", "solver", "method"], ["data", "image_size"], ["model"], ["data"], ["unknown_key"]]


@FUZZ
@given(path=st.sampled_from(LEAVES), value=JSON_VALUES)
def test_fuzz_train_configs(path, value):
    cfg = copy.deepcopy(TINY)
    node = cfg
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    handled("config (train)", lambda: train_config_from_dict(cfg))


def _stage_configs():
    from cunet_edge.pipeline import STAGES

    return {name: d.config for name, d in STAGES.items() if name not in ("train", "load")}


@FUZZ
@given(stage=st.sampled_from(sorted(_stage_configs())), data=st.data())
def test_fuzz_stage_configs(stage, data):
    """Every stage config (the CLI builds the same dataclasses) with fuzzed values for its fields."""
    import dataclasses

    cls = _stage_configs()[stage]
    fields = [f.name for f in dataclasses.fields(cls) if f.init]
    keys = data.draw(st.lists(st.sampled_from(fields), min_size=1, max_size=3, unique=True))
    raw = {k: data.draw(st.one_of(NUMBERS, SCALARS, JSON_VALUES)) for k in keys}
    res = handled(f"config ({stage})", lambda: from_dict(cls, raw))
    if not isinstance(res, CunetEdgeError):  # accepted: every number in it is finite
        for k in keys:
            v = getattr(res, k)
            assert not (isinstance(v, float) and not math.isfinite(v)), (k, v)


@FUZZ
@given(data=st.one_of(st.binary(max_size=300), JSON_VALUES.map(lambda v: json.dumps(v, allow_nan=True).encode())))
def test_fuzz_config_files(data, tmp_path):
    for suffix in (".json", ".toml"):
        path = tmp_path / f"c{suffix}"
        path.write_bytes(data)
        before = tree_hash(tmp_path)
        handled("config file", lambda: load_config_file(path))
        assert tree_hash(tmp_path) == before


# --- recipes ----------------------------------------------------------------------------------------------------

def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf else repr(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v if x is not None) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(x)}" for k, x in v.items() if x is not None) + "}"
    return '""'


def test_fuzz_recipes_dry_run(fake_artifact, tmp_path):
    """A load stage and a stage of each kind with fuzzed keys: `pipeline --dry-run` is one line or success, and
    writes nothing."""
    import dataclasses

    from cunet_edge.pipeline import STAGES

    @FUZZ
    @given(stage=st.sampled_from(sorted(STAGES)), data=st.data())
    def case(stage, data):
        cls = STAGES[stage].config
        fields = [f.name for f in dataclasses.fields(cls) if f.init]
        keys = data.draw(st.lists(st.sampled_from(fields + ["bogus"]), max_size=3, unique=True))
        lines = ['[[stage]]', 'stage = "load"', 'name = "model"', f'path = "{fake_artifact}"',
                 "[[stage]]", f'stage = "{stage}"', 'name = "s2"']
        lines += [f"{k} = {_toml(data.draw(st.one_of(NUMBERS, SCALARS)))}" for k in keys]
        if data.draw(st.booleans()):
            lines.insert(0, f"[pipeline]\nthreads = {_toml(data.draw(NUMBERS))}")
        recipe = tmp_path / "r.toml"
        recipe.write_text("\n".join(lines) + "\n")
        before = tree_hash(tmp_path)
        res = cli_in_process("pipeline", recipe, "--out", tmp_path / "run", "--dry-run")
        outcome = "accepted" if res.returncode == 0 else "refused (one-line error)"
        TALLY["recipe (dry run)", outcome] += 1
        if res.returncode:
            lines_err = [x for x in res.stderr.strip().splitlines() if x.strip()]
            assert res.returncode == 1 and len(lines_err) == 1 and lines_err[0].startswith("error: "), res.stderr
        assert tree_hash(tmp_path) == before

    case()


# --- CLI numbers ------------------------------------------------------------------------------------------------

def _num(valid):
    """Mostly hostile numbers (below 1, or past every range: 10^12 images would need 256 TB), sometimes a small valid
    one (so that success, which runs the command, stays cheap)."""
    return st.one_of(st.sampled_from(valid), st.integers(max_value=0), st.integers(min_value=10**12, max_value=2**80))


def test_fuzz_cli_numbers(tiny_checkpoint, tmp_path):
    """`sample` and `bench` with hostile numbers: one line or success; only the requested output is written."""
    floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 0.5, 1.0]))
    work = tmp_path / "work"
    work.mkdir()
    model = tmp_path / "model"  # a copy: bench records into the artifact it measures
    shutil.copytree(tiny_checkpoint, model)

    @FUZZ_CLI
    @given(command=st.sampled_from(["sample", "bench"]), data=st.data())
    def case(command, data):
        if command == "sample":
            opts = {"--n": data.draw(_num([1, 2])), "--steps": data.draw(_num([1, 2])),
                    "--seed": data.draw(st.integers(min_value=-(2**70), max_value=2**70)),
                    "--eta": data.draw(floats)}
            args = ["sample", model, "--out", work / "x.png"]
        else:
            opts = {"--min-seconds": data.draw(floats.map(lambda v: min(v, 0.01) if v > 0 else v)),
                    "--min-iters": data.draw(_num([1, 2])), "--rounds": data.draw(_num([1])),
                    "--sampler-steps": data.draw(_num([1, 2])), "--batch": data.draw(_num([1, 2])),
                    "--threads": data.draw(_num([1]))}
            args = ["bench", model]
        keys = data.draw(st.lists(st.sampled_from(sorted(opts)), min_size=1, max_size=len(opts), unique=True))
        if command == "bench":  # keep a valid run short: the protocol's defaults take seconds
            keys = sorted(set(keys) | {"--min-seconds", "--min-iters", "--rounds", "--sampler-steps"})
        argv = args + [x for k in keys for x in (k, str(opts[k]))]
        ckpt_before, work_before = tree_hash(model), tree_hash(work)
        res = cli_in_process(*argv)
        TALLY[f"cli numbers ({command})", "accepted" if res.returncode == 0 else "refused (one-line error)"] += 1
        if res.returncode:
            lines = [x for x in res.stderr.strip().splitlines() if x.strip()]
            assert res.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), (argv, res.stderr)
            assert tree_hash(work) == work_before  # nothing half-written
        else:
            assert set(tree_hash(work)) <= {"x.png"}
        after = tree_hash(model)  # bench records its metrics.json: the one file it may change there
        assert {k: v for k, v in after.items() if "metrics.json" not in k} == \
            {k: v for k, v in ckpt_before.items() if "metrics.json" not in k}
        for p in work.iterdir():
            p.unlink()

    case()
