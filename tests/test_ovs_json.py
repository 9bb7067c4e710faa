"""The JSON-RPC framing parser netmap gives the `ovs` IDL when the package has no C parser
(netmap/netlink/ovs_json.py): the same values as ovs's own parser, however the stream is
cut into chunks, and it stops exactly at the end of one message. Pure: no OVS needed."""

from __future__ import annotations

import json

import pytest

from netmap.netlink.ovs_json import FramingParser

pytest.importorskip("ovs.json")

MESSAGES = [
    '{"id":1,"method":"echo","params":[]}',
    '{"id":null,"method":"update2","params":[["monid","Open_vSwitch"],{"Port":{'
    '"6f1c":{"insert":{"name":"nm-a\\"b}","tag":10,"external_ids":["map",[["vm-id",'
    '"g{1}"],["attached-mac","52:54:00:00:00:01"]]]}}}}]}',
    '{"result":[{"uuid":["uuid","2b4c"]},{}],"error":null,"id":7}',
    '{"s":"back\\\\slash \\\\\\" quote ] } [ {","u":"\\u00e9t\\u00e9 caf\u00e9 \u2603",'
    '"n":[-1,0.5,1e3,true,false,null],"e":{},"a":[[],[[]]]}',
    '  \n[1, {"x": "]"}]',
]


def _parse_in_chunks(text: str, cuts: list[int]) -> tuple[object, int]:
    """Feed `text` cut at `cuts` as jsonrpc does: what is left after each feed is kept
    for the next message. Returns the value and how many characters it used."""
    parser = FramingParser()
    used, start = 0, 0
    for cut in [*cuts, len(text)]:
        chunk = text[start:cut]
        start = cut
        took = parser.feed(chunk)
        used += took
        assert took == len(chunk) or parser.is_done()
        if parser.is_done():
            break
    assert parser.is_done()
    return parser.finish(), used


@pytest.mark.parametrize("message", MESSAGES)
def test_every_cut_of_a_message_gives_the_value_ovs_reads(message: str) -> None:
    import ovs.json

    expected = ovs.json.from_string(message)
    assert expected == json.loads(message)
    trailer = ' {"id":2}'
    for cut in range(len(message) + 1):
        value, used = _parse_in_chunks(message + trailer, [cut])
        assert value == expected, cut
        assert used == len(message), cut  # the next message is left for the next parser


@pytest.mark.parametrize("message", MESSAGES)
def test_a_message_fed_one_character_at_a_time(message: str) -> None:
    value, used = _parse_in_chunks(message, list(range(1, len(message))))
    assert value == json.loads(message)
    assert used == len(message)


@pytest.mark.parametrize(("text", "why"), [
    ('"just a string"', "not '\"'"),
    ("42", "not '4'"),
    ('{"a":1,}', "invalid JSON"),
    ('{"a": [1, 2}', "unexpected end of input"),
    ("   ", "empty input stream"),
])
def test_what_is_not_one_message_is_an_error_string(text: str, why: str) -> None:
    parser = FramingParser()
    parser.feed(text)
    result = parser.finish()
    assert isinstance(result, str)
    assert why in result


def test_the_ovs_idl_reads_a_whole_stream_through_it() -> None:
    """jsonrpc's own receive loop, on a stream of several messages arriving in 7-byte
    reads, with the parser netmap installs."""
    import ovs.json
    import ovs.jsonrpc

    from netmap.netlink.ovs_json import use_fast_parser

    stream_text = "\n".join(MESSAGES[:3])

    class Stream:
        name = "test"

        def __init__(self) -> None:
            self.data = stream_text.encode()

        def recv(self, n: int) -> tuple[int, bytes]:
            piece, self.data = self.data[:7], self.data[7:]
            return (0, piece) if piece else (11, b"")  # EAGAIN when drained

        def close(self) -> None:
            pass

    saved = ovs.json.Parser
    try:
        use_fast_parser()
        if ovs.json.PARSER != ovs.json.PARSER_C:
            assert ovs.json.Parser is FramingParser
        connection = ovs.jsonrpc.Connection(Stream())
        got = []
        while True:
            error, msg = connection.recv()
            if error:
                break
            got.append(msg.to_json())
    finally:
        ovs.json.Parser = saved
    assert [g.get("id") for g in got] == [json.loads(m).get("id") for m in MESSAGES[:3]]
    assert got[1]["params"][1]["Port"]["6f1c"]["insert"]["name"] == 'nm-a"b}'
