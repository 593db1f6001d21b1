"""What group-server nodes tell each other (over PostgreSQL NOTIFY, at most 8000 octets each): strict JSON
messages, each a dataclass with ``parse`` (raising :class:`~ptt.cluster.ClusterError`) and ``__bytes__``.

* :class:`JoinRequest` / :class:`JoinReply`: a member connected to node A joins a group node B serves; A forwards
  the join with the member's CSK sealed under the servers' shared data key (never in clear in the database), B
  installs the binding and answers;
* :class:`Left`: the member left the group at A, or (``group`` empty) its last session at A ended;
* :class:`CallEvent`: B's call event of a group (talking, idle, joined, dead) for the members connected elsewhere,
  with B's lease generation;
* :class:`GroupMoved`: a node adopted a group (new lease generation): members must rejoin there;
* :class:`GroupChanged`: a dispatcher's change committed at some node (members, name, a new GMK);
* :class:`StatusRequest` / :class:`StatusReply`: a dispatcher's live view of a group served elsewhere;
* :class:`UserPush`: a voice message notice or status, or a private call message, for a user connected to
  another node;
* :class:`CallForward`: a private call message from a callee connected here for the call's home node (where the
  caller is connected and the call is served).
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field
from typing import Any, ClassVar

from ptt import boundedjson
from ptt.cluster import ClusterError, check_node_name

MAX_MESSAGE = 7900
"""PostgreSQL's NOTIFY payload limit is 8000 octets."""
_LIMITS = boundedjson.JsonLimits(max_size=MAX_MESSAGE, max_depth=4, max_items=512, max_string=4096)


@dataclass(frozen=True)
class ClusterMessage:
    kind: ClassVar[str] = ""
    sender: str

    def __bytes__(self) -> bytes:
        data = json.dumps({"kind": self.kind, **asdict(self)}, separators=(",", ":")).encode()
        if len(data) > MAX_MESSAGE:
            raise ClusterError(f"{self.kind} message of {len(data)} octets: over the {MAX_MESSAGE} limit")
        return data


@dataclass(frozen=True)
class JoinRequest(ClusterMessage):
    kind: ClassVar[str] = "join"
    request: int
    group: str
    member: str
    ssrc: int
    binding_id: str
    """Base64, :data:`ptt.relaycore.BINDING_ID_LENGTH` octets."""
    csk: str
    """The member's CSK keys sealed under the data key (``server.cluster.seal_csk``), base64."""


@dataclass(frozen=True)
class JoinReply(ClusterMessage):
    kind: ClassVar[str] = "joined"
    request: int
    code: int
    """0 when joined, else the refusal's status (403, 409, …)."""
    message: str = ""
    generation: int = 0


@dataclass(frozen=True)
class Left(ClusterMessage):
    kind: ClassVar[str] = "left"
    member: str
    group: str = ""
    """Empty: every group the member joined through the sender (its last session there ended)."""


@dataclass(frozen=True)
class CallEvent(ClusterMessage):
    kind: ClassVar[str] = "event"
    group: str
    generation: int
    event: dict[str, Any] = field(default_factory=dict)
    """The control-channel message members get (``{"type": "event", "group", "kind", "uri"?}``)."""


@dataclass(frozen=True)
class GroupMoved(ClusterMessage):
    kind: ClassVar[str] = "moved"
    group: str
    generation: int


@dataclass(frozen=True)
class GroupChanged(ClusterMessage):
    kind: ClassVar[str] = "changed"
    group: str
    gmk_id: str = ""
    """Hex; empty when the change made no new key."""


@dataclass(frozen=True)
class StatusRequest(ClusterMessage):
    kind: ClassVar[str] = "status?"
    request: int
    group: str


@dataclass(frozen=True)
class StatusReply(ClusterMessage):
    kind: ClassVar[str] = "status"
    request: int
    status: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class UserPush(ClusterMessage):
    kind: ClassVar[str] = "push"
    member: str
    message: dict[str, Any] = field(default_factory=dict)
    """The control-channel message (``message_new`` / ``message_status``, or a private call's ``call_offer`` /
    ``call_connected`` / ``call_ended``) for the member's sessions there."""


@dataclass(frozen=True)
class CallForward(ClusterMessage):
    kind: ClassVar[str] = "callmsg"
    member: str
    """The callee, connected to the sender."""
    message: dict[str, Any] = field(default_factory=dict)
    """Its control-channel call message (``call_ringing``, ``call_accept``, ``call_reject``, ``call_end``)."""


_TYPES: dict[str, type[ClusterMessage]] = {
    cls.kind: cls
    for cls in (
        JoinRequest,
        JoinReply,
        Left,
        CallEvent,
        GroupMoved,
        GroupChanged,
        StatusRequest,
        StatusReply,
        UserPush,
        CallForward,
    )
}
_FIELD_TYPES: dict[str, type] = {"str": str, "int": int, "dict[str, Any]": dict}


def parse(data: bytes | str) -> ClusterMessage:
    """One message from another node; :class:`ClusterError` for anything malformed."""
    try:
        document = boundedjson.loads(data, _LIMITS)
    except ValueError as exc:
        raise ClusterError(f"not a cluster message: {exc}") from None
    if not isinstance(document, dict):
        raise ClusterError("a cluster message is a JSON object")
    cls = _TYPES.get(str(document.pop("kind", "")))
    if cls is None:
        raise ClusterError("unknown cluster message kind")
    fields = cls.__dataclass_fields__
    values: dict[str, Any] = {}
    for name, spec in fields.items():
        if name not in document:
            if spec.default is not MISSING or spec.default_factory is not MISSING:
                continue
            raise ClusterError(f"{cls.kind} message without {name}")
        value = document.pop(name)
        expected = _FIELD_TYPES[str(spec.type)]
        if type(value) is not expected:
            raise ClusterError(f"{cls.kind} message: {name} is not a {expected.__name__}")
        values[name] = value
    if document:
        raise ClusterError(f"{cls.kind} message with unknown fields {sorted(document)}")
    check_node_name(values["sender"])
    return cls(**values)
