"""The hardened XML parser of the TS 33.180 Annex D KMS interface (no DTD, no entities, no network, bounded size)
and the typed element readers and writers the model↔XML mapping (:mod:`ptt.kmsformat.xml`) is written with.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from lxml import etree

from ptt.kmsformat.model import (
    NAMESPACE,
    KmsFormatError,
    MalformedKmsXml,
    as_utc,
)

MAX_XML_SIZE = 256 * 1024
"""Largest document accepted (a key provisioning response with two key sets is about 3 KiB)."""
MAX_DEPTH = 24
"""Deepest element nesting (a signed response is 7 deep: SignedKmsResponse/ds:Signature/SignedInfo/Reference/
Transforms/Transform, KmsResponse/KmsMessage/KmsKeyProv/KmsKeySet/...). libxml2 alone stops at 256."""
MAX_ELEMENTS = 10_000
"""Most element, comment and processing-instruction nodes (a certificate cache of ~150 certificates)."""
MAX_TEXT = 16 * 1024
"""Longest text or tail of one node (a SAKKE key is 514 hex digits, the signing certificate ~1 KiB of base64)."""
MAX_ATTRIBUTES = 16
"""Most attributes (and, separately, namespace declarations) on one element."""
MAX_ATTRIBUTE_VALUE = 1024
"""Longest attribute value or namespace name (algorithm URIs are ~60 characters)."""

XSI_NAMESPACE = "http://www.w3.org/2001/XMLSchema-instance"
DS_NAMESPACE = "http://www.w3.org/2000/09/xmldsig#"

XSI_TYPE = f"{{{XSI_NAMESPACE}}}type"

_DTD_RE = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
INT_RE = re.compile(r"[0-9]{1,20}\Z")
_HEX_RE = re.compile(r"(?:[0-9A-Fa-f]{2})*\Z")
_TIME_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,12}))?(Z|[+-]\d{2}:\d{2})?\Z",
)

Element = Any  # lxml ships no type information; elements are lxml.etree._Element


def qualified(name: str) -> str:
    return f"{{{NAMESPACE}}}{name}"


def local_name(element: Element) -> str:
    return str(etree.QName(element).localname)


@contextmanager
def as_malformed() -> Iterator[None]:
    """Model-level validation failures (wrong key length...) of parsed input are malformed XML."""
    try:
        yield
    except MalformedKmsXml:
        raise
    except (KmsFormatError, ValueError, OverflowError) as exc:
        raise MalformedKmsXml(str(exc)) from exc


# --- Hardened parsing ---


def parse_document(data: bytes) -> Element:
    """Parse untrusted XML: bounded size, no DOCTYPE (so no entities, billion laughs or external entities), no network.

    Returns the root element; raises ``MalformedKmsXml``.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedKmsXml("XML input must be bytes")
    data = bytes(data)
    if len(data) > MAX_XML_SIZE:
        raise MalformedKmsXml(f"XML document larger than {MAX_XML_SIZE} octets")
    if _DTD_RE.search(data):
        raise MalformedKmsXml("XML document with a DOCTYPE or entity declaration")
    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_pis=True,
    )
    try:
        root = etree.fromstring(data, parser=parser)
    except (etree.XMLSyntaxError, ValueError) as exc:
        raise MalformedKmsXml(f"not well-formed XML: {exc}") from exc
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise MalformedKmsXml("XML document with a DOCTYPE")
    if any(True for _ in root.iter(etree.Entity)):
        raise MalformedKmsXml("XML document with entity references")
    check_bounds(root)
    return root


def check_bounds(root: Element) -> None:
    """Depth, node count, text and attribute sizes of a parsed tree within the MAX_* limits (one linear walk)."""
    depth = 0
    nodes = 0
    for event, node in etree.iterwalk(root, events=("start", "end", "comment", "pi")):
        if event == "end":
            depth -= 1
            continue
        nodes += 1
        if nodes > MAX_ELEMENTS:
            raise MalformedKmsXml(f"XML document with more than {MAX_ELEMENTS} elements")
        if len(node.text or "") > MAX_TEXT or len(node.tail or "") > MAX_TEXT:
            raise MalformedKmsXml(f"XML text longer than {MAX_TEXT} characters (in or after {node.tag!r:.80})")
        if event != "start":
            continue
        depth += 1
        if depth > MAX_DEPTH:
            raise MalformedKmsXml(f"XML elements nested deeper than {MAX_DEPTH} levels")
        attributes = node.attrib
        if len(attributes) > MAX_ATTRIBUTES:
            raise MalformedKmsXml(f"{local_name(node)}: more than {MAX_ATTRIBUTES} attributes")
        if any(len(v) > MAX_ATTRIBUTE_VALUE or len(k) > MAX_ATTRIBUTE_VALUE for k, v in attributes.items()):
            raise MalformedKmsXml(f"{local_name(node)}: attribute longer than {MAX_ATTRIBUTE_VALUE} characters")
        parent = node.getparent()
        declared = len(node.nsmap) - (0 if parent is None else len(parent.nsmap))
        if declared > MAX_ATTRIBUTES or any(len(uri) > MAX_ATTRIBUTE_VALUE for uri in node.nsmap.values()):
            raise MalformedKmsXml(f"{local_name(node)}: too many or too long namespace declarations")


