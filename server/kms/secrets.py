"""The master secrets file (KSAK and z) and private files in general.

The file is JSON with a format name and version. Its public keys (KPAK, Z) are always in clear so that the
domain certificate can be exported without the passphrase; the secrets are either in clear (hex) or encrypted:
scrypt(passphrase) → AES-256-GCM, with every other field of the file as associated data, so neither the
ciphertext nor the header nor the public keys can be changed unnoticed. Reading recomputes KPAK and Z from the
secrets and checks them against the file.

Private files are written atomically (temporary file, fsync, rename, fsync of the directory) with mode 0600,
and a secrets file whose mode gives the group or others any access is refused.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any

from ptt.crypto import InvalidKey
from ptt.crypto.kms import MasterSecrets, generate_master_secrets
from ptt.sealed import SealError, seal_fields, unseal_fields

__all__ = [
    "FORMAT",
    "SCRYPT_N",
    "SecretsFileError",
    "check_private_mode",
    "is_encrypted",
    "read_master_secrets",
    "read_public_keys",
    "write_master_secrets",
    "write_private_file",
]

FORMAT = "ptt-kms-master-secrets"
VERSION = 1
_PLAIN = "none"
_ENCRYPTED = "scrypt-aes-256-gcm"

SCRYPT_N = 2**15
"""scrypt cost for new files (r = 8, p = 1; ptt.sealed). A module constant so tests may lower it."""


class SecretsFileError(Exception):
    """The secrets file is missing, unreadable, too widely readable, malformed, or cannot be decrypted."""


# --- private files ---


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600 (readers see the old or the new file, never a part)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # the umask can only narrow the mode, but a created file must be exactly 0600
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not every platform lets a directory be opened, hence the guard.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_private_mode(path: Path, mode: int) -> None:
    """Raise ``SecretsFileError`` if ``mode`` gives the group or others any access to ``path``."""
    if stat.S_IMODE(mode) & 0o077:
        raise SecretsFileError(
            f"{path} has mode {stat.S_IMODE(mode):04o}, which lets other users read it; run 'chmod 600 {path}'"
        )


def _read_private(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise SecretsFileError(f"no master secrets file at {path}") from None
    except OSError as e:
        raise SecretsFileError(f"cannot open {path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise SecretsFileError(f"{path} is not a regular file")
        check_private_mode(path, info.st_mode)
        return f.read()


# --- the master secrets file ---


def _canonical(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("ascii")


def write_master_secrets(path: Path, master: MasterSecrets, passphrase: bytes | None = None) -> None:
    """Store ``master`` at ``path`` (0600, atomically), encrypted under ``passphrase`` when one is given."""
    header: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "kpak": master.kpak.hex(),
        "z_public": master.z_public.hex(),
    }
    secret_fields = {"ksak": master.ksak.hex(), "z": master.z_secret.hex()}
    if passphrase is None:
        content = {**header, "encryption": _PLAIN, **secret_fields}
    else:
        if not passphrase:
            raise SecretsFileError("the passphrase must not be empty")
        header["encryption"] = _ENCRYPTED
        sealed = seal_fields(_canonical(secret_fields), passphrase, associated_data=_canonical(header), cost=SCRYPT_N)
        content = {**header, **sealed}
    write_private_file(path, json.dumps(content, indent=1).encode("ascii") + b"\n")


def _load(path: Path) -> dict[str, Any]:
    raw = _read_private(path)
    try:
        content = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise SecretsFileError(f"{path} is not a master secrets file (not JSON)") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise SecretsFileError(f"{path} is not a master secrets file")
    if content.get("version") != VERSION:
        raise SecretsFileError(f"{path} has format version {content.get('version')!r}; this KMS reads {VERSION}")
    if content.get("encryption") not in (_PLAIN, _ENCRYPTED):
        raise SecretsFileError(f"{path} uses an unknown encryption {content.get('encryption')!r}")
    return content


def _hex_field(content: dict[str, Any], name: str, path: Path) -> bytes:
    value = content.get(name)
    if not isinstance(value, str):
        raise SecretsFileError(f"{path}: field {name!r} is missing")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise SecretsFileError(f"{path}: field {name!r} is not hex") from None


def is_encrypted(path: Path) -> bool:
    """Whether the secrets file at ``path`` needs a passphrase."""
    return bool(_load(path)["encryption"] == _ENCRYPTED)


def read_public_keys(path: Path) -> tuple[bytes, bytes]:
    """(KPAK, Z) from the file, without the passphrase. Not checked against the secrets: that needs them."""
    content = _load(path)
    return _hex_field(content, "kpak", path), _hex_field(content, "z_public", path)


def _decrypt(content: dict[str, Any], passphrase: bytes, path: Path) -> dict[str, Any]:
    header = {k: v for k, v in content.items() if k not in ("kdf", "nonce", "ciphertext")}
    try:
        plaintext = unseal_fields(content, passphrase, associated_data=_canonical(header))
    except SealError as exc:
        if "wrong passphrase" in str(exc):
            raise SecretsFileError(f"cannot decrypt {path}: wrong passphrase, or the file was modified") from None
        raise SecretsFileError(f"{path}: {exc}") from None
    try:
        inner = json.loads(plaintext)
    except ValueError:
        inner = None
    if not isinstance(inner, dict):
        raise SecretsFileError(f"{path}: malformed encrypted content")
    return inner


def read_master_secrets(path: Path, passphrase: bytes | None = None) -> MasterSecrets:
    """Read and check the master secrets; ``passphrase`` must be given exactly when the file is encrypted."""
    path = Path(path)
    content = _load(path)
    if content["encryption"] == _ENCRYPTED:
        if passphrase is None:
            raise SecretsFileError(f"{path} is encrypted: a passphrase is needed")
        secret_fields = _decrypt(content, passphrase, path)
    else:
        if passphrase is not None:
            # Refusing catches a configuration that believes the secrets are protected when they are not.
            raise SecretsFileError(f"{path} is not encrypted, but a passphrase was given")
        secret_fields = content
    ksak = _hex_field(secret_fields, "ksak", path)
    z = _hex_field(secret_fields, "z", path)
    try:
        master = generate_master_secrets(ksak=int.from_bytes(ksak, "big"), z=int.from_bytes(z, "big"))
    except InvalidKey:
        raise SecretsFileError(f"{path}: a master secret is out of range") from None
    if master.kpak != _hex_field(content, "kpak", path) or master.z_public != _hex_field(content, "z_public", path):
        raise SecretsFileError(f"{path}: the public keys do not match the secrets")
    return master
