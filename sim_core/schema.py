"""What every typed config of the project shares: a strict pydantic base, one-line error messages, YAML files and
dotted overrides. Imports no torch."""
from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from sim_core.errors import ConfigError


class Strict(BaseModel):
    """Unknown keys are errors; assignments are validated too."""
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def format_error(e: ValidationError) -> str:
    """The first error of a pydantic ValidationError as 'dotted.key: message (and N more)'."""
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return f"{loc}: {msg}{more}" if loc else f"{msg}{more}"


def read_yaml(path: str | Path, what: str = "config") -> dict:
    """A YAML file holding a mapping, as a dict; anything else (missing, not text, not YAML, a list) is one
    ConfigError line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not a text file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a mapping of sections, not a {type(data).__name__}")
    return data


def split_pair(item: str, what: str) -> tuple[str, str]:
    """'key=value' as (key, value); anything else is one ConfigError line naming ``what``."""
    if "=" not in item:
        raise ConfigError(f"{what} {item!r}: expected KEY=VALUE")
    key, value = item.split("=", 1)
    return key.strip(), value


def set_path(data: dict, dotted: str, value) -> None:
    """Apply an override ``a.b.c=value`` to a nested dict."""
    keys = dotted.split(".")
    cur = data
    for k in keys[:-1]:
        cur = cur.setdefault(k, {})
        if not isinstance(cur, dict):
            raise ConfigError(f"bad override {dotted!r}: {k} is not a section")
    cur[keys[-1]] = value
