"""Objects out of R's lazy-load databases (the ``.rdx`` / ``.rdb`` pair R packages ship their data in).

R's serialization itself is read by the ``rdata`` package from PyPI (``rdata.parser.parse_data`` turns the
bytes into R objects, ``rdata.conversion.convert`` into Python ones: a character vector becomes a NumPy array
of ``str`` with ``None`` for ``NA``). ``rdata`` reads ``.rds`` / ``.rda`` files but not the lazy-load
database, so this module keeps only that thin layer (R Internals, §1.9 "Lazy loading"; R's
``src/library/base/R/lazyload.R`` and ``src/main/serialize.c``, ``R_lazyLoadDBinsertValue``):

* ``NAME.rdx`` is a gzip-compressed serialized R list ``list(variables=, references=, compressed=)``;
  ``variables`` maps each object name to an integer pair (byte offset, byte length) into ``NAME.rdb``.
* Each ``.rdb`` record is one compressed serialized object. ``compressed`` TRUE: a 4-byte big-endian
  uncompressed length, then a zlib stream. ``compressed`` 2 or 3: the length, one type byte (``Z`` zlib,
  ``2`` bzip2, ``X`` xz, ``0`` stored), then the payload.

Strings whose encoding R did not mark (neither UTF-8, Latin-1 nor bytes) are read as UTF-8, the encoding
packages are built in; ``rdata`` would otherwise take the file's declared native encoding or, in a version 2
serialization that declares none, ASCII.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any

# What rdata raises on bytes it cannot read: its parser checks with ValueError / NotImplementedError /
# TypeError / AssertionError, and short input surfaces as struct, index or EOF errors.
_PARSE_ERRORS = (ValueError, NotImplementedError, TypeError, AssertionError, KeyError, IndexError, EOFError)
COMPRESSION_TYPES = {b"Z": zlib.decompress, b"2": bz2.decompress, b"X": lzma.decompress, b"0": bytes}


class RDataError(ValueError):
    """The bytes are not an R lazy-load database this reader understands (the message says which part)."""


def unserialize(data: bytes, what: str = "serialization") -> Any:
    """One uncompressed R serialization (``serialize()`` output, as in a ``.rdb`` record) as Python, via rdata.

    Unmarked strings are decoded as UTF-8 (see the module docstring); a string that is not valid UTF-8, or
    anything rdata warns about, raises :class:`RDataError` rather than giving a partly decoded value. rdata
    1.1.0 reads a string cut short by a truncated input without complaint, so records are only trusted after
    :func:`decompress_record` has checked their length against the record's header.
    """
    import rdata

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            parsed = rdata.parser.parse_data(data, extension=".rds")
            return rdata.conversion.convert(parsed, default_encoding="utf_8")
    except (*_PARSE_ERRORS, struct.error, Warning) as err:
        raise RDataError(f"cannot read the {what}: {type(err).__name__}: {err}") from None


def decompress_record(record: bytes, compressed: int) -> bytes:
    """The serialized bytes of one ``.rdb`` record, per the index's ``compressed`` value (0, 1 = TRUE, 2 or 3)."""
    if not compressed:
        return record
    if len(record) < 4:
        raise RDataError("lazy-load record shorter than its 4-byte length header")
    size = struct.unpack(">I", record[:4])[0]
    try:
        if compressed in (2, 3):
            kind = record[4:5]
            if kind not in COMPRESSION_TYPES:
                allowed = ", ".join(k.decode() for k in COMPRESSION_TYPES)
                raise RDataError(f"unknown lazy-load compression type {kind!r} (allowed: {allowed})")
            out = COMPRESSION_TYPES[kind](record[5:])
        else:
            out = zlib.decompress(record[4:])
    except (zlib.error, OSError, EOFError, lzma.LZMAError) as err:
        raise RDataError(f"lazy-load record does not decompress: {err}") from None
    if len(out) != size:
        raise RDataError(f"lazy-load record is {len(out)} bytes after decompression, its header says {size}")
    return out


def read_index(prefix: Path) -> tuple[dict[str, tuple[int, int]], int]:
    """The index ``prefix.rdx``: object name → (offset, length) in ``prefix.rdb``, and the compression code."""
    path = Path(prefix).with_suffix(".rdx")
    raw = path.read_bytes()
    try:
        raw = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError) as err:
        raise RDataError(f"{path} does not decompress: {err}") from None
    index = unserialize(raw, f"lazy-load index {path}")
    if not isinstance(index, dict) or not isinstance(index.get("variables"), dict):
        raise RDataError(f"{path} is not a lazy-load index (expected a list with a named 'variables' entry)")
    variables = {str(name): (int(pair[0]), int(pair[1])) for name, pair in index["variables"].items()}
    compressed = index.get("compressed", [True])
    code = int(compressed[0]) if len(compressed) else 1
    return variables, code


def load_lazy(prefix: Path, names: list[str] | None = None) -> dict[str, Any]:
    """The objects of the lazy-load database ``prefix.rdx`` / ``prefix.rdb`` (e.g. ``.../data/Rdata``), as rdata
    converts them.

    ``names`` selects objects (default: all); an unknown name raises :class:`RDataError` listing the known.
    """
    prefix = Path(prefix)
    variables, compressed = read_index(prefix)
    wanted = list(variables) if names is None else names
    unknown = [n for n in wanted if n not in variables]
    if unknown:
        raise RDataError(f"no object {unknown[0]!r} in {prefix}.rdx (objects: {', '.join(sorted(variables))})")
    out: dict[str, Any] = {}
    with prefix.with_suffix(".rdb").open("rb") as f:
        for name in wanted:
            offset, length = variables[name]
            f.seek(offset)
            record = f.read(length)
            out[name] = unserialize(decompress_record(record, compressed), f"object {name!r} of {prefix}.rdb")
    return out


def character_vector(value: Any, name: str) -> list[str | None]:
    """An R character vector as rdata converts it (a NumPy array of str / None) as a list; ``NA`` → None."""
    import numpy as np

    if not isinstance(value, np.ndarray) or value.dtype.kind not in "UO" or value.ndim != 1:
        kind = f"array of dtype {value.dtype}" if isinstance(value, np.ndarray) else type(value).__name__
        raise RDataError(f"object {name!r} is a {kind}, not a character vector")
    out = [None if s is None else s for s in value.tolist()]
    if not all(s is None or isinstance(s, str) for s in out):
        raise RDataError(f"object {name!r} holds values that are not strings")
    return out
