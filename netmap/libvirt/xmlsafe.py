"""Safe reading of untrusted XML (domain XML from libvirt, files a user points us at).

Why not `xml.etree.ElementTree.fromstring`: it expands internal entities, so a few hundred
bytes of "billion laughs" cost gigabytes, and it keeps no line numbers or byte offsets.
This parser drives expat directly and

- refuses any DOCTYPE, entity declaration or external entity (libvirt never writes one, so
  a document that has one is hostile or not libvirt's),
- caps the size, the element count and the nesting depth before building anything big,
- records, for every element, its line and the byte offset of its start tag, so that errors
  name a line and the libvirt hook can rewrite single attribute values in place, leaving
  every other byte of the document as it was (libvirt's ABI check compares the guest-visible
  parts of the XML it gets back).

defusedxml would cover the first point only; the offsets are why this is stdlib expat.
"""

from __future__ import annotations

import re
import xml.parsers.expat
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree as ET

from netmap.errors import InputError

MAX_BYTES = 8 * 1024 * 1024  # a large domain XML is ~100 KB; libvirt's own cap is 10 MB
MAX_ELEMENTS = 200_000
MAX_DEPTH = 128
_UTF8_NAMES = {"utf-8", "utf8", "us-ascii", "ascii"}
# One attribute inside a start tag; expat has already checked it is well formed.
_ATTRIBUTE = re.compile(rb"""([^\s=<>/"']+)\s*=\s*("[^"]*"|'[^']*')""")


class _Refused(Exception):
    """Raised inside an expat handler to stop parsing; turned into InputError."""

    def __init__(self, problem: str, fix: str, line: int | None) -> None:
        super().__init__(problem)
        self.problem, self.fix, self.line = problem, fix, line


@dataclass
class XmlDocument:
    """A parsed document: the element tree plus where each element sits in the bytes."""

    root: ET.Element
    data: bytes
    file: str
    _where: dict[ET.Element, tuple[int, int]] = field(default_factory=dict, repr=False)

    def line(self, element: ET.Element) -> int | None:
        where = self._where.get(element)
        return where[0] if where else None

    def start_tag(self, element: ET.Element) -> tuple[int, int]:
        """Byte span of the element's start tag, from '<' to just after '>'."""
        start = self._where[element][1]
        quote = None
        for index in range(start, len(self.data)):
            char = self.data[index:index + 1]
            if quote:
                if char == quote:
                    quote = None
            elif char in (b'"', b"'"):
                quote = char
            elif char == b">":
                return start, index + 1
        raise ValueError("unterminated start tag")  # cannot happen: expat accepted it

    def attribute_value_span(self, element: ET.Element, name: str) -> tuple[int, int] | None:
        """Byte span of an attribute's value (inside the quotes) in the start tag."""
        start, end = self.start_tag(element)
        tag = self.data[start:end]
        wanted = name.encode()
        for match in _ATTRIBUTE.finditer(tag):
            if match.group(1) == wanted:
                return start + match.start(2) + 1, start + match.end(2) - 1
        return None

    def error(self, element: ET.Element | None, problem: str, fix: str,
              key: str | None = None) -> InputError:
        line = self.line(element) if element is not None else None
        return InputError(problem, file=self.file, line=line, key=key, fix=fix)


def escape_attribute(value: str) -> bytes:
    return (value.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")
            .replace("'", "&apos;").encode())


def read_untrusted(path: Path, *, max_bytes: int = MAX_BYTES) -> XmlDocument:
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as err:
        raise InputError(f"cannot read: {err.strerror}", file=path,
                         fix="check the path and its permissions") from err
    return parse_untrusted(data, str(path), max_bytes=max_bytes)


