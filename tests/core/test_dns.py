"""The DNS wire format: hand-built packets, round trips, malformed input, answer judging."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentcluster.core.dns import (
    DnsMessage,
    DnsQuestion,
    DnsRecord,
    DnsVerdict,
    Rcode,
    RecordType,
    SrvRecord,
    answer_records,
    decode_message,
    dns_name,
    dns_query,
    encode_message,
    judge_response,
)
from agentcluster.errors import (
    ConfigurationError,
    DiscoveryFailed,
    MalformedDnsMessage,
    TransportError,
)

A, AAAA, CNAME, SRV = RecordType.A, RecordType.AAAA, RecordType.CNAME, RecordType.SRV


def header(ident: int, flags: int, qd: int = 0, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!6H", ident, flags, qd, an, ns, ar)


EXAMPLE_QNAME = b"\x07example\x03com\x00"


# --- known bytes ------------------------------------------------------------------------


def test_a_query_is_the_rfc_1035_layout() -> None:
    wire = encode_message(dns_query("example.com", A, 0x1234))
    assert wire == header(0x1234, 0x0100, qd=1) + EXAMPLE_QNAME + b"\x00\x01\x00\x01"


def test_a_hand_built_answer_with_a_compression_pointer_decodes() -> None:
    answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 300, 4) + bytes([10, 0, 0, 7])
    wire = header(0x1234, 0x8180, qd=1, an=1) + EXAMPLE_QNAME + b"\x00\x01\x00\x01" + answer
    message = decode_message(wire)
    assert message == DnsMessage(
        id=0x1234,
        questions=(DnsQuestion("example.com", A),),
        answers=(DnsRecord("example.com", A, 300, "10.0.0.7"),),
        response=True,
        recursion_desired=True,
        recursion_available=True,
    )


def test_the_encoder_compresses_repeated_names_and_not_srv_targets() -> None:
    message = DnsMessage(
        id=7,
        questions=(DnsQuestion("_nats._tcp.example.com", SRV),),
        answers=(
            DnsRecord("_nats._tcp.example.com", SRV, 60, SrvRecord(1, 2, 4222, "a.example.com")),
        ),
        response=True,
    )
    wire = encode_message(message)
    # The answer's owner name is a pointer to the question name (offset 12) ...
    owner_at = 12 + len(b"\x05_nats\x04_tcp") + len(EXAMPLE_QNAME) + 4
    assert wire[owner_at : owner_at + 2] == b"\xc0\x0c"
    # ... and the SRV target is written in full (RFC 2782: no compression there).
    assert wire.endswith(b"\x01a" + EXAMPLE_QNAME)
    assert decode_message(wire) == message
    assert len(wire) < len(encode_message(message, compress=False))


def test_a_compressed_srv_target_from_a_lenient_server_still_decodes() -> None:
    rdata = struct.pack("!HHH", 0, 5, 4222) + b"\x01a\xc0\x0c"
    record = b"\xc0\x0c" + struct.pack("!HHIH", 33, 1, 60, len(rdata)) + rdata
    wire = header(1, 0x8000, qd=1, an=1) + EXAMPLE_QNAME + b"\x00\x21\x00\x01" + record
    (srv,) = decode_message(wire).answers
    assert srv.data == SrvRecord(0, 5, 4222, "a.example.com")


def test_unknown_types_keep_their_raw_bytes() -> None:
    txt = DnsRecord("example.com", 16, 5, b"\x05hello")
    wire = encode_message(DnsMessage(id=1, answers=(txt,), response=True))
    assert decode_message(wire).answers == (txt,)


# --- round trips --------------------------------------------------------------------------

label = st.text(alphabet="abcXYZ019-_", min_size=1, max_size=12).filter(
    lambda s: not s.startswith("-") and not s.endswith("-")
)
names = st.one_of(st.just("."), st.lists(label, min_size=1, max_size=5).map(".".join))
u16 = st.integers(0, 0xFFFF)
ipv4 = st.ip_addresses(v=4).map(lambda a: a.compressed)
ipv6 = st.ip_addresses(v=6).map(lambda a: a.compressed)
records = st.one_of(
    st.builds(DnsRecord, names, st.just(A), st.integers(0, 2**32 - 1), ipv4),
    st.builds(DnsRecord, names, st.just(AAAA), st.integers(0, 2**32 - 1), ipv6),
    st.builds(DnsRecord, names, st.just(CNAME), st.integers(0, 2**32 - 1), names),
    st.builds(
        DnsRecord,
        names,
        st.just(SRV),
        st.integers(0, 2**32 - 1),
        st.builds(SrvRecord, u16, u16, u16, names),
    ),
    st.builds(
        DnsRecord,
        names,
        st.sampled_from([16, 99, 65280]),
        st.integers(0, 2**32 - 1),
        st.binary(max_size=40),
        u16,
    ),
)
messages = st.builds(
    DnsMessage,
    id=u16,
    questions=st.lists(st.builds(DnsQuestion, names, u16, u16), max_size=3).map(tuple),
    answers=st.lists(records, max_size=5).map(tuple),
    authorities=st.lists(records, max_size=2).map(tuple),
    additionals=st.lists(records, max_size=2).map(tuple),
    response=st.booleans(),
    opcode=st.integers(0, 15),
    authoritative=st.booleans(),
    truncated=st.booleans(),
    recursion_desired=st.booleans(),
    recursion_available=st.booleans(),
    rcode=st.integers(0, 15),
)


@given(messages, st.booleans())
def test_decode_inverts_encode(message: DnsMessage, compress: bool) -> None:
    assert decode_message(encode_message(message, compress=compress)) == message


@given(messages)
def test_compression_never_grows_a_message(message: DnsMessage) -> None:
    assert len(encode_message(message)) <= len(encode_message(message, compress=False))


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_the_typed_error(data: bytes) -> None:
    try:
        message = decode_message(data)
    except MalformedDnsMessage:
        return
    assert isinstance(message, DnsMessage)
    assert decode_message(encode_message(message, compress=False)) == message


@given(messages, st.data())
def test_cutting_a_message_short_is_malformed_unless_it_says_truncated(
    message: DnsMessage, data: st.DataObject
) -> None:
    wire = encode_message(message)
    cut = data.draw(st.integers(12, len(wire) - 1)) if len(wire) > 12 else None
    if cut is None:
        return
    if message.truncated:
        kept = decode_message(wire[:cut])
        assert len(kept.answers) <= len(message.answers)
        assert kept.answers == message.answers[: len(kept.answers)]
    else:
        with pytest.raises(MalformedDnsMessage):
            decode_message(wire[:cut])


# --- malformed packets --------------------------------------------------------------------

QUESTION_A = EXAMPLE_QNAME + b"\x00\x01\x00\x01"


def rr(rtype: int, rdata: bytes, name: bytes = b"\xc0\x0c") -> bytes:
    return name + struct.pack("!HHIH", rtype, 1, 60, len(rdata)) + rdata


MALFORMED = [
    pytest.param(b"", "under the 12-byte header", 0, id="empty"),
    pytest.param(header(1, 0)[:11], "under the 12-byte header", 0, id="short-header"),
    pytest.param(header(1, 0, qd=1), "ends inside the question name", 12, id="missing-question"),
    pytest.param(
        header(1, 0, qd=1) + b"\xc0\x20" + b"\x00" * 40,
        "does not point backward",
        12,
        id="forward-pointer",
    ),
    pytest.param(
        header(1, 0, qd=1) + b"\xc0\x0c\x00\x01\x00\x01",
        "does not point backward",
        12,
        id="pointer-to-itself",
    ),
    pytest.param(
        header(1, 0, qd=1) + b"\x01a\xc0\x0c\x00\x01\x00\x01",
        "does not point backward",
        14,
        id="pointer-loop-into-own-name",
    ),
    pytest.param(
        header(1, 0, qd=1) + b"\x41abc\x00\x00\x01\x00\x01",
        "label type 0x40",
        12,
        id="reserved-label-type",
    ),
    pytest.param(
        header(1, 0, qd=1)
        + b"\x3f"
        + b"a" * 63
        + b"\x3f"
        + b"b" * 63
        + b"\x3f"
        + b"c" * 63
        + b"\x3f"
        + b"d" * 63
        + b"\x00\x00\x01\x00\x01",
        "over 255 bytes",
        204,
        id="name-too-long",
    ),
    pytest.param(
        header(1, 0, qd=1) + b"\x03a b\x00\x00\x01\x00\x01",
        "holds a dot, a space",
        12,
        id="space-in-label",
    ),
    pytest.param(
        header(1, 0x8000, qd=1, an=1) + QUESTION_A + rr(1, b"\x0a\x00\x00\x07\x00"),
        "A record data is 5 bytes",
        None,
        id="a-rdata-length",
    ),
    pytest.param(
        header(1, 0x8000, qd=1, an=1) + QUESTION_A + rr(28, b"\x00" * 4),
        "AAAA record data is 4 bytes",
        None,
        id="aaaa-rdata-length",
    ),
    pytest.param(
        header(1, 0x8000, qd=1, an=1) + QUESTION_A + rr(33, b"\x00\x01\x00\x02"),
        "SRV record data is 4 bytes",
        None,
        id="srv-too-short",
    ),
    pytest.param(
        header(1, 0x8000, qd=1, an=1) + QUESTION_A + rr(5, b"\x01a\x00\xff"),
        "stray bytes",
        None,
        id="cname-stray-bytes",
    ),
    pytest.param(
        header(1, 0x8000, qd=1, an=1) + QUESTION_A + rr(5, b"\x05abcde\x00")[:-4],
        "ends inside the record data",
        None,
        id="rdata-past-the-end",
    ),
    pytest.param(
        header(1, 0x8000, qd=1) + QUESTION_A + b"\x00",
        "1 bytes after the last record",
        29,
        id="trailing-byte",
    ),
]


@pytest.mark.parametrize(("wire", "problem", "offset"), MALFORMED)
def test_malformed_packets_raise_the_typed_error_naming_the_problem(
    wire: bytes, problem: str, offset: int | None
) -> None:
    with pytest.raises(MalformedDnsMessage) as caught:
        decode_message(wire)
    error = caught.value
    assert problem in error.problem
    if offset is not None:
        assert error.offset == offset
    assert isinstance(error, DiscoveryFailed)
    assert isinstance(error, TransportError)
    assert error.retryable is False
    assert error.strategy == "dns"


def test_a_truncated_answer_keeps_the_records_that_arrived_whole() -> None:
    whole = rr(1, bytes([10, 0, 0, 1]))
    wire = header(9, 0x8200, qd=1, an=3) + QUESTION_A + whole + whole[:5]
    message = decode_message(wire)
    assert message.truncated
    assert message.answers == (DnsRecord("example.com", A, 60, "10.0.0.1"),)


# --- encoding refuses what cannot be written ------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        DnsMessage(id=70000),
        DnsMessage(id=1, rcode=16),
        DnsMessage(id=1, questions=(DnsQuestion("a" * 64 + ".com", A),)),
        DnsMessage(id=1, questions=(DnsQuestion(".".join(["abcdefgh"] * 30), A),)),
        DnsMessage(id=1, questions=(DnsQuestion("a b.com", A),)),
        DnsMessage(id=1, answers=(DnsRecord("a.com", A, 1, SrvRecord(0, 0, 1, "x")),)),
        DnsMessage(id=1, answers=(DnsRecord("a.com", A, 1, b"\x01\x02\x03\x04"),)),
        DnsMessage(id=1, questions=(DnsQuestion("a.com", 70000),)),
        DnsMessage(id=1, answers=(DnsRecord("a.com", A, -1, "10.0.0.1"),)),
        DnsMessage(id=1, answers=(DnsRecord("a.com", SRV, 1, SrvRecord(0, 0, 65536, "x")),)),
    ],
)
def test_encoding_refuses_fields_out_of_range(message: DnsMessage) -> None:
    with pytest.raises(ValueError):
        encode_message(message)


@pytest.mark.parametrize(
    ("text", "name"),
    [("example.com", "example.com"), ("_nats._tcp.example.com.", "_nats._tcp.example.com")],
)
def test_query_names_are_checked_and_lose_their_final_dot(text: str, name: str) -> None:
    assert dns_name(text) == name


@pytest.mark.parametrize("text", ["", ".", "a..b", "-a.com", "a-.com", "a b.com", "a" * 64, 3])
def test_bad_query_names_are_configuration_errors(text: object) -> None:
    with pytest.raises(ConfigurationError, match=r"DNS name|label"):
        dns_name(text)


# --- judging a response ---------------------------------------------------------------------

QUERY = dns_query("nats.example.com", A, 4242)


def reply(**changes: object) -> DnsMessage:
    fields: dict[str, object] = {
        "id": 4242,
        "questions": QUERY.questions,
        "response": True,
        "rcode": Rcode.NOERROR,
    }
    fields.update(changes)
    return DnsMessage(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("response", "tcp", "verdict"),
    [
        (reply(), False, DnsVerdict.ANSWER),
        (reply(rcode=Rcode.NXDOMAIN), False, DnsVerdict.ANSWER),
        (reply(id=4243), False, DnsVerdict.IGNORE),
        (reply(response=False), False, DnsVerdict.IGNORE),
        (reply(questions=(DnsQuestion("other.example.com", A),)), False, DnsVerdict.IGNORE),
        (reply(questions=(DnsQuestion("nats.example.com", AAAA),)), False, DnsVerdict.IGNORE),
        (reply(questions=(DnsQuestion("NATS.Example.COM", A),)), False, DnsVerdict.ANSWER),
        (reply(questions=()), False, DnsVerdict.ANSWER),
        (reply(rcode=Rcode.SERVFAIL), False, DnsVerdict.TRY_ANOTHER),
        (reply(rcode=Rcode.REFUSED), False, DnsVerdict.TRY_ANOTHER),
        (reply(truncated=True), False, DnsVerdict.TRUNCATED),
        (reply(truncated=True), True, DnsVerdict.ANSWER),
        (reply(truncated=True, rcode=Rcode.SERVFAIL), False, DnsVerdict.TRY_ANOTHER),
    ],
)
def test_judge_response(response: DnsMessage, tcp: bool, verdict: DnsVerdict) -> None:
    assert judge_response(QUERY, response, tcp=tcp) is verdict


def test_answer_records_follow_a_cname_chain_and_ignore_other_names() -> None:
    response = reply(
        answers=(
            DnsRecord("unrelated.example.com", A, 60, "10.9.9.9"),
            DnsRecord("nats.example.com", CNAME, 60, "lb.example.com"),
            DnsRecord("lb.example.com", CNAME, 60, "pool.example.net"),
            DnsRecord("POOL.example.net", A, 60, "10.0.0.1"),
            DnsRecord("pool.example.net", A, 60, "10.0.0.2"),
        )
    )
    found = answer_records(response, "nats.example.com", A)
    assert [r.data for r in found] == ["10.0.0.1", "10.0.0.2"]


def test_a_cname_loop_ends_with_no_records() -> None:
    response = reply(
        answers=(
            DnsRecord("nats.example.com", CNAME, 60, "b.example.com"),
            DnsRecord("b.example.com", CNAME, 60, "nats.example.com"),
        )
    )
    assert answer_records(response, "nats.example.com", A) == []