class Children:
    """The element children of a complex element, consumed in schema order.

    Elements of other namespaces (the schema's ``xsd:any namespace="##other"``) are skipped; comments are ignored;
    text outside the children is refused.
    """

    def __init__(self, element: Element) -> None:
        self._name = local_name(element)
        if (element.text or "").strip() or any((child.tail or "").strip() for child in element):
            raise MalformedKmsXml(f"{self._name}: unexpected text content")
        self._items = [c for c in element if isinstance(c.tag, str) and c.tag.startswith(f"{{{NAMESPACE}}}")]
        self._pos = 0

    def optional(self, name: str) -> Element | None:
        if self._pos < len(self._items) and self._items[self._pos].tag == qualified(name):
            self._pos += 1
            return self._items[self._pos - 1]
        return None

    def required(self, name: str) -> Element:
        element = self.optional(name)
        if element is None:
            raise MalformedKmsXml(f"{self._name}: missing {name}" + self._found())
        return element

    def many(self, name: str) -> list[Element]:
        found = []
        while (element := self.optional(name)) is not None:
            found.append(element)
        return found

    def end(self) -> None:
        if self._pos < len(self._items):
            raise MalformedKmsXml(f"{self._name}: unexpected {local_name(self._items[self._pos])}")

    def _found(self) -> str:
        return f" (found {local_name(self._items[self._pos])})" if self._pos < len(self._items) else ""


def text_of(element: Element) -> str:
    """Text of a simple element (comments inside it do not split it); child elements are refused."""
    parts = [element.text or ""]
    for child in element:
        if isinstance(child.tag, str):
            raise MalformedKmsXml(
                f"{local_name(element)}: child elements are not supported here (e.g. encrypted key content)"
            )
        parts.append(child.tail or "")
    return "".join(parts)


def token_of(element: Element) -> str:
    return text_of(element).strip()


def opt_token_of(element: Element | None) -> str | None:
    return None if element is None else token_of(element)


def int_of(element: Element) -> int:
    text = token_of(element)
    if not INT_RE.match(text):
        raise MalformedKmsXml(f"{local_name(element)}: not a non-negative decimal integer: {text[:40]!r}")
    return int(text)


def opt_int_of(element: Element | None) -> int | None:
    return None if element is None else int_of(element)


def bool_of(element: Element) -> bool:
    text = token_of(element)
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise MalformedKmsXml(f"{local_name(element)}: not an xsd:boolean: {text[:40]!r}")


def opt_bool_of(element: Element | None) -> bool | None:
    return None if element is None else bool_of(element)


def hex_of(element: Element, length: int) -> bytes:
    text = token_of(element)
    if len(text) != 2 * length or not _HEX_RE.match(text):
        raise MalformedKmsXml(f"{local_name(element)}: expected {length} octets of hex, got {len(text)} characters")
    return bytes.fromhex(text)


def time_from_text(text: str, name: str) -> datetime:
    match = _TIME_RE.match(text)
    if not match:
        raise MalformedKmsXml(f"{name}: not an xsd:dateTime: {text[:40]!r}")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    try:
        if zone in (None, "Z"):
            tz = UTC
        else:
            sign = -1 if zone[0] == "-" else 1
            offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
            if offset >= timedelta(hours=24):
                raise ValueError("time zone offset out of range")
            tz = timezone(sign * offset)
        value = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tzinfo=tz)
        return value.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise MalformedKmsXml(f"{name}: invalid date-time {text[:40]!r}: {exc}") from exc


def time_of(element: Element) -> datetime:
    return time_from_text(token_of(element), local_name(element))


def opt_time_of(element: Element | None) -> datetime | None:
    return None if element is None else time_of(element)


def key_of(element: Element, length: int) -> bytes:
    xsi_type = element.get(XSI_TYPE)
    if xsi_type is not None and xsi_type.rpartition(":")[2] != "KeyContentType":
        raise MalformedKmsXml(f"{local_name(element)}: key content type {xsi_type!r} is not supported (only plaintext)")
    return hex_of(element, length)


def root_of(data: bytes, names: tuple[str, ...]) -> Element:
    root = parse_document(data)
    if root.tag not in tuple(qualified(n) for n in names):
        raise MalformedKmsXml(f"expected {' or '.join(names)} in {NAMESPACE}, got {root.tag!r}")
    return root


# --- Writing helpers ---


def format_time(value: datetime) -> str:
    v = as_utc(value)
    text = f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}"
    if v.microsecond:
        text += "." + f"{v.microsecond:06d}".rstrip("0")
    return text + "Z"


def sub_element(parent: Element, name: str, text: str | None) -> Element:
    element = etree.SubElement(parent, qualified(name))
    if text is not None:
        try:
            element.text = text
        except ValueError as exc:  # characters XML cannot carry
            raise KmsFormatError(f"{name}: {exc}") from exc
    return element


def opt_sub_element(parent: Element, name: str, value: str | None) -> None:
    if value is not None:
        sub_element(parent, name, value)


def format_bool(value: bool) -> str:
    return "true" if value else "false"


def serialize(root: Element) -> bytes:
    etree.indent(root, space="  ")
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def new_root(name: str, *, xsi: bool = False) -> Element:
    nsmap = {None: NAMESPACE, "xsi": XSI_NAMESPACE} if xsi else {None: NAMESPACE}
    return etree.Element(qualified(name), nsmap=nsmap)
