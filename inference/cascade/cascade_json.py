"""The cascade manifest (`weights/cascade.json`): which model folder serves which stage, the
post-processing and cascade parameters, and the SHA-256 of every weight file.

Verification happens before any case is touched: a missing or altered file is a fatal
environment error (exit code 3), never a silent fallback.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST_NAME = "cascade.json"
MANIFEST_FORMAT = 1


class ManifestError(Exception):
    """Weights missing, tampered or described inconsistently."""


@dataclass(frozen=True)
class TumorStage:
    organ: int  # the organ label this tumor model serves (1 liver, 2 right kidney, 4 pancreas, 13 left kidney)
    folder: Path
    needs_contrast: bool = False  # kidney models run only on contrast-enhanced scans (public code)


@dataclass(frozen=True)
class Manifest:
    root: Path
    organ_folder: Path
    tumor_stages: tuple[TumorStage, ...] = ()
    parameters: dict = field(default_factory=dict)  # cascade and post-processing parameters
    raw: dict = field(default_factory=dict)


def sha256_of(path: Path, chunk: int = 2**20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_digests(root: Path, folders: list[Path]) -> dict[str, str]:
    """SHA-256 of every file under the given folders, keyed by path relative to `root`."""
    digests = {}
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            digests[path.relative_to(root).as_posix()] = sha256_of(path)
    return digests


def is_manifest_folder(path: Path) -> bool:
    return (Path(path) / MANIFEST_NAME).is_file()


def load_manifest(root, verify: bool = True) -> Manifest:
    root = Path(root)
    path = root / MANIFEST_NAME
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path}: not valid JSON ({error})") from None
    if raw.get("format") != MANIFEST_FORMAT:
        raise ManifestError(f"{path}: unsupported manifest format {raw.get('format')!r} (expected {MANIFEST_FORMAT})")
    try:
        stages = raw["stages"]
        organ = root / stages["organ"]["folder"]
        tumors = tuple(TumorStage(int(t["organ"]), root / t["folder"], bool(t.get("needs_contrast", False)))
                       for t in stages.get("tumor", []))
    except (KeyError, TypeError, ValueError) as error:
        raise ManifestError(f"{path}: malformed stages entry ({error!r})") from None
    manifest = Manifest(root, organ, tumors, dict(raw.get("parameters", {})), raw)
    if verify:
        verify_files(manifest)
    return manifest


def verify_files(manifest: Manifest) -> None:
    """Every listed file exists with its recorded SHA-256, and every stage folder is covered."""
    files = manifest.raw.get("files")
    if not files:
        raise ManifestError(f"{manifest.root / MANIFEST_NAME}: lists no files with SHA-256")
    for relative, expected in files.items():
        path = manifest.root / relative
        if not path.is_file():
            raise ManifestError(f"{path}: weight file missing")
        actual = sha256_of(path)
        if actual != expected:
            raise ManifestError(f"{path}: SHA-256 mismatch (expected {expected[:12]}..., got {actual[:12]}...); "
                                "the weights were altered or corrupted")
    for folder in [manifest.organ_folder, *(t.folder for t in manifest.tumor_stages)]:
        listed = [r for r in files if (manifest.root / r).resolve().is_relative_to(folder.resolve())]
        if not listed:
            raise ManifestError(f"{folder}: stage folder has no files listed in the manifest")
