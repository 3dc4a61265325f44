"""Model store: versioned policy files and an active pointer switched atomically.

Layout under `<data_dir>/models`:

    versions/<version>.model        the payload `policy.save` wrote
    versions/<version>.model.json   its metadata (kind, version, sha256, config, created)
    ACTIVE                          {"version", "activated_at", "previous", "pinned"} (replaced atomically)
    .lock                           serialises publishing and activation between processes

The version id is derived from the payload's SHA-256 (see `bandit.model_file`), so publishing
the same model twice is harmless. Any process may publish or activate (a trainer, the CLI,
the service's admin endpoint); services poll `ACTIVE` and hot-swap.

An operator's activation pins the pointer: the trainer's timed publishing (`activate(...,
respect_pin=True)`) leaves a pinned pointer alone until `resume()` unpins it. `prune(keep)`
removes all but the newest `keep` versions, never the active one, its previous one or a
protected one (an arm's model); an activation checks under the same lock that its version is
still there.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bandit.durable import fsync_directory, locked, write_atomic
from bandit.errors import FieldError, ModelFileError, ShelfBanditError, ValidationError
from bandit.model_file import meta_path, read_meta
from bandit.policy import Policy
from bandit.registry import load_policy

POINTER = "ACTIVE"
MODEL_SUFFIX = ".model"


class UnknownModelVersion(FieldError):
    """No model of that version is in the store."""


class ModelRefused(FieldError):
    """A model failed its checks (corrupt, unreadable or unusable) and was not activated."""


class PointerPinned(ShelfBanditError):
    """An operator pinned the active version; timed publishing waits until it is resumed."""


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One stored model: version id, payload path and its metadata."""

    version: str
    path: Path
    meta: dict

    @property
    def created(self) -> float:
        return float(self.meta.get("created", 0.0))

    @property
    def kind(self) -> str:
        return str(self.meta.get("kind", "unknown"))


@dataclass(frozen=True, slots=True)
class ActivePointer:
    """What `ACTIVE` says: the version to serve, when it was activated, the one before, and
    whether an operator pinned it (timed publishing then pauses)."""

    version: str
    activated_at: float
    previous: str | None = None
    pinned: bool = False


