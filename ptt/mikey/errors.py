"""Errors raised by the MIKEY codec and by the I_MESSAGE processing built on it.

All derive from ``MikeyError`` (a ``ValueError``), so a caller handling untrusted input can catch one class;
the subclasses let a receiver report *why* a message was refused.
"""

from __future__ import annotations


class MikeyError(ValueError):
    """Base class of every MIKEY error."""


class MalformedMessage(MikeyError):
    """Not a well-formed MIKEY message: truncated, bad length, unknown payload, trailing data..."""


class BadSignature(MikeyError):
    """The SIGN payload does not verify for the claimed initiator."""


class WrongRecipient(MikeyError):
    """The message is addressed (responder IDR / UID) to someone else."""


class UnexpectedInitiator(MikeyError):
    """The initiator is not one of the identities allowed to send this key (e.g. a GMK not from the GMS)."""


class DecryptionFailed(MikeyError):
    """The SAKKE payload does not decapsulate with our RSK."""


class UnknownKms(MikeyError):
    """The message names a KMS whose public keys we do not hold."""


class OutsideTimeWindow(MikeyError):
    """The T payload is too far from the receiver's clock."""


class Replayed(MikeyError):
    """The message (same T and RAND) was already accepted."""


class KeyParametersError(MikeyError):
    """The 3GPP key parameters (GENERAL-EXT type 7) are malformed or fail authentication."""


__all__ = [
    "BadSignature",
    "DecryptionFailed",
    "KeyParametersError",
    "MalformedMessage",
    "MikeyError",
    "OutsideTimeWindow",
    "Replayed",
    "UnexpectedInitiator",
    "UnknownKms",
    "WrongRecipient",
]
