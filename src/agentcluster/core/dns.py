"""DNS messages: the wire format (RFC 1035) of a query and of the answers discovery reads.

Theory of operation. ``DnsMessage`` is a whole message as plain values; ``encode_message``
writes it (repeated names become compression pointers) and ``decode_message`` reads one
back, or raises ``MalformedDnsMessage`` naming what was wrong and its byte offset: a header
under 12 bytes, a message ending inside a field, an undefined label type, a compression
pointer that does not point strictly backward (so pointer loops cannot exist), a name over
255 bytes, record data of the wrong size for its type, bytes left after the last record.
A, AAAA, CNAME, NS, PTR and SRV records decode to text and ``SrvRecord``; any other type
keeps its raw bytes. A truncated answer (the TC flag) may end inside a record; what decoded
in full is kept.

``judge_response`` says what a received message means for a query (not ours, truncated,
try another nameserver, a definite answer) and ``answer_records`` picks the answers to a
name, following a CNAME chain inside the answer. No I/O: the sockets are the caller's.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from enum import Enum, IntEnum

from agentcluster.errors import ConfigurationError, MalformedDnsMessage

__all__ = [
    "CLASS_IN",
    "DnsMessage",
    "DnsQuestion",
    "DnsRecord",
    "DnsVerdict",
    "Rcode",
    "RecordType",
    "SrvRecord",
    "answer_records",
    "decode_message",
    "dns_name",
    "dns_query",
    "encode_message",
    "judge_response",
]

_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\Z")


def dns_name(text: object, *, where: str = "name") -> str:
    """A DNS name to query, checked (labels of letters, digits, ``-`` and ``_``, at most 63
    bytes each, 253 in all); a trailing dot is dropped."""
    if not isinstance(text, str):
        raise ConfigurationError(f"{where} {text!r} is not a DNS name")
    name = text[:-1] if text.endswith(".") else text
    if not name or len(name) > 253:
        raise ConfigurationError(f"{where} {text!r} is not a DNS name (1-253 characters)")
    for label in name.split("."):
        if not _LABEL.match(label):
            raise ConfigurationError(
                f"{where} {text!r}: label {label!r} is not 1-63 letters, digits, '-' or '_' "
                "(not starting or ending with '-')"
            )
    return name


# --- messages ------------------------------------------------------------------------


class RecordType(IntEnum):
    """The record types this module gives meaning to; any other decodes as raw bytes."""

    A = 1
    NS = 2
    CNAME = 5
    PTR = 12
    AAAA = 28
    SRV = 33


class Rcode(IntEnum):
    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    NOTIMP = 4
    REFUSED = 5


CLASS_IN = 1
_NAME_TYPES = frozenset({RecordType.NS, RecordType.CNAME, RecordType.PTR})
_HEADER = 12
_POINTER_LIMIT = 0x3FFF


@dataclass(frozen=True, slots=True)
class DnsQuestion:
    name: str
    rtype: int
    rclass: int = CLASS_IN


@dataclass(frozen=True, slots=True)
class SrvRecord:
    """One SRV answer: ``target`` ``"."`` means the service is not offered here."""

    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True, slots=True)
class DnsRecord:
    """A resource record. ``data`` is the address text for A/AAAA, the name for
    CNAME/NS/PTR, an ``SrvRecord`` for SRV, and the raw bytes for any other type."""

    name: str
    rtype: int
    ttl: int
    data: str | SrvRecord | bytes
    rclass: int = CLASS_IN


@dataclass(frozen=True, slots=True)
class DnsMessage:
    """A DNS message. Names are dotted text without the final dot; the root is ``"."``."""

    id: int
    questions: tuple[DnsQuestion, ...] = ()
    answers: tuple[DnsRecord, ...] = ()
    authorities: tuple[DnsRecord, ...] = ()
    additionals: tuple[DnsRecord, ...] = ()
    response: bool = False
    opcode: int = 0
    authoritative: bool = False
    truncated: bool = False
    recursion_desired: bool = True
    recursion_available: bool = False
    rcode: int = Rcode.NOERROR


def dns_query(name: str, rtype: int, ident: int) -> DnsMessage:
    """A recursive query for one name and type, with message id ``ident`` (0-65535, drawn at
    random by the caller so a forged answer must guess it)."""
    return DnsMessage(id=ident, questions=(DnsQuestion(dns_name(name), rtype),))


def _labels(name: str) -> list[bytes]:
    if name in (".", ""):
        return []
    text = name[:-1] if name.endswith(".") else name
    labels = [label.encode("ascii") for label in text.split(".")]
    for label in labels:
        if not 1 <= len(label) <= 63:
            raise ValueError(f"name {name!r}: a label must be 1-63 bytes")
        if any(byte <= 0x20 or byte >= 0x7F for byte in label):
            raise ValueError(f"name {name!r}: a label holds a space or a control byte")
    if sum(len(label) + 1 for label in labels) + 1 > 255:
        raise ValueError(f"name {name!r} is over 255 bytes encoded")
    return labels


class _Writer:
    def __init__(self, compress: bool) -> None:
        self.out = bytearray()
        self.compress = compress
        self.offsets: dict[tuple[bytes, ...], int] = {}

    def name(self, name: str, *, compress: bool = True) -> None:
        labels = _labels(name)
        for i in range(len(labels)):
            suffix = tuple(labels[i:])
            if compress and self.compress and suffix in self.offsets:
                self.out += (0xC000 | self.offsets[suffix]).to_bytes(2, "big")
                return
            if len(self.out) <= _POINTER_LIMIT:
                self.offsets.setdefault(suffix, len(self.out))
            self.out.append(len(labels[i]))
            self.out += labels[i]
        self.out.append(0)

    def u16(self, value: int) -> None:
        if not 0 <= value <= 0xFFFF:
            raise ValueError(f"{value} does not fit 16 bits")
        self.out += value.to_bytes(2, "big")

    def record(self, record: DnsRecord) -> None:
        self.name(record.name)
        self.u16(record.rtype)
        self.u16(record.rclass)
        if not 0 <= record.ttl <= 0xFFFFFFFF:
            raise ValueError(f"ttl {record.ttl} does not fit 32 bits")
        self.out += record.ttl.to_bytes(4, "big")
        length_at = len(self.out)
        self.u16(0)
        data = record.data
        if record.rtype == RecordType.A and isinstance(data, str):
            self.out += ipaddress.IPv4Address(data).packed
        elif record.rtype == RecordType.AAAA and isinstance(data, str):
            self.out += ipaddress.IPv6Address(data).packed
        elif record.rtype in _NAME_TYPES and isinstance(data, str):
            self.name(data)
        elif record.rtype == RecordType.SRV and isinstance(data, SrvRecord):
            self.u16(data.priority)
            self.u16(data.weight)
            self.u16(data.port)
            self.name(data.target, compress=False)  # RFC 2782: no compression here
        elif isinstance(data, bytes) and record.rtype not in _TYPED:
            self.out += data
        else:
            raise ValueError(f"record data {data!r} does not fit type {record.rtype}")
        length = len(self.out) - length_at - 2
        if length > 0xFFFF:
            raise ValueError("record data over 65535 bytes")
        self.out[length_at : length_at + 2] = length.to_bytes(2, "big")


_TYPED = frozenset({RecordType.A, RecordType.AAAA, RecordType.SRV}) | _NAME_TYPES


def encode_message(message: DnsMessage, *, compress: bool = True) -> bytes:
    """The wire form of ``message``; names repeat as compression pointers unless
    ``compress`` is false. Raises ``ValueError`` for a field out of range."""
    m = message
    if not 0 <= m.id <= 0xFFFF or not 0 <= m.opcode <= 15 or not 0 <= m.rcode <= 15:
        raise ValueError("id, opcode or rcode out of range")
    sections = (m.questions, m.answers, m.authorities, m.additionals)
    if any(len(section) > 0xFFFF for section in sections):
        raise ValueError("a section holds more than 65535 entries")
    flags = (
        (m.response << 15)
        | (m.opcode << 11)
        | (m.authoritative << 10)
        | (m.truncated << 9)
        | (m.recursion_desired << 8)
        | (m.recursion_available << 7)
        | m.rcode
    )
    w = _Writer(compress)
    w.u16(m.id)
    w.u16(flags)
    for section in sections:
        w.u16(len(section))
    for question in m.questions:
        w.name(question.name)
        w.u16(question.rtype)
        w.u16(question.rclass)
    for record in (*m.answers, *m.authorities, *m.additionals):
        w.record(record)
    return bytes(w.out)


class _OutOfData(Exception):
    """The message ended inside a field (a truncated UDP answer may end so)."""

    def __init__(self, what: str, offset: int) -> None:
        super().__init__(what)
        self.what = what
        self.offset = offset


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, size: int, what: str) -> bytes:
        if self.pos + size > len(self.data):
            raise _OutOfData(what, self.pos)
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "big")

    def u32(self, what: str) -> int:
        return int.from_bytes(self.take(4, what), "big")

    def name(self, what: str) -> str:
        name, self.pos = _read_name(self.data, self.pos, what)
        return name

    def question(self) -> DnsQuestion:
        name = self.name("question name")
        return DnsQuestion(name, _rtype(self.u16("question type")), self.u16("question class"))

    def record(self) -> DnsRecord:
        name = self.name("record name")
        rtype = _rtype(self.u16("record type"))
        rclass = self.u16("record class")
        ttl = self.u32("record ttl")
        length = self.u16("record data length")
        start = self.pos
        raw = self.take(length, "record data")
        return DnsRecord(name, rtype, ttl, self._rdata(rtype, raw, start), rclass)

    def _rdata(self, rtype: int, raw: bytes, start: int) -> str | SrvRecord | bytes:
        end = start + len(raw)
        if rtype == RecordType.A:
            if len(raw) != 4:
                raise MalformedDnsMessage(f"A record data is {len(raw)} bytes, not 4", offset=start)
            return ipaddress.IPv4Address(raw).compressed
        if rtype == RecordType.AAAA:
            if len(raw) != 16:
                raise MalformedDnsMessage(
                    f"AAAA record data is {len(raw)} bytes, not 16", offset=start
                )
            return ipaddress.IPv6Address(raw).compressed
        if rtype in _NAME_TYPES:
            return self._name_in(start, end, "record data name")
        if rtype == RecordType.SRV:
            if len(raw) < 7:
                raise MalformedDnsMessage(
                    f"SRV record data is {len(raw)} bytes, under 7", offset=start
                )
            priority, weight, port = (int.from_bytes(raw[i : i + 2], "big") for i in (0, 2, 4))
            return SrvRecord(priority, weight, port, self._name_in(start + 6, end, "SRV target"))
        return raw

    def _name_in(self, start: int, end: int, what: str) -> str:
        try:
            name, after = _read_name(self.data[:end], start, what)
        except _OutOfData as exc:
            raise MalformedDnsMessage(
                f"{what} runs past its record's data", offset=exc.offset
            ) from None
        if after != end:
            raise MalformedDnsMessage(f"{what} leaves {end - after} stray bytes", offset=after)
        return name


def _rtype(value: int) -> int:
    try:
        return RecordType(value)
    except ValueError:
        return value


def _read_name(data: bytes, offset: int, what: str) -> tuple[str, int]:
    """The name at ``offset`` and the offset just after it where it was written.

    A compression pointer must point before the fragment holding it, so every jump goes
    strictly backward and a loop of pointers cannot exist.
    """
    labels: list[str] = []
    pos = offset
    fragment = offset
    after: int | None = None
    size = 1
    while True:
        if pos >= len(data):
            raise _OutOfData(what, pos)
        length = data[pos]
        kind = length & 0xC0
        if kind == 0xC0:
            if pos + 1 >= len(data):
                raise _OutOfData(what, pos)
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if target >= fragment:
                raise MalformedDnsMessage(
                    f"{what}: compression pointer to {target} does not point backward",
                    offset=pos,
                )
            if after is None:
                after = pos + 2
            pos = fragment = target
            continue
        if kind:
            raise MalformedDnsMessage(f"{what}: label type {kind:#04x} is not defined", offset=pos)
        if length == 0:
            if after is None:
                after = pos + 1
            return (".".join(labels) or "."), after
        size += length + 1
        if size > 255:
            raise MalformedDnsMessage(f"{what} is over 255 bytes", offset=pos)
        raw = data[pos + 1 : pos + 1 + length]
        if len(raw) < length:
            raise _OutOfData(what, pos)
        if any(byte <= 0x20 or byte >= 0x7F or byte == 0x2E for byte in raw):
            raise MalformedDnsMessage(
                f"{what}: label {raw!r} holds a dot, a space or a non-ASCII byte", offset=pos
            )
        labels.append(raw.decode("ascii"))
        pos += 1 + length


def decode_message(data: bytes) -> DnsMessage:
    """Decode a DNS message; anything that does not decode raises ``MalformedDnsMessage``.

    A message with the truncation flag may end inside a record (its sender cut it at the
    datagram size): what decodes in full is kept and the rest dropped. Bytes after the last
    record are refused.
    """
    reader = _Reader(bytes(data))
    try:
        ident = reader.u16("header")
        flags = reader.u16("header")
        counts = [reader.u16("header") for _ in range(4)]
    except _OutOfData:
        raise MalformedDnsMessage(
            f"{len(data)} bytes, under the {_HEADER}-byte header", offset=0
        ) from None
    truncated = bool(flags & 0x0200)
    questions: list[DnsQuestion] = []
    sections: list[list[DnsRecord]] = [[], [], []]
    try:
        for _ in range(counts[0]):
            questions.append(reader.question())
        for section, count in zip(sections, counts[1:], strict=True):
            for _ in range(count):
                section.append(reader.record())
    except _OutOfData as exc:
        if not truncated:
            raise MalformedDnsMessage(
                f"the message ends inside the {exc.what} (the header announces "
                f"{counts[0]} questions and {sum(counts[1:])} records)",
                offset=exc.offset,
            ) from None
    else:
        if reader.pos != len(reader.data):
            raise MalformedDnsMessage(
                f"{len(reader.data) - reader.pos} bytes after the last record", offset=reader.pos
            )
    return DnsMessage(
        id=ident,
        questions=tuple(questions),
        answers=tuple(sections[0]),
        authorities=tuple(sections[1]),
        additionals=tuple(sections[2]),
        response=bool(flags & 0x8000),
        opcode=(flags >> 11) & 0x0F,
        authoritative=bool(flags & 0x0400),
        truncated=truncated,
        recursion_desired=bool(flags & 0x0100),
        recursion_available=bool(flags & 0x0080),
        rcode=_rcode(flags & 0x000F),
    )


def _rcode(value: int) -> int:
    try:
        return Rcode(value)
    except ValueError:
        return value


# --- what an answer means -----------------------------------------------------------


class DnsVerdict(Enum):
    """What a received message means for the query it may answer."""

    IGNORE = "ignore"
    """Not an answer to this query (another id or question): keep waiting."""
    TRUNCATED = "truncated"
    """The answer did not fit the datagram: ask the same nameserver over TCP."""
    TRY_ANOTHER = "try_another"
    """The nameserver failed (SERVFAIL, REFUSED, …): ask the next one."""
    ANSWER = "answer"
    """A definite answer (records, no records, or NXDOMAIN)."""


def _same_name(a: str, b: str) -> bool:
    return a.rstrip(".").lower() == b.rstrip(".").lower()


def judge_response(query: DnsMessage, response: DnsMessage, *, tcp: bool = False) -> DnsVerdict:
    """Classify ``response`` to ``query``. An answer over TCP is never treated as
    truncated (there is nothing bigger to fall back to)."""
    if not response.response or response.id != query.id:
        return DnsVerdict.IGNORE
    if response.questions and (
        len(response.questions) != len(query.questions)
        or any(
            not _same_name(a.name, b.name) or a.rtype != b.rtype or a.rclass != b.rclass
            for a, b in zip(response.questions, query.questions, strict=True)
        )
    ):
        return DnsVerdict.IGNORE
    if response.rcode not in (Rcode.NOERROR, Rcode.NXDOMAIN):
        return DnsVerdict.TRY_ANOTHER
    if response.truncated and not tcp:
        return DnsVerdict.TRUNCATED
    return DnsVerdict.ANSWER


def answer_records(response: DnsMessage, name: str, rtype: int) -> list[DnsRecord]:
    """The answers of type ``rtype`` for ``name``, following a CNAME chain in the answer."""
    current = name
    for _ in range(len(response.answers) + 1):
        found = [r for r in response.answers if r.rtype == rtype and _same_name(r.name, current)]
        if found:
            return found
        alias = next(
            (
                r.data
                for r in response.answers
                if r.rtype == RecordType.CNAME
                and _same_name(r.name, current)
                and isinstance(r.data, str)
            ),
            None,
        )
        if alias is None:
            return []
        current = alias
    return []
