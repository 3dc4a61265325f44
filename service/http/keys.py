"""Client keys: who may call /v1/rank and /v1/reward, named by the key they hold.

A caller sends its secret in the `X-Shelfbandit-Key` header (kept apart from the admin bearer
token of `Authorization`). The keys in force are the settings' `client_keys` and those of
`client_keys_file`, which a supervised poller re-reads when it changes (its inode, size or
modification time), so keys are added and retired without a restart. A file that cannot be
read or breaks a rule is a failing poll (logged, counted, named by `/readyz`); the keys read
before keep working meanwhile.

Secrets are held only as SHA-256 digests; a presented key is compared with every digest in
constant time (`hmac.compare_digest`, no early exit), and only its name goes further (into the
decision line, `_key_id`). With no key configured, `identify` answers None to everyone: the
endpoints are open, and `shelfbandit serve` warns when they are reachable beyond 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from service.errors import Forbidden, Unauthenticated
from service.logs import get_logger
from service.settings import Settings, client_key_table, read_keys_file
from service.supervisor import Supervised

if TYPE_CHECKING:
    from service.ops.metrics import ServiceMetrics

log = get_logger()
KEY_HEADER = "X-Shelfbandit-Key"
KEY_FIELD = KEY_HEADER.lower()
_UNREAD = (-1, -1, -1)


class MissingKey(Unauthenticated):
    """A client endpoint was called without a client key while keys are configured."""


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def digests(table: Mapping[str, tuple[str, ...]]) -> tuple[tuple[bytes, str], ...]:
    """(SHA-256 of the secret, key name) for every secret of `table`."""
    return tuple((_digest(secret), name) for name, secrets in table.items() for secret in secrets)


def file_stamp(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime in ns) of `path`, None if it does not exist: what `changed` compares."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


class ClientKeys:
    """The client keys of one worker: `identify(presented)` -> the key's name (None while no key
    is configured), and the poller that re-reads the keys file."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics | None = None) -> None:
        self._fixed = settings.key_table()
        self._admin = settings.admin_secret
        self._file = settings.client_keys_file
        self._stamp: tuple[int, int, int] | None = _UNREAD
        self._entries = digests(self._fixed)
        self.poller: Supervised | None = None
        if self._file is not None:
            self.reload()  # a broken file at start fails the start, with the file's error
            backoff = max(settings.model_poll_s, settings.background_max_backoff_s)
            self.poller = Supervised("client-keys", self._poll_step, metrics, base_s=settings.model_poll_s, max_backoff_s=backoff)
            self._poll_s = settings.model_poll_s

    @property
    def required(self) -> bool:
        return bool(self._entries)

    @property
    def failing(self) -> dict[str, str]:
        """`client-keys` -> the error of the last poll, while it fails."""
        if self.poller is None or self.poller.failing is None:
            return {}
        return {self.poller.task: self.poller.failing}

    def start(self) -> ClientKeys:
        if self.poller is not None:
            self.poller.start()
        return self

    def stop(self) -> None:
        if self.poller is not None:
            self.poller.stop(timeout_s=5.0)

    def identify(self, presented: str | None) -> str | None:
        """The name of the key `presented`; 401 without one and 403 with an unknown one while keys
        are configured; None (open endpoints) while none is."""
        entries = self._entries  # one read: a reload replaces the tuple whole
        if not entries:
            return None
        if not presented:
            raise MissingKey(KEY_FIELD, f"a client key is required (header {KEY_HEADER})")
        digest = _digest(presented)
        name = None
        for known, key_name in entries:
            if hmac.compare_digest(known, digest) and name is None:
                name = key_name
        if name is None:
            raise Forbidden(KEY_FIELD, "the client key is not known")
        return name

    def reload(self) -> bool:
        """Re-read the keys file if it changed since the last read; whether it did."""
        stamp = file_stamp(self._file)
        if stamp == self._stamp:
            return False
        table = dict(self._fixed)
        for name, secrets in read_keys_file(self._file, self._admin).items():
            table[name] = tuple(dict.fromkeys(table.get(name, ()) + secrets))
        client_key_table(table, "client_keys_file", admin_token=self._admin)  # no secret under two names
        self._entries = digests(table)
        self._stamp = stamp
        log.info("client keys loaded", extra={"fields": {"names": sorted(table), "n_secrets": len(self._entries)}})
        return True

    def _poll_step(self) -> float:
        self.reload()
        return self._poll_s
