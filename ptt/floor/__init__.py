"""TS 24.380 floor control: the MCPT RTCP APP messages (``messages``) and the floor control server (``arbiter``)."""

from __future__ import annotations

from ptt.floor.messages import (
    ACK_CAPABLE_SUBTYPES,
    QUEUE_POSITION_NOT_QUEUED,
    QUEUE_POSITION_UNKNOWN,
    DenyCause,
    FieldId,
    FloorIndicator,
    FloorMessage,
    FloorMessageError,
    QueueInfo,
    RejectCause,
    RevokeCause,
    Source,
    Subtype,
    is_rtcp,
    parse_rtcp,
)

__all__ = [
    "ACK_CAPABLE_SUBTYPES",
    "QUEUE_POSITION_NOT_QUEUED",
    "QUEUE_POSITION_UNKNOWN",
    "DenyCause",
    "FieldId",
    "FloorIndicator",
    "FloorMessage",
    "FloorMessageError",
    "QueueInfo",
    "RejectCause",
    "RevokeCause",
    "Source",
    "Subtype",
    "is_rtcp",
    "parse_rtcp",
]
