"""Run directories: every run keeps its resolved config, JSONL metrics and provenance beside its outputs."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from medfm.config import save_config

SECRETS = "secrets"  # a folder of keys inside a run or corpus folder, never fingerprinted

# Packages whose versions decide what a run computes; others are recorded only if asked for.
TRACKED_PACKAGES = (
    "medfm",
    "numpy",
    "torch",
    "torchvision",
    "timm",
    "safetensors",
    "pillow",
    "pydicom",
    "nibabel",
    "wfdb",
    "pyarrow",
    "webdataset",
    "imagehash",
    "scipy",
    "pandas",
    "omegaconf",
    "flwr",
)


def git_commit(path: str | Path = ".") -> dict[str, Any]:
    """The commit of the git checkout holding ``path`` and whether it has uncommitted changes."""
    try:

        def git(*args: str) -> str:
            return subprocess.run(
                ["git", *args], cwd=path, capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()

        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def fingerprint_path(path: str | Path, chunk: int = 1 << 20) -> dict[str, Any]:
    """A content fingerprint of a file or a folder: BLAKE2b over sorted relative paths and bytes.

    A folder's ``secrets/`` (a corpus's pseudonym salt) is left out: a digest over a key published in a
    provenance file would let anyone test guesses of the key."""
    path = Path(path)
    if path.is_file():
        files = [path]
    else:
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.relative_to(path).parts[0] != SECRETS)
    digest = hashlib.blake2b(digest_size=16)
    n_bytes = 0
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode())
        with file.open("rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
                n_bytes += len(block)
    return {"path": str(path), "files": len(files), "bytes": n_bytes, "blake2b": digest.hexdigest()}


@dataclass
class Run:
    """One run's directory. Create with :meth:`create`; log with :meth:`log`; close with :meth:`finish`."""

    path: Path
    provenance: dict[str, Any] = field(default_factory=dict)
    _started: float = field(default_factory=time.time, repr=False)

    @classmethod
    def create(
        cls,
        path: str | Path,
        config: Any,
        *,
        seeds: dict[str, int] | None = None,
        data: dict[str, str | Path] | None = None,
        resume_step: int | None = None,
    ) -> Run:
        """Make ``path`` (it may exist, then files are replaced) and write config and provenance.

        ``resume_step`` continues a run resumed from a checkpoint of that step: metric lines up to it are
        kept, later ones (logged after the checkpoint by the run that stopped) are dropped.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_config(config, path / "config.yaml")
        metrics = path / "metrics.jsonl"
        kept = []
        if resume_step is not None and metrics.is_file():
            kept = [r for r in read_metrics(metrics) if r.get("step", 0) <= resume_step]
        metrics.write_text("".join(json.dumps(r, default=_jsonable) + "\n" for r in kept))
        run = cls(path=path)
        run.provenance = {
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": sys.argv,
            "cwd": os.getcwd(),
            "git": git_commit(Path(__file__).parent),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "packages": package_versions(),
            "seeds": seeds or {},
            "data": {name: fingerprint_path(p) for name, p in (data or {}).items()},
        }
        if resume_step is not None:
            run.provenance["resumed_from_step"] = resume_step
            earlier = path / "provenance.json"
            if earlier.is_file():  # keep the record of every earlier segment of the run
                previous = json.loads(earlier.read_text())
                segments = previous.pop("earlier_segments", [])
                run.provenance["earlier_segments"] = [*segments, previous]
        run._write_provenance()
        return run

    def log(self, step: int | None = None, **values: Any) -> None:
        """Append one JSON line of metrics (with wall time and, if given, the step)."""
        record = {
            "time": round(time.time() - self._started, 3),
            **({"step": step} if step is not None else {}),
        }
        record.update(values)
        with (self.path / "metrics.jsonl").open("a") as handle:
            handle.write(json.dumps(record, default=_jsonable) + "\n")

    def finish(self, **summary: Any) -> None:
        self.provenance["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.provenance["wall_seconds"] = round(time.time() - self._started, 3)
        self.provenance["summary"] = summary
        self._write_provenance()

    def _write_provenance(self) -> None:
        text = json.dumps(self.provenance, indent=2, default=_jsonable)
        (self.path / "provenance.json").write_text(text + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    path = path / "metrics.jsonl" if path.is_dir() else path
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
