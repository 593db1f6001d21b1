"""The group server's data key: a 32-octet 0600 file, and the associated data GMKs are sealed with under it.

A GMK is never stored in clear: it is sealed with AES-256-GCM under the data key, bound to its group URI, GMK-ID
and RAND as associated data, so a sealed key cannot be moved to another group or row unnoticed.
"""

from __future__ import annotations

import os
from pathlib import Path

from server.groups.records import StoreError
from server.kms.secrets import SecretsFileError, check_private_mode, write_private_file

__all__ = ["CHECK_AD", "CHECK_PLAINTEXT", "DATA_KEY_LENGTH", "gmk_ad", "make_data_key", "read_data_key"]

DATA_KEY_LENGTH = 32
_GMK_AD = b"ptt-group-gmk|"
CHECK_AD = b"ptt-group-data-key-check"
CHECK_PLAINTEXT = b"ptt group store data key"


def gmk_ad(group: str, gmk_id: bytes, rand: bytes) -> bytes:
    """The associated data a group's GMK is sealed with."""
    return _GMK_AD + group.encode("utf-8") + b"|" + gmk_id + b"|" + rand


def make_data_key(path: Path) -> bytes:
    """Create a fresh 32-octet data key file (mode 0600); refuses to replace an existing one."""
    path = Path(path)
    if path.exists():
        raise StoreError(f"{path} already exists; a new data key would make the stored group keys unreadable")
    key = os.urandom(DATA_KEY_LENGTH)
    write_private_file(path, key)
    return key


def read_data_key(path: Path) -> bytes:
    """The 32 octets of a data key file; refuses a file the group or others may read."""
    path = Path(path)
    try:
        info = path.stat()
        key = path.read_bytes()
        check_private_mode(path, info.st_mode)
    except SecretsFileError as exc:
        raise StoreError(str(exc)) from None
    except OSError as exc:
        raise StoreError(f"cannot read the data key {path}: {exc.strerror or exc}") from None
    if len(key) != DATA_KEY_LENGTH:
        raise StoreError(f"{path} holds {len(key)} octets; a data key is exactly {DATA_KEY_LENGTH}")
    return key
