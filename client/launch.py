"""What every running ``ptt-client`` command checks before it starts, each with a clear error: the keystore
(present, the right passphrase, enrolled), the identity (taken from the keystore when it holds one; one it holds
when given), keys for the current key period, and the server's client-info file."""

from __future__ import annotations

import json
import time
from pathlib import Path

from cryptography import x509

from client.errors import Exit, UserError
from client.keystore import Keystore, KeystoreError
from client.serverinfo import ServerInfo


def open_keystore(path: str | Path, passphrase: bytes) -> Keystore:
    """An existing, enrolled keystore opened with ``passphrase``."""
    where = Path(path).expanduser()
    if not where.exists():
        raise UserError(
            f"no keystore at {where}: provision one first ('ptt-client --keystore {where} provision --enrolment "
            "ENROLMENT.json --user NAME --uri URI') or give --keystore",
            Exit.KEYSTORE,
        )
    try:
        keystore = Keystore.open(where, passphrase)
    except KeystoreError as exc:
        text = str(exc)
        if "wrong passphrase" in text:
            text = f"wrong passphrase for the keystore {where} (or the file was altered)"
        raise UserError(text, Exit.KEYSTORE) from None
    if keystore.enrolment is None:
        raise UserError(f"the keystore {where} is not enrolled with a KMS: run 'ptt-client provision'", Exit.KEYSTORE)
    return keystore


def identity(keystore: Keystore, uri: str | None) -> str:
    """``uri`` if the keystore holds keys for it; without one, the keystore's only identity."""
    held = keystore.identities()
    if uri is None:
        if len(held) == 1:
            return held[0]
        if not held:
            raise UserError(f"the keystore {keystore.path} holds no keys: run 'ptt-client provision'", Exit.KEYSTORE)
        raise UserError(
            f"the keystore {keystore.path} holds keys for {', '.join(held)}: say which with --uri (or uri in "
            "client.toml)",
            Exit.USAGE,
        )
    if uri not in held:
        holds = f"keys for {', '.join(held)}" if held else "no keys"
        raise UserError(f"the keystore {keystore.path} holds {holds}, not for {uri}", Exit.KEYSTORE)
    return uri


def require_current_keys(keystore: Keystore, uri: str, now: float | None = None) -> None:
    """Keys of the current key period for ``uri`` (the login and every signature need them)."""
    if keystore.current_keys(uri, time.time() if now is None else now) is None:
        periods = ", ".join(str(p) for p in keystore.periods(uri)) or "none"
        raise UserError(
            f"no keys for {uri} in the current key period (held: {periods}): run 'ptt-client provision'",
            Exit.KEYSTORE,
        )


def server_info(path: str | Path | None) -> ServerInfo:
    """The server's client-info file (from the operator's ``ptt-server client-info``)."""
    if path is None:
        raise UserError(
            "no server info: give --server-info FILE (the operator's 'ptt-server client-info' output) or "
            "server_info in client.toml",
            Exit.SERVER_INFO,
        )
    where = Path(path).expanduser()
    try:
        text = where.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read the server info {where}: {exc.strerror or exc}", Exit.SERVER_INFO) from None
    try:
        info = ServerInfo.from_json(text)
        for _, _, trust in info.endpoints():
            if trust is not None:
                x509.load_pem_x509_certificates(trust)  # a broken certificate: now, not at the first connection
        return info
    except json.JSONDecodeError as exc:
        raise UserError(f"{where} is not JSON (line {exc.lineno}: {exc.msg})", Exit.SERVER_INFO) from None
    except KeyError as exc:
        raise UserError(
            f"{where} is no server info ({exc} missing): it comes from the operator's 'ptt-server client-info'",
            Exit.SERVER_INFO,
        ) from None
    except (ValueError, TypeError, AttributeError) as exc:
        raise UserError(f"{where} is no server info: {exc}", Exit.SERVER_INFO) from None
