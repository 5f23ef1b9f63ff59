import json

import pytest

from cunet_edge.artifact import Artifact, ArtifactWriter
from cunet_edge.errors import ArtifactError, OutputPathError


def _make(out, payload=b"hello" * 100, kind="checkpoint"):
    with ArtifactWriter(out, kind=kind, stage="test", config={"a": 1}) as w:
        (w.dir / "payload.bin").write_bytes(payload)
    return w.artifact


def test_write_and_load(tmp_path):
    art = _make(tmp_path / "a")
    loaded = Artifact.load(tmp_path / "a", kinds=["checkpoint"])
    assert loaded.kind == "checkpoint" and loaded.manifest["id"] == art.manifest["id"]
    assert loaded.manifest["files"]["payload.bin"]["bytes"] == 500
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_detects_truncation_corruption_and_missing_files(tmp_path):
    _make(tmp_path / "a")
    f = tmp_path / "a" / "payload.bin"
    f.write_bytes(b"hello" * 50)
    with pytest.raises(ArtifactError, match="truncated"):
        Artifact.load(tmp_path / "a")
    f.write_bytes(b"jello" * 100)
    with pytest.raises(ArtifactError, match="does not match its hash"):
        Artifact.load(tmp_path / "a")
    f.unlink()
    with pytest.raises(ArtifactError, match="payload.bin is missing"):
        Artifact.load(tmp_path / "a")
    (tmp_path / "a" / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupted"):
        Artifact.load(tmp_path / "a")


def test_wrong_kind_and_not_an_artifact(tmp_path):
    _make(tmp_path / "a", kind="onnx")
    with pytest.raises(ArtifactError, match="of kind 'onnx'; this command needs one of: checkpoint"):
        Artifact.load(tmp_path / "a", kinds=["checkpoint"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="no manifest.json"):
        Artifact.load(tmp_path / "empty")
    with pytest.raises(ArtifactError, match="does not exist"):
        Artifact.load(tmp_path / "nothing")


def test_failure_inside_writer_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with ArtifactWriter(tmp_path / "a", kind="x", stage="t", config={}) as w:
            (w.dir / "half.bin").write_bytes(b"x")
            raise RuntimeError("crash mid-stage")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_and_replace(tmp_path):
    _make(tmp_path / "a")
    with pytest.raises(OutputPathError, match="already exists"):
        _make(tmp_path / "a")
    with ArtifactWriter(tmp_path / "a", kind="checkpoint", stage="t", config={}, replace=True) as w:
        (w.dir / "new.bin").write_bytes(b"new")
    assert set(json.loads((tmp_path / "a" / "manifest.json").read_text())["files"]) == {"new.bin"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputPathError, match="not a writable directory"):
        _make(blocker / "sub")


def test_records_are_strict_json_even_with_an_infinite_psnr(tmp_path):
    """NaN and Infinity are not JSON: a manifest and a metrics record holding them are written as strings, and the
    drift reader turns the infinite PSNR of identical samples back into infinity."""
    import math

    from cunet_edge.records import read_metrics, recorded_drift, write_metrics

    def strict(path):
        return json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{path.name} holds a bare {c}"))

    with ArtifactWriter(tmp_path / "a", kind="checkpoint", stage="test", config={}) as w:
        (w.dir / "payload.bin").write_bytes(b"x")
        w.manifest["drift"] = {"eps_rel_err": 0.0, "sample_psnr_vs_parent": math.inf, "worst": -math.inf}
    manifest = strict(tmp_path / "a" / "manifest.json")
    assert manifest["drift"]["sample_psnr_vs_parent"] == "inf" and manifest["drift"]["worst"] == "-inf"
    assert recorded_drift(Artifact.load(tmp_path / "a").manifest)["sample_psnr_db"] == math.inf
    write_metrics(tmp_path / "a", "evaluate", {"fid": 1.0, "fid_ratio": math.inf, "kid": math.nan})
    assert strict(tmp_path / "a" / "metrics.json")["evaluate"] | {"fid": 1.0} == {"fid": 1.0, "fid_ratio": "inf",
                                                                                   "kid": "nan"}
    assert read_metrics(tmp_path / "a")["evaluate"]["fid_ratio"] == "inf"
