"""Model files: a payload file plus `<path>.json` metadata (kind, version id, configuration).

The version id is derived from the payload's SHA-256, which the metadata also records, so a
payload that does not match its metadata (torn write, corruption, swapped file) is refused.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from bandit.durable import write_atomic
from bandit.errors import ModelFileError

FORMAT = "shelf-bandit-model/1"


def meta_path(path: str | Path) -> Path:
    return Path(f"{path}.json")


def write_model(path: str | Path, payload: bytes, *, kind: str, config: dict, extra: dict | None = None) -> str:
    """Write payload and metadata durably; return the version id."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(payload).hexdigest()
    version = f"{kind}-{digest[:12]}"
    meta = {
        "format": FORMAT,
        "kind": kind,
        "version": version,
        "sha256": digest,
        "config": config,
        "created": time.time(),
        **(extra or {}),
    }
    write_atomic(path, payload)
    write_atomic(meta_path(path), json.dumps(meta, indent=2, sort_keys=True).encode())
    return version


def read_meta(path: str | Path, *, check_payload: bool = True) -> dict:
    """Read and check a model's metadata (and that the payload matches it)."""
    path = Path(path)
    try:
        meta = json.loads(meta_path(path).read_text())
    except FileNotFoundError:
        raise ModelFileError(f"{path}: metadata file {meta_path(path).name} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFileError(f"{path}: metadata is not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a shelf-bandit model (format {meta.get('format') if isinstance(meta, dict) else None!r}, expected {FORMAT!r})")
    if check_payload:
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except FileNotFoundError:
            raise ModelFileError(f"{path}: model payload is missing") from None
        if digest != meta.get("sha256"):
            raise ModelFileError(f"{path}: payload does not match its metadata (corrupt or partially written)")
    return meta


def read_payload(path: str | Path) -> tuple[bytes, dict]:
    """The payload bytes and checked metadata of a model file."""
    meta = read_meta(path)
    return Path(path).read_bytes(), meta

