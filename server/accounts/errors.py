"""The refusals of password accounts, shared by both stores and both HTTP front ends: ``LoginFailed`` (401) and
``LockedOut`` (429 with ``retry_after_header`` and a message saying which rule refused)."""

from __future__ import annotations

import math


class AccountError(Exception):
    """An account operation or a login was refused. Each store's own ``AccountError`` derives from it too."""


class LoginFailed(AccountError):
    """Wrong username or password (which of the two is deliberately not said), or a disabled account."""


_REFUSALS = {
    "source": "too many failed logins to this account from your address: it is locked for logins from there",
    "account": "too many failed logins to this account from elsewhere: logins from new addresses are slowed",
    "global": "too many failed logins on this server: logins from new addresses are slowed",
    "address": "too many failed logins from your address",
}


class LockedOut(AccountError):
    """Refused without checking the password: try again after ``retry_after`` seconds. ``scope`` names the rule:
    'source' (this account from this address is locked), 'account' (the account's failures from elsewhere slow
    new sources), 'global' (the server's failure budget is spent) or 'address' (this address failed too often)."""

    def __init__(self, retry_after: float, scope: str = "source") -> None:
        super().__init__(f"{_REFUSALS[scope]}; try again in {math.ceil(retry_after)} s")
        self.retry_after = retry_after
        self.scope = scope


class MalformedHash(ValueError):
    """A stored password hash is not one of ours, or its parameters are out of range (a damaged database)."""


def retry_after_header(seconds: float) -> str:
    """The Retry-After value for a refusal: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