class ModelStore:
    """Publish, list, activate and load versioned models under `root`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.pointer_path = self.root / POINTER

    # -- publishing ----------------------------------------------------------------------------
    def publish(self, policy: Policy, *, activate: bool = False) -> str:
        """Save `policy` as a new version (idempotent by content); optionally activate it."""
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        incoming = self.versions_dir / f".incoming-{uuid.uuid4().hex}{MODEL_SUFFIX}"
        try:
            version = policy.save(incoming)
            self._adopt(incoming, version)
        finally:
            incoming.unlink(missing_ok=True)
            meta_path(incoming).unlink(missing_ok=True)
        if activate:
            self.activate(version)
        return version

    def publish_file(self, path: str | Path, *, activate: bool = False) -> str:
        """Copy a saved model (payload + `.json` metadata) into the store after checking it."""
        meta = read_meta(path)
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        incoming = self.versions_dir / f".incoming-{uuid.uuid4().hex}{MODEL_SUFFIX}"
        try:
            for source, target in ((Path(path), incoming), (meta_path(path), meta_path(incoming))):
                write_atomic(target, source.read_bytes())
            self._adopt(incoming, meta["version"])
        finally:
            incoming.unlink(missing_ok=True)
            meta_path(incoming).unlink(missing_ok=True)
        if activate:
            self.activate(meta["version"])
        return meta["version"]

    def _adopt(self, incoming: Path, version: str) -> None:
        target = self.path_of(version)
        if meta_path(target).exists():
            return
        # payload first, metadata last: a version is listed only once both are in place
        os.replace(incoming, target)
        os.replace(meta_path(incoming), meta_path(target))
        fsync_directory(self.versions_dir)

    # -- reading -------------------------------------------------------------------------------
    def path_of(self, version: str) -> Path:
        if not version or "/" in version or version.startswith("."):
            raise ValidationError("version", "must be a plain version id", version)
        return self.versions_dir / f"{version}{MODEL_SUFFIX}"

    def versions(self) -> list[ModelVersion]:
        """Every stored version with readable metadata, oldest first."""
        found = []
        for meta_file in self.versions_dir.glob(f"*{MODEL_SUFFIX}.json"):
            if meta_file.name.startswith("."):
                continue
            try:
                meta = json.loads(meta_file.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            path = meta_file.with_suffix("")
            found.append(ModelVersion(path.name[: -len(MODEL_SUFFIX)], path, meta))
        return sorted(found, key=lambda v: (v.created, v.version))

    def get(self, version: str) -> ModelVersion:
        """The stored version (its payload checked against the metadata)."""
        path = self.path_of(version)
        if not meta_path(path).exists():
            raise UnknownModelVersion("version", f"no model {version!r} in the store ({self.versions_dir})")
        try:
            return ModelVersion(version, path, read_meta(path))
        except ModelFileError as err:
            raise ModelRefused("version", f"{version} is refused ({err})") from None

    def load(self, version: str) -> tuple[Policy, ModelVersion]:
        """Load a stored version; ModelRefused if it is corrupt or cannot be loaded."""
        stored = self.get(version)
        if stored.meta.get("version") != version:
            raise ModelRefused("version", f"{version} is refused (its metadata names version {stored.meta.get('version')!r})")
        try:
            return load_policy(stored.path), stored
        except (ModelFileError, ValidationError) as err:
            raise ModelRefused("version", f"{version} is refused ({err})") from None

    def active(self) -> ActivePointer | None:
        """The active pointer, or None before the first activation."""
        try:
            data = json.loads(self.pointer_path.read_text())
            return ActivePointer(str(data["version"]), float(data["activated_at"]), data.get("previous"), bool(data.get("pinned", False)))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ModelRefused("pointer", f"the active pointer {self.pointer_path} is unreadable ({err})") from None

    # -- activation ----------------------------------------------------------------------------
    def activate(self, version: str, *, check: Callable[[str], object] | None = None, pin: bool = False,
                 respect_pin: bool = False) -> ActivePointer:
        """Point `ACTIVE` at `version` (temp file + fsync + rename). The version must load
        (`check`, default `self.load`, raises ModelRefused otherwise); rollback is activating an
        older version. `pin`: an operator's choice, kept until `resume()`; `respect_pin`: raise
        PointerPinned instead of moving a pinned pointer (timed publishing)."""
        (check or self.load)(version)
        with self._locked():
            if not (self.path_of(version).exists() and meta_path(self.path_of(version)).exists()):
                raise UnknownModelVersion("version", f"{version} was removed from the store while it was checked")
            try:
                current = self.active()
            except ModelRefused:
                current = None
            if respect_pin and current is not None and current.pinned:
                raise PointerPinned(f"version: {current.version} is pinned by an operator; resume publishing to move it")
            previous = None
            if current is not None:
                previous = current.version if current.version != version else current.previous
            pointer = ActivePointer(version, time.time(), previous, pin)
            self._write_pointer(pointer)
        return pointer

    def resume(self) -> ActivePointer | None:
        """Unpin the active pointer (timed publishing moves it again); None before any activation."""
        with self._locked():
            current = self.active()
            if current is None or not current.pinned:
                return current
            pointer = ActivePointer(current.version, current.activated_at, current.previous, False)
            self._write_pointer(pointer)
            return pointer

    def prune(self, keep: int, protect: Callable[[], Collection[str]] = frozenset) -> list[str]:
        """Remove all but the newest `keep` versions, sparing the active and previous versions and
        `protect()` (asked under the lock, so nothing named meanwhile is removed); returns the
        removed versions, oldest first."""
        if keep < 1:
            raise ValidationError("keep", "must be at least 1", keep)
        with self._locked():
            try:
                pointer = self.active()
            except ModelRefused:
                return []  # cannot tell what is served: remove nothing
            spared = set(protect()) | ({pointer.version, pointer.previous} if pointer else set())
            versions = self.versions()
            removed = [v.version for v in versions[: max(0, len(versions) - keep)] if v.version not in spared]
            for version in removed:
                path = self.path_of(version)
                meta_path(path).unlink(missing_ok=True)  # metadata first: the version stops being listed
                path.unlink(missing_ok=True)
            if removed:
                fsync_directory(self.versions_dir)
        return removed

    def ensure_active(self, make_policy: Callable[[], Policy]) -> ActivePointer:
        """The active pointer; if there is none yet, publish `make_policy()` and activate it."""
        with self._locked():
            current = self.active()
            if current is not None:
                return current
            version = self.publish(make_policy())
            pointer = ActivePointer(version, time.time(), None)
            self._write_pointer(pointer)
            return pointer

    def _write_pointer(self, pointer: ActivePointer) -> None:
        data = {"version": pointer.version, "activated_at": pointer.activated_at, "previous": pointer.previous,
                "pinned": pointer.pinned}
        write_atomic(self.pointer_path, json.dumps(data).encode())

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with locked(self.root / ".lock"):
            yield
