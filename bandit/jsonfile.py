"""Reading a user's JSON file with errors that name the field and say what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

from bandit.errors import ValidationError


def read_json_file(path: str | Path, field: str) -> object:
    """The parsed content of `path`; a missing file or invalid JSON is a ValidationError on `field`."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ValidationError(field, "file does not exist", str(path)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        where = f", line {err.lineno}" if isinstance(err, json.JSONDecodeError) else ""
        raise ValidationError(field, f"is not valid JSON ({getattr(err, 'msg', err)}{where})", str(path)) from None
