"""Building and receiving MIKEY-SAKKE I_MESSAGEs as 3GPP TS 33.180 uses them (GMK, PCK, CSK, ...).

Layout (TS 33.180 E.2 / E.6, as other vendors send it): HDR · T · RAND · IDR(8 initiator UID) · IDR(9 responder
UID) · IDR(6 initiator's KMS) · IDR(7 responder's KMS) · SP · SAKKE · GENERAL-EXT(7 key parameters) · SIGN.
Building signs last; receiving is one call that checks everything before returning the key.
"""

from __future__ import annotations

from ptt.mikey.identity import IdentityKeys, KmsDomain, SigningKeys
from ptt.mikey.imessage_build import (
    DEFAULT_SECURITY_POLICY,
    KEY_LENGTH,
    KEY_PARAMETERS_EXT,
    RAND_LENGTH,
    build_i_message,
)
from ptt.mikey.imessage_receive import (
    DEFAULT_MAX_AGE,
    DEFAULT_WINDOW,
    MAX_CLOCK_SKEW,
    ReceivedKey,
    check_time,
    receive_i_message,
    replay_key,
)
from ptt.mikey.replay import ReplayCache

__all__ = [
    "DEFAULT_MAX_AGE",
    "DEFAULT_SECURITY_POLICY",
    "DEFAULT_WINDOW",
    "KEY_LENGTH",
    "KEY_PARAMETERS_EXT",
    "MAX_CLOCK_SKEW",
    "RAND_LENGTH",
    "IdentityKeys",
    "KmsDomain",
    "ReceivedKey",
    "ReplayCache",
    "SigningKeys",
    "build_i_message",
    "check_time",
    "receive_i_message",
    "replay_key",
]
