"""Artifacts: directories of payload files plus `manifest.json`, written atomically.

A stage writes into a temporary sibling directory and renames it into place only when
every file and the manifest are complete, so a crash or a bad input never leaves a
half-written directory that looks valid. Loading verifies the manifest and file hashes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import ArtifactError, OutputPathError
from .limits import check_manifest, check_member, check_regular_file, read_json_record

__all__ = ["Artifact", "ArtifactWriter", "check_output_path", "library_versions", "MANIFEST", "write_atomic",
           "json_safe", "json_text",
           "write_json_atomic", "staging_dir", "move_into_place", "enclosing_artifact", "check_not_in_artifact",
           "check_name_length"]

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape an artifact (only those already imported or cheap)."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for dist in ("cunet-edge", "torch", "torchdiffeq", "numpy", "safetensors"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions


def enclosing_artifact(path: str | Path) -> Path | None:
    """The artifact folder (one holding a manifest.json) that `path` lies inside, links resolved; None if none.

    `path` itself is not counted: only the folders above it."""
    try:
        resolved = Path(path).expanduser().resolve()
    except (OSError, RuntimeError):  # a link loop
        return None
    for folder in resolved.parents:
        try:
            if (folder / MANIFEST).is_file():
                return folder
        except OSError:
            return None
    return None


def check_not_in_artifact(path: str | Path, what: str = "output") -> None:
    """Refuse an output inside an artifact: its payload files are hashed, and nothing but `metrics.json` is ever
    written into one (an output there could overwrite the weights)."""
    holder = enclosing_artifact(path)
    if holder is not None:
        raise OutputPathError(f"{what} {path} is inside artifact {holder}; write it outside any artifact folder")


# Characters the temporary siblings add to an output's name: `.NAME.tmp-XXXXXXXX` (staging folders),
# `.NAME.PID-XXXXXXXX.tmp` (atomic files), `.NAME.old-PID` (a replaced folder).
STAGING_EXTRA = 24


def check_name_length(path: str | Path) -> None:
    """Refuse an output whose name, or its temporary sibling's longer name, the file system cannot hold."""
    path = Path(path)
    probe = path.absolute().parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        name_max = os.pathconf(probe, "PC_NAME_MAX")
        path_max = os.pathconf(probe, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    name = len(os.fsencode(path.name))
    if name + STAGING_EXTRA > name_max:
        raise OutputPathError(f"output name {path.name[:40]}... is {name} bytes long; this file system holds names "
                              f"of {name_max} bytes, and the temporary copy adds {STAGING_EXTRA}: use a shorter name")
    if len(os.fsencode(str(path.absolute()))) + STAGING_EXTRA >= path_max:
        raise OutputPathError(f"output path {str(path)[:40]}... is longer than this file system allows ({path_max} "
                              f"bytes with its temporary copy's name)")


def check_output_path(out: str | Path, *, exist_ok: bool = False) -> Path:
    """Fail early, before any work, if `out` cannot be created as an artifact directory (it exists, it lies inside
    an artifact, or its folder is not writable)."""
    out = Path(out)
    check_name_length(out)
    check_not_in_artifact(out)
    if out.exists() and not exist_ok:
        raise OutputPathError(f"output {out} already exists; choose a new path or remove it")
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"output {out} exists and is not a directory")
    parent = out.absolute().parent
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write output {out}: {probe} is not a writable directory")
    return out


def write_atomic(path: str | Path, data: bytes | str | Callable[[Path], None]) -> Path:
    """Write a file whole or not at all: into a unique temporary sibling, then renamed over `path`.

    `data` is the content (bytes or text) or a function that writes the temporary file (e.g. a PNG
    encoder). The temporary name is `.NAME.PID-RANDOM.tmp` (not mkstemp, whose 0600 mode would ignore
    the umask); it is removed if anything fails. The one atomic file writer of the package.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(data):
            data(tmp)
        elif isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputPathError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def json_safe(v):
    """Strict JSON: an infinite PSNR (identical images) becomes the string "inf", NaN the string "nan"."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    return v


def json_text(data: Any) -> str:
    """`data` as indented, key-sorted, strict JSON (no bare NaN or Infinity: `json_safe`; anything else as str)."""
    return json.dumps(json_safe(data), indent=2, sort_keys=True, default=str, allow_nan=False) + "\n"


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """`data` as `json_text`, written atomically."""
    return write_atomic(path, json_text(data))


def staging_dir(out: Path) -> Path:
    """A temporary sibling folder of `out` (`.NAME.tmp-*`) to build it in, with the usual umask permissions."""
    parent = out.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    umask = os.umask(0)  # mkdtemp makes the folder 0700
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    return tmp


