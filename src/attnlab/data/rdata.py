"""A pure-stdlib reader for R's lazy-load databases (the ``.rdx`` / ``.rdb`` pair R packages ship their
data and code in), enough to pull character vectors out of Debian's ``r-cran-*`` packages without R.

Format (R Internals, §1.8 "Serialization Formats" and §1.9 "Lazy loading"; R's ``src/main/serialize.c``):

* ``NAME.rdx`` is a gzip-compressed serialized R list ``list(variables=, references=, compressed=)``;
  ``variables`` maps each object name to an integer pair (byte offset, byte length) into ``NAME.rdb``.
* Each ``.rdb`` record is a compressed serialized object. ``compressed`` TRUE: a 4-byte big-endian
  uncompressed length, then a zlib stream. ``compressed`` 2 or 3: the length, one type byte (``Z`` zlib,
  ``2`` bzip2, ``X`` xz, ``0`` stored), then the payload.
* A serialized object is ``X\\n`` (XDR: big-endian), the format version (2 or 3), the writer's and the
  minimal reader's R version, for version 3 the native encoding, then one item. An item starts with a
  32-bit flags word: type = flags & 0xFF, is-object bit 8, has-attributes bit 9, has-tag bit 10, and the
  "levels" (a CHARSXP's encoding, a REFSXP's index) in bits 12 and up. Pairlists are (attributes, tag,
  CAR, CDR); vectors are a length and their elements; symbols, environments and package/namespace
  markers enter a reference table that later REFSXP items (type 255) point back into.

Only the XDR format is read (R's default, and what packages are built with); ASCII and native-binary
serializations raise :class:`RDataError`, and so does bytecode (BCODESXP), which no data object holds.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import math
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# SEXP types (R Internals §1.1.1) and the pseudo-types of serialize.c.
NILSXP, SYMSXP, LISTSXP, CLOSXP, ENVSXP, PROMSXP, LANGSXP = 0, 1, 2, 3, 4, 5, 6
SPECIALSXP, BUILTINSXP, CHARSXP, LGLSXP, INTSXP, REALSXP, CPLXSXP = 7, 8, 9, 10, 13, 14, 15
STRSXP, DOTSXP, VECSXP, EXPRSXP, BCODESXP, EXTPTRSXP, WEAKREFSXP, RAWSXP, S4SXP = 16, 17, 19, 20, 21, 22, 23, 24, 25
REFSXP, NILVALUE_SXP, GLOBALENV_SXP, UNBOUNDVALUE_SXP, MISSINGARG_SXP, BASENAMESPACE_SXP = 255, 254, 253, 252, 251, 250
NAMESPACESXP, PACKAGESXP, PERSISTSXP, EMPTYENV_SXP, BASEENV_SXP, ALTREP_SXP = 249, 248, 247, 242, 241, 238
ATTRLANGSXP, ATTRLISTSXP = 240, 239

NA_INTEGER = -(2**31)
UTF8_MASK, LATIN1_MASK, BYTES_MASK = 1 << 3, 1 << 2, 1 << 1
PAIRLIST_TYPES = {LISTSXP: "pairlist", LANGSXP: "language", CLOSXP: "closure", PROMSXP: "promise", DOTSXP: "dots"}
SPECIAL_VALUES = {
    GLOBALENV_SXP: "globalenv",
    UNBOUNDVALUE_SXP: "unbound",
    MISSINGARG_SXP: "missingarg",
    BASENAMESPACE_SXP: "basenamespace",
    EMPTYENV_SXP: "emptyenv",
    BASEENV_SXP: "baseenv",
}


class RDataError(ValueError):
    """The bytes are not an R serialization this reader understands (the message says which part)."""


@dataclass(frozen=True)
class RSymbol:
    """An R symbol (a name), e.g. the tag of a pairlist cell."""

    name: str


@dataclass
class RObject:
    """A decoded R value that is not a bare vector: ``kind`` names it, ``value`` holds the Python form.

    Vectors come back as ``RObject`` too when they carry attributes (names, class, ...), so the names of
    a named list are never lost. ``kind`` is the R type name (``character``, ``list``, ``pairlist``,
    ``environment``, ...).
    """

    kind: str
    value: Any
    attributes: dict[str, Any] = field(default_factory=dict)

    def names(self) -> list[str | None] | None:
        """The ``names`` attribute as a Python list, or None."""
        names = self.attributes.get("names")
        return plain(names) if names is not None else None


def plain(value: Any) -> Any:
    """The Python value inside an ``RObject`` (unchanged for anything else)."""
    return value.value if isinstance(value, RObject) else value


def named(value: Any) -> dict[str, Any]:
    """A named R vector or list as a dict name → element (duplicate names: the last wins)."""
    names = value.names() if isinstance(value, RObject) else None
    if names is None:
        raise RDataError("expected a named list or vector")
    return {str(n): v for n, v in zip(names, plain(value), strict=True)}


class _Reader:
    """Decodes one XDR serialization, item by item (R's ``ReadItem``)."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0
        self.refs: list[Any] = []

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise RDataError(f"truncated serialization: need {n} bytes at offset {self.pos} of {len(self.data)}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def length(self) -> int:
        n = self.int()
        if n == -1:  # long vector: upper and lower 32 bits follow
            upper, lower = self.int(), self.int()
            n = (upper << 32) + (lower & 0xFFFFFFFF)
        if n < 0:
            raise RDataError(f"negative vector length {n} at offset {self.pos}")
        return n

    def header(self) -> None:
        magic = self.take(2)
        if magic != b"X\n":
            raise RDataError(f"unsupported serialization format {magic!r} (only XDR 'X\\n' is read)")
        version = self.int()
        self.int(), self.int()  # writer's R version, minimal reader version
        if version == 3:
            self.take(self.int())  # native encoding name
        elif version != 2:
            raise RDataError(f"unsupported serialization version {version} (allowed: 2, 3)")

    def charsxp(self, levels: int) -> str | None:
        n = self.int()
        if n == -1:
            return None  # NA_character_
        raw = self.take(n)
        if levels & LATIN1_MASK:
            return raw.decode("latin-1")
        if levels & BYTES_MASK:
            return raw.decode("utf-8", errors="surrogateescape")
        return raw.decode("utf-8", errors="replace")  # UTF-8, ASCII or native (packages are built in UTF-8)

    def attributes(self) -> dict[str, Any]:
        return self.attributes_of(self.item())

    def pairlist(self, flags: int) -> RObject:
        """A chain of cons cells, read iteratively along the CDR (a long pairlist must not recurse)."""
        kind = PAIRLIST_TYPES[flags & 0xFF]
        cells: list[tuple[Any, Any]] = []
        attributes: dict[str, Any] = {}
        while True:
            has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
            cell_attributes = self.attributes() if has_attr else {}
            if not cells:
                attributes = cell_attributes
            tag = self.item() if has_tag else None
            cells.append((tag, self.item()))
            flags = self.int()
            if flags & 0xFF != LISTSXP or kind != "pairlist":
                tail = self.item(flags)
                if tail is not None:  # a dotted pair or a closure body: keep it as the last cell
                    cells.append((None, tail))
                return RObject(kind, cells, attributes)

    def vector(self, kind: int) -> tuple[str, Any]:
        if kind in (LGLSXP, INTSXP):
            n = self.length()
            values = struct.unpack(f">{n}i", self.take(4 * n))
            ints = [None if v == NA_INTEGER else v for v in values]
            return ("logical", [None if v is None else bool(v) for v in ints]) if kind == LGLSXP else ("integer", ints)
        if kind == REALSXP:
            n = self.length()
            return "double", list(struct.unpack(f">{n}d", self.take(8 * n)))
        if kind == CPLXSXP:
            n = self.length()
            parts = struct.unpack(f">{2 * n}d", self.take(16 * n))
            return "complex", [complex(parts[2 * i], parts[2 * i + 1]) for i in range(n)]
        if kind == STRSXP:
            n = self.length()
            return "character", [self.item() for _ in range(n)]
        if kind in (VECSXP, EXPRSXP):
            n = self.length()
            return ("list" if kind == VECSXP else "expression"), [self.item() for _ in range(n)]
        if kind == RAWSXP:
            return "raw", self.take(self.length())
        raise RDataError(f"unsupported R type {kind} at offset {self.pos}")

    def item(self, flags: int | None = None) -> Any:
        """One serialized item; ``flags`` when the caller already read them."""
        if flags is None:
            flags = self.int()
        kind, levels = flags & 0xFF, flags >> 12
        has_attr = bool(flags & (1 << 9))
        if kind in (NILVALUE_SXP, NILSXP):
            return None
        if kind in SPECIAL_VALUES:
            return RObject(SPECIAL_VALUES[kind], None)
        if kind == REFSXP:
            index = flags >> 8 or self.int()
            if not 1 <= index <= len(self.refs):
                raise RDataError(f"reference {index} to an unknown object ({len(self.refs)} known)")
            return self.refs[index - 1]
        if kind in (PERSISTSXP, PACKAGESXP, NAMESPACESXP):
            if self.int() != 0:
                raise RDataError(f"bad string-vector marker for type {kind}")
            marker = RObject({PERSISTSXP: "persist", PACKAGESXP: "package", NAMESPACESXP: "namespace"}[kind], None)
            marker.value = [self.item() for _ in range(self.length())]
            self.refs.append(marker)
            return marker
        if kind == SYMSXP:
            symbol = RSymbol(str(self.item()))
            self.refs.append(symbol)
            return symbol
        if kind == ENVSXP:
            env = RObject("environment", {})
            self.refs.append(env)  # before the contents: an environment may contain itself
            self.int()  # locked
            enclosure, frame, hashtab, env.attributes = self.item(), self.item(), self.item(), self.attributes()
            env.attributes = {**env.attributes, "enclosure": enclosure}
            cells = list(plain(frame) or [])
            for bucket in plain(hashtab) or []:
                cells.extend(plain(bucket) or [])
            env.value = {(t.name if isinstance(t, RSymbol) else str(t)): v for t, v in cells}
            return env
        if kind in PAIRLIST_TYPES:
            return self.pairlist(flags)
        if kind in (ATTRLANGSXP, ATTRLISTSXP):
            raise RDataError(f"unsupported R type {kind} (bytecode language) at offset {self.pos}")
        if kind == ALTREP_SXP:
            return self.altrep()
        if kind == CHARSXP:
            value: Any = self.charsxp(levels)
            if has_attr:
                self.attributes()
            return value
        if kind == S4SXP:
            return RObject("S4", None, self.attributes() if has_attr else {})
        if kind == EXTPTRSXP:
            pointer = RObject("externalptr", None)
            self.refs.append(pointer)
            self.item(), self.item()  # protected value, tag
            pointer.attributes = self.attributes() if has_attr else {}
            return pointer
        if kind == WEAKREFSXP:
            weak = RObject("weakref", None)
            self.refs.append(weak)
            weak.attributes = self.attributes() if has_attr else {}
            return weak
        if kind in (SPECIALSXP, BUILTINSXP):
            return RObject("builtin", self.take(self.int()).decode("ascii", "replace"))
        if kind == BCODESXP:
            raise RDataError(f"unsupported R type {kind} (bytecode) at offset {self.pos}")
        type_name, values = self.vector(kind)
        if has_attr:
            return RObject(type_name, values, self.attributes())
        return values

    def altrep(self) -> Any:
        """ALTREP (compact sequences, wrappers): expanded into the plain vector they stand for."""
        info, state, attributes = plain(self.item()), self.item(), self.attributes_of(self.item())
        class_name = info[0][1].name if info and isinstance(info[0][1], RSymbol) else "?"
        if class_name == "compact_intseq":
            n, start, step = (int(v) for v in plain(state))
            values: Any = list(range(start, start + n * step, step))
        elif class_name == "compact_realseq":
            n, start, step = plain(state)
            values = [start + i * step for i in range(int(n))]
        elif class_name.startswith("wrap_"):
            values = plain(plain(state)[0])
        elif class_name == "deferred_string":
            source = plain(plain(state)[0][1])
            values = [None if v is None or (isinstance(v, float) and math.isnan(v)) else _r_format(v) for v in source]
        else:
            raise RDataError(f"unsupported ALTREP class {class_name!r}")
        return RObject("altrep", values, attributes) if attributes else values

    @staticmethod
    def attributes_of(pairs: Any) -> dict[str, Any]:
        cells = plain(pairs)
        if not isinstance(cells, list):
            return {}
        return {tag.name if isinstance(tag, RSymbol) else str(tag): value for tag, value in cells}


def _r_format(value: Any) -> str:
    """as.character() of a number, for deferred strings (integers print without a decimal point)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def unserialize(data: bytes) -> Any:
    """Decode one R XDR serialization (``serialize()`` / ``saveRDS`` output, uncompressed) into Python.

    Atomic vectors become lists (NA → None), character vectors lists of str; a vector with attributes,
    a pairlist or an environment becomes an :class:`RObject`.
    """
    reader = _Reader(data)
    reader.header()
    return reader.item()


def read_rds(path: Path) -> Any:
    """``readRDS`` of a gzip-compressed (or plain) XDR file, e.g. a lazy-load index ``.rdx``."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return unserialize(raw)


def decompress_record(record: bytes, compressed: Any) -> bytes:
    """The serialized bytes of one ``.rdb`` record, per the index's ``compressed`` value (TRUE, 2 or 3)."""
    if len(record) < 4:
        raise RDataError("lazy-load record shorter than its 4-byte length header")
    size = struct.unpack(">I", record[:4])[0]
    if compressed in (2, 3):
        kind, payload = record[4:5], record[5:]
        if kind == b"Z":
            out = zlib.decompress(payload)
        elif kind == b"2":
            out = bz2.decompress(payload)
        elif kind == b"X":
            out = lzma.decompress(payload)
        elif kind == b"0":
            out = payload
        else:
            raise RDataError(f"unknown lazy-load compression type {kind!r} (allowed: Z, 2, X, 0)")
    elif compressed:
        out = zlib.decompress(record[4:])
    else:
        out = record
    if compressed and len(out) != size:
        raise RDataError(f"lazy-load record is {len(out)} bytes after decompression, its header says {size}")
    return out


def load_lazy(prefix: Path, names: list[str] | None = None) -> dict[str, Any]:
    """The objects of the lazy-load database ``prefix.rdx`` / ``prefix.rdb`` (e.g. ``.../data/Rdata``).

    ``names`` selects objects (default: all); an unknown name raises :class:`RDataError` listing the known.
    """
    prefix = Path(prefix)
    index = named(read_rds(prefix.with_suffix(".rdx")))
    variables = named(index["variables"])
    compressed = plain(index.get("compressed"))
    compressed = compressed[0] if isinstance(compressed, list) and compressed else compressed
    wanted = list(variables) if names is None else names
    unknown = [n for n in wanted if n not in variables]
    if unknown:
        raise RDataError(f"no object {unknown[0]!r} in {prefix}.rdx (objects: {', '.join(sorted(variables))})")
    out: dict[str, Any] = {}
    with prefix.with_suffix(".rdb").open("rb") as f:
        for name in wanted:
            offset, length = (int(v) for v in plain(variables[name]))
            f.seek(offset)
            out[name] = unserialize(decompress_record(f.read(length), compressed))
    return out
