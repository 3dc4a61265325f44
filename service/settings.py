"""Service settings: one validated object built from defaults, a file, the environment and flags.

Precedence, lowest first: defaults < settings file (TOML or JSON) < environment variables
(`SHELFBANDIT_<FIELD>`, e.g. `SHELFBANDIT_ADMIN_TOKEN`) < command-line flags. Nothing is
read at import time; `Settings.load(...)` does it when asked.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic import ValidationError as PydanticError

from bandit.config import RankerConfig
from bandit.errors import ValidationError
from service.eventlog.segments import Durability
from service.layout import DEFAULT_DATA_DIR, REPLICA_ID_PATTERN

ENV_PREFIX = "SHELFBANDIT_"
KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MIN_KEY_LENGTH = 16
# the environment variable through which `shelfbandit serve` hands settings to uvicorn workers
SETTINGS_ENV = "SHELFBANDIT_SETTINGS_JSON"


class Settings(BaseModel):
    """Everything the decision service, its logs, the joiner and the model store are configured by."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path = DEFAULT_DATA_DIR
    replica_id: str | None = Field(
        None, pattern=REPLICA_ID_PATTERN,
        description="this replica's name (1-64 of A-Z, a-z, 0-9, '_', '-'), for replicas on several hosts sharing the "
        "data directory: its logs live in <data_dir>/replicas/<replica_id>/; none: in the data directory itself",
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = True

    # decision and reward logs
    durability: Durability = Field(
        "group",
        description="group: a committer thread writes and fsyncs whatever requests queued, the requests "
        "wait for it; fsync: the committer writes and fsyncs each line on its own; write: write per request, no fsync (survives "
        "a crash of the process, not of the machine). In every mode a line is written before the answer.",
    )
    group_commit_ms: float = Field(
        0.0, ge=0.0, le=100.0,
        description="how long the committer gathers lines before each write + fsync; 0: none (the lines that queue "
        "during one write + fsync form the next group)",
    )
    segment_max_bytes: int = Field(64 * 2**20, ge=4096)
    segment_max_seconds: float = Field(3600.0, gt=0.0)

    # rewards and joiner
    reward_window_s: float = Field(600.0, gt=0.0, description="rewards later than this after the decision get 409")
    reward_aggregation: Literal["earliest", "sum"] = "earliest"
    default_reward: float = 0.0
    join_grace_s: float = Field(2.0, ge=0.0, description="wait after the window before joining (in-flight rewards)")
    join_interval_s: float = Field(5.0, gt=0.0)
    run_joiner: bool = Field(True, description="run the joiner inside the service (one worker holds its lock)")
    background_max_backoff_s: float = Field(
        30.0, gt=0.0, description="longest wait before a failed joiner pass or model/arms poll is retried"
    )
    event_memory_s: float | None = Field(
        None, gt=0.0, description="how long the reward endpoint remembers events; default 2 x reward window"
    )

    # model store
    model_poll_s: float = Field(1.0, gt=0.0)
    admin_token: SecretStr | None = None
    client_keys: dict[str, SecretStr | list[SecretStr]] = Field(
        default_factory=dict,
        description="key name -> secret (or several, for rotation) of the callers of /v1/rank and /v1/reward; "
        "empty, with no keys file: the endpoints are open",
    )
    client_keys_file: Path | None = Field(
        None, description="a JSON file of more client keys (same shape), re-read by every worker when it changes"
    )
    initial_ranker: dict = Field(default_factory=dict, description="RankerConfig fields of the first model")

    # input limits
    max_body_bytes: int = Field(1_000_000, ge=1024)
    max_slots: int = Field(50, ge=1)
    max_shelves: int = Field(200, ge=1, le=200)
    max_features: int = Field(64, ge=1, le=256)

    @property
    def remembered_s(self) -> float:
        return self.event_memory_s if self.event_memory_s is not None else 2.0 * self.reward_window_s

    @classmethod
    def load(
        cls,
        file: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        **flags: object,
    ) -> Settings:
        """Defaults < file < environment < flags (flags that are None are ignored)."""
        values: dict[str, object] = {}
        if file is not None:
            values.update(_read_file(Path(file)))
        env = os.environ if env is None else env
        for name in cls.model_fields:
            text = env.get(ENV_PREFIX + name.upper())
            if text is not None:
                values[name] = _env_value(text)
        values.update({k: v for k, v in flags.items() if v is not None})
        return cls.checked(values)

    @classmethod
    def checked(cls, values: Mapping[str, object]) -> Settings:
        """Validate, turning pydantic's error into the project's (field, rule, found) error."""
        try:
            settings = cls.model_validate(dict(values))
        except PydanticError as err:
            first = err.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "settings"
            raise ValidationError(f"settings.{field}", first["msg"]) from None
        try:
            RankerConfig.from_dict(settings.initial_ranker)
        except ValidationError as err:
            raise ValidationError(f"settings.initial_ranker.{err.field}", err.rule, err.found) from None
        settings.key_table()
        return settings

    @property
    def admin_secret(self) -> str | None:
        return self.admin_token.get_secret_value() if self.admin_token is not None else None

    @property
    def keys_open(self) -> bool:
        """No client key is configured now (in the settings or the keys file): /v1/rank and /v1/reward are open."""
        return not self.key_table() and not (self.client_keys_file and read_keys_file(self.client_keys_file, self.admin_secret))

    def key_table(self) -> dict[str, tuple[str, ...]]:
        """The settings' client keys, checked: key name -> its secrets."""
        return client_key_table(self.client_keys, "settings.client_keys", admin_token=self.admin_secret)

    def to_env(self) -> str:
        """Serialise for worker processes (secrets included: the variable stays in-process)."""
        data = self.model_dump(mode="json")
        data["admin_token"] = self.admin_secret
        data["client_keys"] = {name: list(secrets) for name, secrets in self.key_table().items()}
        return json.dumps(data)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        text = env.get(SETTINGS_ENV)
        return cls.checked(json.loads(text)) if text else cls.load(env=env)


def client_key_table(raw: object, field: str, *, admin_token: str | None = None) -> dict[str, tuple[str, ...]]:
    """Check a table of client keys (name -> a secret or a list of secrets; from the settings or
    the keys file) and return name -> secrets. A name is 1-64 of A-Z, a-z, 0-9, '.', '_', '-';
    a secret has at least MIN_KEY_LENGTH characters, belongs to one name and is not the admin token."""
    if not isinstance(raw, Mapping):
        raise ValidationError(field, "must be a table of key name -> secret or list of secrets", type(raw).__name__)
    table: dict[str, tuple[str, ...]] = {}
    owner: dict[str, str] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not KEY_NAME.match(name):
            raise ValidationError(field, "a key name is 1-64 of A-Z, a-z, 0-9, '.', '_', '-' (starting with a letter or digit)", name)
        values = value if isinstance(value, (list, tuple)) else [value]
        secrets = tuple(v.get_secret_value() if isinstance(v, SecretStr) else v for v in values)
        if not secrets:
            raise ValidationError(f"{field}.{name}", "needs at least one secret")
        for secret in secrets:
            if not isinstance(secret, str) or len(secret) < MIN_KEY_LENGTH or secret != secret.strip():
                raise ValidationError(f"{field}.{name}", f"a secret is a string of at least {MIN_KEY_LENGTH} characters without surrounding spaces")
            if owner.get(secret, name) != name or secret == admin_token:
                raise ValidationError(f"{field}.{name}", "a secret belongs to one key name and is not the admin token")
            owner[secret] = name
        table[name] = secrets
    return table


def read_keys_file(path: Path, admin_token: str | None) -> dict[str, tuple[str, ...]]:
    """The client keys of a keys file (a JSON object shaped like `client_keys`); a missing file holds none."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValidationError("client_keys_file", f"must be valid JSON ({err})", str(path)) from None
    return client_key_table(raw, "client_keys_file", admin_token=admin_token)


def _read_file(path: Path) -> dict:
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ValidationError("settings file", "is not UTF-8 text", str(path)) from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise ValidationError("settings file", f"must be valid {'TOML' if path.suffix == '.toml' else 'JSON'} ({err})", str(path)) from None
    if not isinstance(data, dict):
        raise ValidationError("settings file", "must hold a table of settings", str(path))
    return data


def _env_value(text: str) -> object:
    """Tables come as JSON objects; scalars stay strings (pydantic converts '8000' or 'true')."""
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise ValidationError("environment", "a table setting must be a JSON object", text[:40]) from None
    return text
