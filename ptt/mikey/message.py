"""A whole MIKEY message: the HDR and the chain of payloads after it.

``MikeyMessage.parse`` walks the next-payload chain with strict bounds (size cap, no trailing octets, SIGN
last) and ``bytes(message)`` re-encodes byte-identically, so the octets covered by the signature can be
recomputed from the parsed form. ``MikeyMessage.build`` chains the ``next_payload`` fields of new messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

from ptt.mikey.errors import MalformedMessage
from ptt.mikey.payloads import (
    ECCSI_SIGNATURE_LEN,
    Hdr,
    Idr,
    Payload,
    PayloadType,
    Sign,
    SignatureType,
    parse_payload,
)

MAX_MESSAGE_LEN = 64 * 1024
# The chain is walked forward through the buffer, so it cannot revisit a payload; the caps bound the work anyway.
MAX_PAYLOADS = 128  # an I_MESSAGE has about ten

P = TypeVar("P", bound=Payload)


@dataclass
class MikeyMessage:
    """HDR plus the payloads that follow it, in wire order (SIGN, if present, last)."""

    hdr: Hdr
    payloads: list[Payload] = field(default_factory=list)

    # --- wire format ---

    @classmethod
    def parse(cls, data: bytes) -> MikeyMessage:
        """Parse a complete message; any defect raises MalformedMessage."""
        data = bytes(data)
        if len(data) > MAX_MESSAGE_LEN:
            raise MalformedMessage(f"message of {len(data)} octets exceeds the {MAX_MESSAGE_LEN}-octet limit")
        hdr, pos = Hdr.parse(data, 0)
        payloads: list[Payload] = []
        next_type = hdr.next_payload
        while next_type != PayloadType.LAST:
            if len(payloads) >= MAX_PAYLOADS:
                raise MalformedMessage(f"more than {MAX_PAYLOADS} payloads")
            if pos >= len(data):
                raise MalformedMessage(f"payload chain ends early: payload type {next_type} expected at offset {pos}")
            payload, pos = parse_payload(next_type, data, pos)
            payloads.append(payload)
            if isinstance(payload, Sign) and pos != len(data):
                raise MalformedMessage(f"SIGN payload is not last: {len(data) - pos} octet(s) follow it")
            next_type = payload.next_type
        if pos != len(data):
            raise MalformedMessage(f"{len(data) - pos} trailing octet(s) after the last payload")
        return cls(hdr, payloads)

    def __bytes__(self) -> bytes:
        self._check_chain()
        return bytes(self.hdr) + b"".join(map(bytes, self.payloads))

    def _check_chain(self) -> None:
        # An inconsistent chain would encode to octets that do not parse back; catch it at the source.
        links = [self.hdr.next_payload, *(p.next_type for p in self.payloads)]
        types = [p.TYPE for p in self.payloads] + [PayloadType.LAST]
        for i, (link, actual) in enumerate(zip(links, types, strict=True)):
            if link != actual:
                where = "HDR" if i == 0 else type(self.payloads[i - 1]).__name__
                raise ValueError(f"{where} says next payload {link} but {actual} follows (use MikeyMessage.build)")
        if any(isinstance(p, Sign) for p in self.payloads[:-1]):
            raise ValueError("SIGN must be the last payload")

    @classmethod
    def build(cls, hdr: Hdr, payloads: list[Payload]) -> MikeyMessage:
        """A message with every ``next_payload`` field set from the payload that follows."""
        if any(isinstance(p, Sign) for p in payloads[:-1]):
            raise ValueError("SIGN must be the last payload")
        types = [p.TYPE for p in payloads] + [PayloadType.LAST]
        chained = [p.with_next(t) for p, t in zip(payloads, types[1:], strict=True)]
        return cls(hdr.with_next(types[0]), chained)

    # --- signature ---

    @property
    def sign(self) -> Sign | None:
        last = self.payloads[-1] if self.payloads else None
        return last if isinstance(last, Sign) else None

    def signed_octets(self) -> bytes:
        """Octets covered by the signature: everything before the signature itself, SIGN header included."""
        sign = self.sign
        if sign is None:
            raise MalformedMessage("message has no SIGN payload")
        encoded = bytes(self)
        return encoded[: len(encoded) - len(sign.signature)]

    def unsigned(self) -> MikeyMessage:
        """The message without its SIGN payload (chain re-linked)."""
        return MikeyMessage.build(self.hdr, [p for p in self.payloads if not isinstance(p, Sign)])

    def octets_to_sign(self, sig_type: int = SignatureType.ECCSI, signature_len: int = ECCSI_SIGNATURE_LEN) -> bytes:
        """What a signer signs to produce ``with_signature(...)``'s SIGN (any existing SIGN is dropped)."""
        return self.with_signature(bytes(signature_len), sig_type).signed_octets()

    def with_signature(self, signature: bytes, sig_type: int = SignatureType.ECCSI) -> MikeyMessage:
        """A copy whose SIGN payload (replacing any existing one) carries ``signature``."""
        base = self.unsigned()
        return MikeyMessage.build(base.hdr, [*base.payloads, Sign(sig_type, signature)])

    # --- lookup ---

    def find(self, kind: type[P]) -> P | None:
        """The first payload of class ``kind``, if any."""
        return next((p for p in self.payloads if isinstance(p, kind)), None)

    def find_all(self, kind: type[P]) -> list[P]:
        return [p for p in self.payloads if isinstance(p, kind)]

    def idrs(self, role: int | None = None) -> list[Idr]:
        """IDR payloads, optionally only those with ``role``."""
        return [p for p in self.find_all(Idr) if role is None or p.role == role]

    def idr(self, role: int) -> Idr | None:
        """The first IDR with ``role``, if any."""
        found = self.idrs(role)
        return found[0] if found else None


def signed_portion(data: bytes) -> bytes:
    """The octets a SIGN payload covers in the raw message ``data`` (parsed and checked first)."""
    return MikeyMessage.parse(data).signed_octets()


__all__ = ["MAX_MESSAGE_LEN", "MAX_PAYLOADS", "MikeyMessage", "signed_portion"]
