"""Real-text corpora (``attnlab data build``) for the ``lm`` task; see :mod:`attnlab.data.corpora`."""

from attnlab.data.corpora import (
    SOURCES,
    BuildResult,
    ChecksumMismatch,
    CorpusError,
    SourceUnavailable,
    build_corpus,
    corpus_path,
    data_dir,
    ensure_corpus,
)

__all__ = [
    "SOURCES",
    "BuildResult",
    "ChecksumMismatch",
    "CorpusError",
    "SourceUnavailable",
    "build_corpus",
    "corpus_path",
    "data_dir",
    "ensure_corpus",
]