def move_into_place(tmp: Path, out: Path, *, replace: bool) -> None:
    """Rename a finished staging folder to `out`; with `replace`, the old one is renamed away first, removed last.

    Without `replace`, an `out` that appeared while this one was built (another process writing the same output)
    is left alone: an OutputPathError, and the caller removes its staging folder."""
    if out.exists() and replace:
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
        return
    if os.path.lexists(out):
        raise OutputPathError(f"output {out} was created by another process while this one ran; it is left as it "
                              f"is and this result is not written")
    try:
        os.rename(tmp, out)
    except OSError as exc:
        raise OutputPathError(f"cannot move the finished output into {out}: {exc.strerror or exc} (another "
                              f"process may have written the same output meanwhile)") from None


@dataclass(frozen=True)
class Artifact:
    """A verified artifact directory; `manifest` is its parsed manifest.json."""

    path: Path
    manifest: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest.get("config", {})

    def file(self, name: str) -> Path:
        return self.path / name

    @classmethod
    def load(cls, path: str | Path, kinds: Iterable[str] | None = None, *, verify: bool = True) -> "Artifact":
        """Open an artifact, checking that it is complete, uncorrupted and of an allowed kind, and that its manifest
        keeps to the schema (`limits.check_manifest`) before any work."""
        path = Path(path)
        try:
            exists, is_dir = path.exists(), path.is_dir()
        except OSError as exc:  # a name longer than the file system allows, a link loop
            raise ArtifactError(f"cannot open artifact {str(path)[:80]}...: {exc.strerror or exc}") from None
        if not exists:
            raise ArtifactError(f"artifact {path} does not exist")
        if not is_dir:
            raise ArtifactError(f"{path} is not an artifact directory (it is a file)")
        mpath = path / MANIFEST
        if not os.path.lexists(mpath):
            raise ArtifactError(f"{path} is not an artifact: it has no {MANIFEST}")
        # Checked whole before any work: a regular UTF-8 file of bounded size and depth, and the schema.
        manifest = check_manifest(read_json_record(mpath, "manifest"), str(mpath))
        art = cls(path, manifest).require(kinds)
        if verify:
            art.verify()
        return art

    def require(self, kinds: Iterable[str] | None) -> "Artifact":
        """This artifact, if its kind is one of `kinds` (None: any); else an ArtifactError naming them."""
        kinds = list(kinds) if kinds is not None else None
        if kinds is not None and self.kind not in kinds:
            raise ArtifactError(
                f"{self.path} is an artifact of kind {self.kind!r}; this command needs one of: {', '.join(kinds)}"
            )
        return self

    def verify(self) -> None:
        """Check every payload file is a regular file inside the artifact with the size and hash the manifest
        recorded."""
        where = f"artifact {self.path}"
        for name, meta in self.manifest["files"].items():
            fpath = check_member(self.path, name, where)  # confined: nothing outside the artifact is read
            if not os.path.lexists(fpath):
                raise ArtifactError(f"artifact {self.path} is incomplete: {name} is missing")
            size = check_regular_file(fpath, f"{where}: payload file").st_size
            if size != meta["bytes"]:
                raise ArtifactError(
                    f"artifact {self.path} is truncated or corrupted: {name} has "
                    f"{size} bytes, manifest says {meta['bytes']}"
                )
            if _sha256(fpath) != meta["sha256"]:
                raise ArtifactError(f"artifact {self.path} is corrupted: {name} does not match its hash")


class ArtifactWriter:
    """Context manager that builds an artifact in a temporary directory and renames it into place.

    Usage::

        with ArtifactWriter(out, kind="checkpoint", stage="train", config=cfg_dict) as w:
            save_file(tensors, w.dir / "model.safetensors")
            w.manifest["signature"] = {...}
        art = w.artifact
    """

    def __init__(
        self,
        out: str | Path,
        *,
        kind: str,
        stage: str,
        config: dict[str, Any],
        parent: Artifact | None = None,
        replace: bool = False,
    ):
        self.out = check_output_path(out, exist_ok=replace)
        self.replace = replace
        self.manifest: dict[str, Any] = {
            "manifest_version": MANIFEST_VERSION,
            "kind": kind,
            "stage": stage,
            "config": config,
            "parent": None
            if parent is None
            else {"path": str(parent.path.resolve()), "kind": parent.kind, "id": parent.manifest.get("id")},
        }
        self.dir: Path | None = None
        self.artifact: Artifact | None = None

    def __enter__(self) -> "ArtifactWriter":
        self.dir = staging_dir(self.out)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.dir is not None
        if exc_type is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            return
        try:
            self._finish()
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def _finish(self) -> None:
        assert self.dir is not None
        files = {}
        for f in sorted(self.dir.rglob("*")):
            if f.is_file() and f.name != MANIFEST:
                rel = f.relative_to(self.dir).as_posix()
                files[rel] = {"bytes": f.stat().st_size, "sha256": _sha256(f)}
        self.manifest["files"] = files
        self.manifest["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.manifest["versions"] = library_versions()
        digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
        self.manifest["id"] = f"{self.manifest['kind']}-{digest}"
        (self.dir / MANIFEST).write_text(json_text(self.manifest))
        move_into_place(self.dir, self.out, replace=self.replace)
        self.artifact = Artifact(self.out, self.manifest)