def parse_untrusted(data: bytes | str, file: str, *, max_bytes: int = MAX_BYTES,
                    max_elements: int = MAX_ELEMENTS, max_depth: int = MAX_DEPTH) -> XmlDocument:
    """Parse `data` or raise InputError naming `file`, the line, the problem and the fix."""
    if isinstance(data, str):
        data = data.encode()
    if len(data) > max_bytes:
        raise InputError(f"is larger than {max_bytes // (1024 * 1024)} MiB; no libvirt XML is "
                         "that big", file=file, fix="pass the output of 'virsh dumpxml'")
    if not data.strip():
        raise InputError("is empty: no XML to read", file=file,
                         fix="pass the output of 'virsh dumpxml DOMAIN'")
    parser = xml.parsers.expat.ParserCreate(namespace_separator="}")
    where: dict[ET.Element, tuple[int, int]] = {}
    stack: list[ET.Element] = []
    roots: list[ET.Element] = []
    last: list[ET.Element | None] = [None]  # the last closed child, whose tail gets text
    count = [0]

    def refuse(problem: str, fix: str) -> None:
        raise _Refused(problem, fix, parser.CurrentLineNumber)

    def on_doctype(*_args: object) -> None:
        refuse("has a DOCTYPE; netmap refuses DTDs in untrusted XML (entity expansion, "
               "the 'billion laughs' bomb, and external entities hide there)",
               "remove the <!DOCTYPE ...> declaration; libvirt never writes one")

    def on_entity(*_args: object) -> None:
        refuse("declares an entity, which netmap refuses in untrusted XML (XML bomb)",
               "remove the <!ENTITY ...> declarations")

    def on_external(*_args: object) -> int:
        refuse("refers to an external entity, which netmap never loads",
               "remove the external entity reference")
        return 0

    def on_xml_decl(_version: str | None, encoding: str | None, _standalone: int) -> None:
        if encoding and encoding.lower() not in _UTF8_NAMES:
            refuse(f"declares encoding {encoding!r}; netmap reads UTF-8 XML, as libvirt "
                   "writes it", "convert the file to UTF-8 (iconv -t utf-8)")

    def on_start(name: str, attrs: dict[str, str]) -> None:
        count[0] += 1
        if count[0] > max_elements:
            refuse(f"has more than {max_elements} elements", "pass a single domain's XML")
        if len(stack) >= max_depth:
            refuse(f"nests elements deeper than {max_depth} levels",
                   "pass a single domain's XML")
        tag = _clark(name)
        attrib = {_clark(key): value for key, value in attrs.items()}
        element = ET.SubElement(stack[-1], tag, attrib) if stack else ET.Element(tag, attrib)
        if not stack:
            roots.append(element)
        where[element] = (parser.CurrentLineNumber, parser.CurrentByteIndex)
        stack.append(element)
        last[0] = None

    def on_end(_name: str) -> None:
        last[0] = stack.pop()

    def on_text(text: str) -> None:
        if last[0] is not None:
            last[0].tail = (last[0].tail or "") + text
        elif stack:
            stack[-1].text = (stack[-1].text or "") + text

    parser.SetParamEntityParsing(xml.parsers.expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = on_doctype
    parser.EntityDeclHandler = on_entity
    parser.ExternalEntityRefHandler = on_external
    parser.XmlDeclHandler = on_xml_decl
    parser.StartElementHandler = on_start
    parser.EndElementHandler = on_end
    parser.CharacterDataHandler = on_text
    parser.buffer_text = True
    try:
        parser.Parse(data, True)
    except _Refused as err:
        raise InputError(err.problem, file=file, line=err.line, fix=err.fix) from None
    except xml.parsers.expat.ExpatError as err:
        reason = xml.parsers.expat.ErrorString(err.code)
        raise InputError(f"is not well-formed XML: {reason} (column {err.offset + 1})",
                         file=file, line=err.lineno,
                         fix="fix the XML, or pass the output of 'virsh dumpxml'") from None
    return XmlDocument(roots[0], data, file, where)


def _clark(name: str) -> str:
    """expat's 'uri}local' -> ElementTree's '{uri}local'."""
    return "{" + name if "}" in name else name
