"""The lazy-load layer over the ``rdata`` package, on tiny databases laid out the way R's makeLazyLoadDB writes
them; the records are serialized by rdata's own writer (XDR, format version 3) unless a test needs bytes R
writes and rdata does not (an unmarked string in a version 2 serialization). The real databases are read in
tests/data/test_corpus_sources.py, whose builds must match their pinned sha256."""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import rdata

from attnlab.data.rdata import RDataError, character_vector, load_lazy, unserialize

COMPRESSORS = {b"Z": zlib.compress, b"2": bz2.compress, b"X": lzma.compress, b"0": bytes}


def serialized(value: object) -> bytes:
    """``serialize(value, NULL)`` as R would write it (XDR, version 3, UTF-8 strings)."""
    return rdata.unparser.unparse_data(rdata.conversion.convert_python_to_r_data(value))


def write_database(tmp_path: Path, objects: dict[str, object], compressed: int = 1, kind: bytes = b"Z") -> Path:
    """``tmp_path/Rdata.rdx`` / ``.rdb`` holding ``objects``: each record is the uncompressed length, then (for
    ``compressed`` 2 or 3) the compression type byte, then the compressed serialization."""
    rdb, variables = bytearray(), {}
    for name, obj in objects.items():
        data = serialized(obj)
        header = struct.pack(">I", len(data))
        record = header + zlib.compress(data) if compressed == 1 else header + kind + COMPRESSORS[kind](data)
        variables[name] = np.array([len(rdb), len(record)], dtype=np.int32)
        rdb += record
    compressed_flag = np.array([True]) if compressed == 1 else np.array([compressed], dtype=np.int32)
    index = serialized({"variables": variables, "references": [], "compressed": compressed_flag})
    (tmp_path / "Rdata.rdb").write_bytes(bytes(rdb))
    (tmp_path / "Rdata.rdx").write_bytes(gzip.compress(index))
    return tmp_path / "Rdata"


EMMA = ["EMMA", "", "By Jane Austen", None, "Émile — naïve"]
BOOKS = {"emma": np.array(EMMA, dtype=object), "counts": np.array([3, 1, 4, 1, 5], dtype=np.int32)}


@pytest.mark.parametrize(("compressed", "kind"), [(1, b"Z"), (3, b"X"), (3, b"Z"), (2, b"2"), (2, b"0")])
def test_every_object_reads_back_under_each_compression(tmp_path: Path, compressed: int, kind: bytes) -> None:
    found = load_lazy(write_database(tmp_path, BOOKS, compressed, kind))
    assert list(found) == ["emma", "counts"]
    assert character_vector(found["emma"], "emma") == EMMA
    assert found["counts"].tolist() == [3, 1, 4, 1, 5]


def test_one_object_can_be_read_alone_and_an_unknown_one_is_named(tmp_path: Path) -> None:
    prefix = write_database(tmp_path, BOOKS)
    assert list(load_lazy(prefix, ["counts"])) == ["counts"]
    with pytest.raises(RDataError, match=r"no object 'persuasion'.*counts, emma"):
        load_lazy(prefix, ["persuasion"])


def test_a_vector_that_is_not_character_is_refused_by_name(tmp_path: Path) -> None:
    found = load_lazy(write_database(tmp_path, BOOKS))
    with pytest.raises(RDataError, match="'counts' is a array of dtype int32, not a character vector"):
        character_vector(found["counts"], "counts")


def test_an_unmarked_string_is_read_as_utf8() -> None:
    """R marks a string's encoding in its CHARSXP flags; a string in the native encoding carries no mark, and a
    version 2 serialization names no native encoding. Packages are built in UTF-8, so it is read as UTF-8."""
    text = "naïve".encode()
    header = b"X\n" + struct.pack(">iii", 2, 0x040201, 0x020300)  # version 2, written by R 4.2.1
    strsxp, charsxp_unmarked = 16, 9
    data = header + struct.pack(">iiii", strsxp, 1, charsxp_unmarked, len(text)) + text
    assert character_vector(unserialize(data), "x") == ["naïve"]


def test_cut_or_padded_serializations_are_rejected_with_a_reason() -> None:
    data = serialized(np.array(["a long enough string"], dtype=object))
    with pytest.raises(RDataError, match="cannot read the serialization"):
        unserialize(data[:30])  # cut inside the vector's header
    with pytest.raises(RDataError, match="cannot read the serialization"):
        unserialize(data + b"xx")


def test_a_truncated_database_is_rejected(tmp_path: Path) -> None:
    """rdata 1.1.0 reads a string cut short without complaint; the record's length header catches it here."""
    prefix = write_database(tmp_path, {"x": np.array(["a long enough string"] * 50, dtype=object)})
    rdb = (tmp_path / "Rdata.rdb").read_bytes()
    (tmp_path / "Rdata.rdb").write_bytes(rdb[: len(rdb) // 2])
    with pytest.raises(RDataError, match="does not decompress"):
        load_lazy(prefix)


def test_a_record_whose_length_header_disagrees_is_rejected(tmp_path: Path) -> None:
    prefix = write_database(tmp_path, {"x": np.array(["abc"], dtype=object)})
    rdb = bytearray((tmp_path / "Rdata.rdb").read_bytes())
    rdb[0:4] = struct.pack(">I", 1)
    (tmp_path / "Rdata.rdb").write_bytes(bytes(rdb))
    with pytest.raises(RDataError, match="header says 1"):
        load_lazy(prefix)


def test_an_unknown_compression_type_names_the_allowed_ones(tmp_path: Path) -> None:
    prefix = write_database(tmp_path, {"x": np.array(["abc"], dtype=object)}, compressed=3, kind=b"X")
    rdb = bytearray((tmp_path / "Rdata.rdb").read_bytes())
    rdb[4:5] = b"Q"
    (tmp_path / "Rdata.rdb").write_bytes(bytes(rdb))
    with pytest.raises(RDataError, match=r"type b'Q' \(allowed: Z, 2, X, 0\)"):
        load_lazy(prefix)


def test_an_index_that_is_not_a_lazy_load_index_is_refused(tmp_path: Path) -> None:
    (tmp_path / "Rdata.rdx").write_bytes(gzip.compress(serialized({"something": [1]})))
    with pytest.raises(RDataError, match="is not a lazy-load index"):
        load_lazy(tmp_path / "Rdata")
