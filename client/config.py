"""``client.toml``: what a field user would otherwise type on every command, so that ``ptt-client talk`` is enough.

  keystore = "~/.local/share/ptt/keystore"
  server_info = "~/.config/ptt/server.json"
  uri = "sip:alice@example.org"           # optional when the keystore holds one identity
  group = "sip:fire@groups.example.org"
  monitor = ["sip:ops@groups.example.org"]
  input_device = "USB"                    # part of the device's name
  output_device = "USB"
  ptt_key = "/dev/input/by-id/usb-foot-switch-event-kbd:KEY_B"   # or "space"

Found at ``--config PATH``, else ``$XDG_CONFIG_HOME/ptt/client.toml`` (``~/.config/ptt/client.toml``); a missing
default file is no error. Options on the command line win over the file. Relative paths are read from the file's
directory. A malformed file or an unknown setting is a clear error naming the line.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.errors import Exit, UserError

PATHS = ("keystore", "passphrase_file", "server_info", "log_file")
STRINGS = ("uri", "group", "input_device", "output_device", "ptt_key", "interface")
LISTS = ("monitor",)
SETTINGS = (*PATHS, *STRINGS, *LISTS)


def default_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "ptt" / "client.toml"


@dataclass(frozen=True)
class ClientConfig:
    path: Path | None
    values: dict[str, Any]

    def apply(self, args: Any) -> None:
        """Fill every option the command line left unset (None) and this command has from the file."""
        for name, value in self.values.items():
            if hasattr(args, name) and getattr(args, name) is None:
                setattr(args, name, value)


def load(explicit: str | None) -> ClientConfig:
    """The configuration from ``explicit`` (must exist) or the default place (may be absent)."""
    path = Path(explicit).expanduser() if explicit else default_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            raise UserError(f"no configuration file {path}", Exit.USAGE) from None
        return ClientConfig(None, {})
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the configuration {path}: {exc}", Exit.USAGE) from None
    return ClientConfig(path, parse(text, path))


def parse(text: str, path: Path) -> dict[str, Any]:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # its message names the line and column
        raise UserError(f"{path}: {exc}", Exit.USAGE) from None
    values: dict[str, Any] = {}
    for name, value in document.items():
        where = f"{path}:{_line_of(text, name)}"
        if name not in SETTINGS:
            raise UserError(f"{where}: unknown setting {name!r} (known: {', '.join(SETTINGS)})", Exit.USAGE)
        if name in LISTS:
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise UserError(f"{where}: {name} must be a list of strings", Exit.USAGE)
        elif not isinstance(value, str) or not value:
            raise UserError(f"{where}: {name} must be a non-empty string", Exit.USAGE)
        if name in PATHS:
            value = str((path.parent / Path(value).expanduser()).resolve())
        values[name] = value
    return values


def _line_of(text: str, name: str) -> int | str:
    pattern = re.compile(rf"^\s*[\"']?{re.escape(name)}[\"']?\s*=")
    for number, line in enumerate(text.splitlines(), 1):
        if pattern.match(line):
            return number
    return "?"
