"""JSON from untrusted peers, bounded before it is parsed: nesting depth, sizes and counts (pure, no I/O).

``json.loads`` recurses once per nested array or object, so 50 000 ``[`` in a row raise ``RecursionError`` (not a
``ValueError``) out of whatever parsed it. :func:`loads` first runs a linear scan of the text that tokenises it
(strings, numbers, brackets) without building anything and refuses, with :class:`JsonLimitError`, a document
whose depth, container sizes, string or number lengths or total size exceed :class:`JsonLimits`; only then does
``json.loads`` build the value. Also refused: ``NaN``/``Infinity`` (not JSON; they do not survive a round trip),
duplicate keys in an object (which one wins differs between parsers), lone surrogates (``"\\ud800"``: no UTF-8
encoding, so they would break whoever writes the value out later) and anything but UTF-8 when given bytes.

Every refusal is a :class:`JsonLimitError` (a ``ValueError``) with a precise message; callers translate it into
their own error (``ControlProtocolError``, the dispatcher API's 400).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_LIMITS", "JsonLimitError", "JsonLimits", "loads"]


class JsonLimitError(ValueError):
    """Text that is not JSON, or JSON beyond the limits."""


@dataclass(frozen=True)
class JsonLimits:
    max_size: int = 256 * 1024  # characters of the whole document
    max_depth: int = 32  # nested arrays/objects (a scalar document has depth 0)
    max_items: int = 10_000  # elements of one array or members of one object
    max_string: int = 64 * 1024  # characters of one string or key, as written (escapes count in full)
    max_number: int = 64  # characters of one number literal


DEFAULT_LIMITS = JsonLimits()

# One token per match: a string (escapes kept whole), a structural character, a number-ish run, a literal-ish
# run, whitespace, or any single other character (which json.loads will refuse after the scan).
_TOKEN = re.compile(
    r'"[^"\\]*(?:\\.[^"\\]*)*"'  # a complete string
    r'|"'  # an unterminated string
    r"|[\[\]{},:]"
    r"|[-+0-9.eE]+"
    r"|[A-Za-z_]+"
    r"|[ \t\n\r]+"
    r"|.",
    re.DOTALL,
)
_OPEN = frozenset("[{")
_CLOSE = frozenset("]}")


def _scan(text: str, limits: JsonLimits) -> None:
    """Depth, container sizes and token lengths, in one pass that builds nothing."""
    if len(text) > limits.max_size:
        raise JsonLimitError(f"JSON text of {len(text)} characters exceeds {limits.max_size}")
    depth = 0
    counts: list[int] = []  # per open container: the commas seen (items - 1, for a non-empty one)
    for match in _TOKEN.finditer(text):
        token = match.group()
        first = token[0]
        if first == '"':
            if len(token) == 1:  # scanning on would make every later quote rescan the rest: quadratic
                raise JsonLimitError(f"unterminated JSON string at character {match.start()}")
            if len(token) - 2 > limits.max_string:
                raise JsonLimitError(
                    f"JSON string at character {match.start()} longer than {limits.max_string} characters"
                )
        elif first in _OPEN:
            depth += 1
            if depth > limits.max_depth:
                raise JsonLimitError(f"JSON nested deeper than {limits.max_depth} levels")
            counts.append(0)
        elif first in _CLOSE:
            if depth == 0:
                raise JsonLimitError(f"unbalanced {first!r} at character {match.start()}")
            depth -= 1
            counts.pop()
        elif first == ",":
            if counts:
                counts[-1] += 1
                if counts[-1] >= limits.max_items:
                    raise JsonLimitError(f"JSON array or object with more than {limits.max_items} items")
        elif first in "-+0123456789.eE" and len(token) > limits.max_number:
            raise JsonLimitError(f"JSON number at character {match.start()} longer than {limits.max_number}")


def _no_constants(name: str) -> Any:
    raise JsonLimitError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonLimitError(f"JSON number {text[:32]} overflows a double")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise JsonLimitError(f"duplicate key {key[:64]!r} in a JSON object")
            seen.add(key)
    return document


def _check_strings(value: Any) -> None:
    """Refuse lone surrogates anywhere (iterative: the depth is bounded, but no recursion is needed)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            strings = [item]
        elif isinstance(item, dict):
            strings = list(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
            continue
        else:
            continue
        for text in strings:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise JsonLimitError(f"JSON string {text[:32]!r} holds a lone surrogate") from None


def loads(data: str | bytes | bytearray | memoryview, limits: JsonLimits = DEFAULT_LIMITS) -> Any:
    """Parse one JSON document within ``limits``; raises only :class:`JsonLimitError`."""
    if isinstance(data, bytes | bytearray | memoryview):
        if len(data) > limits.max_size * 4:
            raise JsonLimitError(f"JSON text of {len(data)} octets exceeds {limits.max_size} characters")
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonLimitError(f"JSON text is not UTF-8 (octet {exc.start})") from None
    elif isinstance(data, str):
        text = data
    else:
        raise JsonLimitError(f"JSON text must be str or bytes, not {type(data).__name__}")
    _scan(text, limits)
    try:
        value = json.loads(text, parse_float=_finite, parse_constant=_no_constants, object_pairs_hook=_unique_keys)
    except JsonLimitError:
        raise
    except RecursionError:  # not reachable within the scanned depth; kept so nothing else can escape
        raise JsonLimitError("JSON nested too deeply") from None
    except ValueError as exc:  # json.JSONDecodeError, and int() beyond sys.get_int_max_str_digits
        raise JsonLimitError(f"not valid JSON: {exc}") from None
    _check_strings(value)
    return value
