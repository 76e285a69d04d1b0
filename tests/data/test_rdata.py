"""The R lazy-load reader on tiny databases written byte by byte here, in R's XDR serialization format."""

from __future__ import annotations

import gzip
import lzma
import struct
import zlib
from pathlib import Path

import pytest

from attnlab.data.rdata import RDataError, RObject, load_lazy, named, plain, unserialize

LISTSXP, CHARSXP, INTSXP, REALSXP, STRSXP, VECSXP, SYMSXP = 2, 9, 13, 14, 16, 19, 1
NILVALUE, REFSXP = 254, 255
HAS_ATTR, HAS_TAG = 1 << 9, 1 << 10
UTF8, ASCII = 1 << 3, 1 << 6


class XDR:
    """A minimal R serializer (format version 3), enough to build test databases the way R writes them:
    a symbol is written once, later uses are references into the table (REFSXP)."""

    def __init__(self) -> None:
        self.out = bytearray(b"X\n")
        self.symbols: dict[str, int] = {}
        self.int(3), self.int(0x040201), self.int(0x030500)  # version, writer R 4.2.1, reader R 3.5.0
        self.int(5)
        self.out += b"UTF-8"

    def int(self, value: int) -> None:
        self.out += struct.pack(">i", value)

    def charsxp(self, text: str | None) -> None:
        if text is None:
            self.int(CHARSXP), self.int(-1)
            return
        raw = text.encode()
        self.int(CHARSXP | ((UTF8 if raw != text.encode("ascii", "ignore") else ASCII) << 12))
        self.int(len(raw))
        self.out += raw

    def symbol(self, name: str) -> None:
        if name in self.symbols:
            self.int(REFSXP | (self.symbols[name] << 8))
            return
        self.symbols[name] = len(self.symbols) + 1
        self.int(SYMSXP)
        self.charsxp(name)

    def attributes(self, attrs: dict[str, object]) -> None:
        """A pairlist of tagged cells, then NILVALUE."""
        for tag, value in attrs.items():
            self.int(LISTSXP | HAS_TAG)
            self.symbol(tag)
            self.value(value)
        self.int(NILVALUE)

    def value(self, value: object, names: list[str] | None = None) -> None:
        flags = HAS_ATTR if names is not None else 0
        if isinstance(value, str) or value is None:
            value = [value]
        assert isinstance(value, list)
        if all(isinstance(v, str) or v is None for v in value):
            self.int(STRSXP | flags), self.int(len(value))
            for v in value:
                self.charsxp(v)
        elif all(isinstance(v, int) for v in value):
            self.int(INTSXP | flags), self.int(len(value))
            for v in value:
                self.int(v)
        elif all(isinstance(v, float) for v in value):
            self.int(REALSXP | flags), self.int(len(value))
            self.out += struct.pack(f">{len(value)}d", *value)
        else:
            raise TypeError(value)
        if names is not None:
            self.attributes({"names": names})

    def named_list(self, items: dict[str, object]) -> None:
        self.int(VECSXP | HAS_ATTR), self.int(len(items))
        for v in items.values():
            if isinstance(v, dict):
                self.named_list(v)
            else:
                self.value(v)
        self.attributes({"names": list(items)})


def serialized(write) -> bytes:
    xdr = XDR()
    write(xdr)
    return bytes(xdr.out)


def write_database(tmp_path: Path, objects: dict[str, object], compressed: int = 1) -> Path:
    """``tmp_path/Rdata.rdx`` / ``.rdb`` holding ``objects`` (str lists / int lists), as R's makeLazyLoadDB."""
    rdb, variables = bytearray(), {}
    for name, obj in objects.items():
        data = serialized(lambda x, obj=obj: x.value(obj))
        header = struct.pack(">I", len(data))
        record = header + zlib.compress(data) if compressed == 1 else header + b"X" + lzma.compress(data)
        variables[name] = [len(rdb), len(record)]
        rdb += record
    index = serialized(lambda x: x.named_list({"variables": variables, "references": {}, "compressed": [compressed]}))
    (tmp_path / "Rdata.rdb").write_bytes(bytes(rdb))
    (tmp_path / "Rdata.rdx").write_bytes(gzip.compress(index))
    return tmp_path / "Rdata"


BOOKS = {
    "emma": ["EMMA", "", "By Jane Austen", None, "Émile — naïve"],
    "counts": [3, 1, 4, 1, 5],
}


@pytest.mark.parametrize("compressed", [1, 3])
def test_a_lazy_load_database_reads_back_every_object(tmp_path: Path, compressed: int) -> None:
    found = load_lazy(write_database(tmp_path, BOOKS, compressed))
    assert found == BOOKS


def test_one_object_can_be_read_alone_and_an_unknown_one_is_named(tmp_path: Path) -> None:
    prefix = write_database(tmp_path, BOOKS)
    assert load_lazy(prefix, ["counts"]) == {"counts": BOOKS["counts"]}
    with pytest.raises(RDataError, match=r"no object 'persuasion'.*counts, emma"):
        load_lazy(prefix, ["persuasion"])


def test_names_survive_as_attributes_and_repeated_symbols_resolve_through_references() -> None:
    data = serialized(lambda x: x.named_list({"a": ["x"], "b": {"c": [1, 2]}}))
    assert data.count(b"names") == 1  # the second "names" tag is a REFSXP, as R writes it
    value = unserialize(data)
    assert isinstance(value, RObject) and value.names() == ["a", "b"]
    assert named(named(value)["b"]) == {"c": [1, 2]}


def test_a_named_vector_keeps_its_values_and_names() -> None:
    value = unserialize(serialized(lambda x: x.value([1.5, -2.0], names=["p", "q"])))
    assert plain(value) == [1.5, -2.0] and value.names() == ["p", "q"]


def test_ascii_serializations_and_truncated_bytes_are_rejected_with_a_reason() -> None:
    with pytest.raises(RDataError, match="only XDR"):
        unserialize(b"A\n3\n")
    data = serialized(lambda x: x.value(["a long enough string"]))
    with pytest.raises(RDataError, match="truncated"):
        unserialize(data[:-4])


def test_a_record_whose_length_header_disagrees_is_rejected(tmp_path: Path) -> None:
    prefix = write_database(tmp_path, {"x": ["abc"]})
    rdb = bytearray((tmp_path / "Rdata.rdb").read_bytes())
    rdb[0:4] = struct.pack(">I", 1)
    (tmp_path / "Rdata.rdb").write_bytes(bytes(rdb))
    with pytest.raises(RDataError, match="header says 1"):
        load_lazy(prefix)
