"""Structured logs: one JSON object per line on stderr.

Log records carry ids, versions, counts and timings only: never feature values, request
bodies or tokens. Fields go in `extra={"fields": {...}}`.
"""

from __future__ import annotations

import json
import logging

import orjson

LOGGER = "shelfbandit.service"


class JsonFormatter(logging.Formatter):
    """{"ts", "level", "logger", "msg", **fields}; exceptions as their type and message only."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", None) or {})
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            entry["error"] = f"{type(error).__name__}: {error}"
        try:  # orjson: a fifth of json's cost, on every request's access line
            return orjson.dumps(entry, default=str).decode()
        except orjson.JSONEncodeError:  # what orjson refuses (an integer beyond 64 bits) json writes
            return json.dumps(entry, default=str)


def log_config(level: str) -> dict:
    """A logging dictConfig for the service and uvicorn (pass it to uvicorn as `log_config`)."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    quiet = {"handlers": ["json"], "level": level.upper(), "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {"json": handler},
        "loggers": {
            "shelfbandit": quiet,
            "uvicorn": quiet,
            "uvicorn.error": {**quiet, "propagate": False},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }


def get_logger(name: str = LOGGER) -> logging.Logger:
    return logging.getLogger(name)
