"""A user-supplied search space (``--search-space``): a file of molecules, read, checked and canonicalized once.

The campaign can only evaluate molecules its QC codes and surrogates handle: one neutral, closed-shell molecule
of a few supported elements per entry. A library from elsewhere (a vendor catalogue, an enumeration) usually
holds some entries that break those rules — salts, charged species, unsupported elements, typos — and it is
far better to drop them here, say which lines and why, than to have a worker fail on them hours into a run.

Problems with the file as a whole (missing, binary, not UTF-8, corrupt gzip, a CSV without a ``smiles``
column, nothing usable in it) raise :class:`~configs.settings.SettingsError` with one line meant for the
user; a single bad line is skipped and reported, never fatal. Files are streamed, so libraries of millions
of molecules cost memory only for the molecules kept.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import logging
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from rdkit import Chem, RDLogger, rdBase

from configs.settings.models import SettingsError, one_line

logger = logging.getLogger(__name__)

OPTION = "--search-space"
"""The option that names the file: every error message starts with it, so the user knows what to fix."""

DEFAULT_ELEMENTS = frozenset({"H", "C", "N", "O", "F"})
"""The elements of QM9, which the surrogates were built for."""

MAX_LINE_BYTES = 1 << 20
"""Longest line read into memory; a longer one cannot be a molecule the campaign can use."""

CHARS_PER_HEAVY_ATOM = 100
"""Generous upper bound on SMILES characters per heavy atom (brackets, isotopes, explicit H, ring closures).

SMILES longer than this bound times ``max_heavy_atoms`` are rejected before RDKit parses them: parsing a
megabyte-long chain takes seconds, and such a line can never pass the size rule anyway.
"""

_SMILES_CHARS = re.compile(r"[!-~]+")
"""Printable ASCII without space: RDKit silently drops what follows whitespace or odd characters otherwise."""


@dataclass(frozen=True)
class SearchSpace:
    """The valid, unique molecules of a search-space file, and what was dropped from it and why.

    Attributes:
        path: The file read.
        smiles: Canonical RDKit SMILES of every valid line, unique, in file order.
        names: The name given with each molecule (text after the SMILES in ``.smi``; a ``name`` or ``id``
            column in CSV), or None.
        n_lines: Data lines read (header, blank and ``#`` comment lines excluded); every one of them is either
            in ``smiles``, in ``skipped`` or counted in ``duplicates``.
        skipped: ``(line number in the file, reason)`` for every invalid line, line numbers starting at 1.
        duplicates: Valid lines whose canonical SMILES was already seen (dropped, not errors).
        key: Digest of the file's content and of the rules it was checked by: names the library's cache, so
            features computed for one campaign serve every later campaign on the same file.
    """

    path: Path
    smiles: list[str]
    names: list[str | None]
    n_lines: int
    skipped: list[tuple[int, str]]
    duplicates: int
    key: str = ""


def skipped_summary(space: SearchSpace, first: int = 5) -> str:
    """One line saying how many lines were skipped and why, with the first few reasons.

    Kept to one line (and to ``first`` reasons) because it goes into log warnings and error messages, where a
    list of thousands of bad lines would hide everything else.
    """
    lines = "line" if space.n_lines == 1 else "lines"
    summary = f"{len(space.skipped)} of {space.n_lines} {lines} skipped"
    if not space.skipped:
        return summary
    shown = "; ".join(f"line {number}: {reason}" for number, reason in space.skipped[:first])
    more = "; ..." if len(space.skipped) > first else ""
    return f"{summary} ({shown}{more})"


def load_search_space(
    path: Path | str, elements: frozenset[str] = DEFAULT_ELEMENTS, max_heavy_atoms: int = 30
) -> SearchSpace:
    """Read a search-space file, keeping each valid molecule once as canonical SMILES.

    Formats: ``.csv`` is a table with a header row holding a ``smiles`` column (any case) and optionally a
    ``name`` or ``id`` column; any other name is one SMILES per line, optionally followed by whitespace and a
    name. A trailing ``.gz`` means gzip-compressed (``lib.smi.gz``, ``lib.csv.gz``). Blank lines and lines
    starting with ``#`` are ignored.

    A line is skipped, with its reason recorded, when its SMILES does not parse, or the molecule has an element
    outside ``elements``, a formal charge, radical electrons, more than ``max_heavy_atoms`` heavy atoms, more
    than one fragment, or no heavy atom at all: the QC codes and surrogates handle neutral closed-shell single
    molecules only.

    Args:
        path: The file, as given to ``--search-space``.
        elements: Element symbols a molecule may contain.
        max_heavy_atoms: Most heavy (non-hydrogen) atoms a molecule may have.

    Returns:
        The valid molecules and the account of the dropped lines.

    Raises:
        SettingsError: the file cannot be used at all; the message is one line starting with
            ``--search-space <path>:``.
    """
    path = Path(path)
    prefix = f"{OPTION} {_printable(str(path))}:"
    path = named_library(path)
    compressed = path.name.lower().endswith(".gz")
    table = path.name.lower().removesuffix(".gz").endswith(".csv")
    builder = _Builder(elements, max_heavy_atoms)
    reader: _LineReader | None = None
    try:
        if path.is_dir():
            raise IsADirectoryError(str(path))
        key = _content_key(path, elements, max_heavy_atoms)
        cached = _read_cached(path, key) if path.stat().st_size >= CACHE_MIN_BYTES else None
        if cached is not None:
            logger.info("%s %d molecules (checked before; cache %s)", prefix, len(cached.smiles), key)
            return cached
        with _quiet_rdkit(), _open(path, compressed) as handle, _checker(path) as check_many:
            reader = _LineReader(handle, prefix, compressed)
            rows = _csv_rows(reader, prefix) if table else _smi_rows(reader)
            for batch, verdicts in check_many(_batches(rows), elements, max_heavy_atoms):
                for (number, smiles, name), verdict in zip(batch, verdicts, strict=True):
                    builder.add(number, smiles, name, verdict)
    except SettingsError:
        raise
    except FileNotFoundError as exc:
        raise SettingsError(f"{prefix} the file does not exist") from exc
    except IsADirectoryError as exc:
        raise SettingsError(f"{prefix} is a directory, not a file of molecules") from exc
    except PermissionError as exc:
        raise SettingsError(f"{prefix} cannot be read: permission denied") from exc
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise SettingsError(f"{prefix} {_gzip_problem(exc, reader)}") from exc
    except OSError as exc:
        if compressed:
            raise SettingsError(f"{prefix} {_gzip_problem(exc, reader)}") from exc
        raise SettingsError(f"{prefix} cannot be read: {one_line(exc.strerror or str(exc))}") from exc
    except Exception as exc:  # noqa: BLE001 - any content must end in a message naming the file, never a traceback
        where = f" (at line {reader.number})" if reader is not None and reader.number else ""
        raise SettingsError(f"{prefix} cannot be read{where}: {one_line(f'{type(exc).__name__}: {exc}')}") from exc

    space = builder.result(path, key)
    if space.n_lines == 0:
        if reader is not None and reader.number == 0:
            raise SettingsError(f"{prefix} the file is empty")
        what = "a CSV header but no data rows" if table else "only blank or comment lines"
        raise SettingsError(f"{prefix} the file has {what}")
    if not space.smiles:
        raise SettingsError(f"{prefix} no valid molecule in the file: {skipped_summary(space, first=3)}")
    if space.skipped:
        logger.warning("%s %s", prefix, skipped_summary(space))
    if space.duplicates:
        logger.info("%s %d duplicate molecules dropped", prefix, space.duplicates)
    logger.info("%s %d molecules", prefix, len(space.smiles))
    if path.stat().st_size >= CACHE_MIN_BYTES:
        _write_cached(space)
    return space


NAMED_LIBRARIES = {"moses": ("moses", "dataset/data/train.csv.gz")}
"""Libraries offered by name: the package that ships the file (never imported, only located) and the file.

``moses`` is the MOSES training set (about 1.6 million drug-like molecules, elements C N O S F Cl Br) from the
``molsets`` wheel; ``make setup`` installs that wheel without its dependencies, which molsteer does not need.
"""

CHECK_BATCH = 20_000
"""Lines checked per batch; files larger than :data:`PARALLEL_BYTES` are checked on every core."""

PARALLEL_BYTES = 4 << 20

CACHE_MIN_BYTES = 256 << 10
"""Files smaller than this are checked again each time (well under a second) instead of filling the cache."""

CACHE_FORMAT = 1
"""Bumped whenever the checking rules change, so a cached result is never one made by other rules."""


def named_library(path: Path) -> Path:
    """The file behind a library name (``moses``), or ``path`` itself when it is not a name.

    A file that exists under that name wins, so a user's own file called ``moses`` is never shadowed.

    Raises:
        SettingsError: the name is known but the package that ships it is not installed.
    """
    import importlib.util

    if path.exists() or str(path) not in NAMED_LIBRARIES:
        return path
    package, relative = NAMED_LIBRARIES[str(path)]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SettingsError(f"{OPTION} {path}: the library ships in the molsets wheel, which is not installed; "
                            "run make setup, or: pip install --no-deps molsets")
    file = Path(next(iter(spec.submodule_search_locations))) / relative
    if not file.is_file():
        raise SettingsError(f"{OPTION} {path}: {file} is missing from the installed {package} package")
    return file


def _content_key(path: Path, elements: frozenset[str], max_heavy_atoms: int) -> str:
    """SHA-256 of the file's bytes and of the rules, shortened: the same file checked the same way, same key."""
    import hashlib

    digest = hashlib.sha256(f"{CACHE_FORMAT}|{sorted(elements)}|{max_heavy_atoms}|".encode())
    with open(path, "rb") as handle:
        for piece in iter(lambda: handle.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()[:24]


def _cache_files(key: str) -> tuple[Path, Path]:
    from methods.data import cache_dir

    folder = cache_dir() / "libraries" / key
    return folder / "space.json", folder / "molecules.txt"


def _read_cached(path: Path, key: str) -> SearchSpace | None:
    """The checked molecules of an identical file, if any campaign has checked it before; else None."""
    import json

    meta_file, molecules_file = _cache_files(key)
    if not meta_file.exists() or not molecules_file.exists():
        return None
    try:
        meta = json.loads(meta_file.read_text())
        smiles, names = [], []
        for line in molecules_file.read_text().splitlines():
            molecule, _, name = line.partition("\t")
            smiles.append(molecule)
            names.append(name or None)
        if len(smiles) != meta["molecules"]:
            return None
    except (OSError, ValueError, KeyError):
        return None  # a damaged cache is simply rebuilt
    return SearchSpace(path=path, smiles=smiles, names=names, n_lines=meta["n_lines"],
                       skipped=[(int(n), str(r)) for n, r in meta["skipped"]], duplicates=meta["duplicates"], key=key)


def _write_cached(space: SearchSpace) -> None:
    """Keep the checked molecules (one ``SMILES<TAB>name`` per line) for the next campaign on the same file."""
    import json

    from methods.data import atomic_save

    meta_file, molecules_file = _cache_files(space.key)
    try:
        atomic_save(molecules_file, lambda tmp: tmp.write_text(
            "".join(f"{s}\t{n or ''}\n" for s, n in zip(space.smiles, space.names, strict=True))))
        atomic_save(meta_file, lambda tmp: tmp.write_text(json.dumps({
            "source": str(space.path), "molecules": len(space.smiles), "n_lines": space.n_lines,
            "skipped": space.skipped, "duplicates": space.duplicates})))
    except OSError as exc:  # a read-only cache costs time on the next run, never the run itself
        logger.warning("Could not cache the checked search space: %s", exc)


def _batches(rows: Iterator[tuple[int, str | None, str | None]]) -> Iterator[list[tuple[int, str | None, str | None]]]:
    batch: list[tuple[int, str | None, str | None]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= CHECK_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _check_batch(smiles: list[str | None], elements: frozenset[str], max_heavy_atoms: int
                 ) -> list[tuple[str | None, str | None]]:
    """Verdicts (canonical SMILES or None, reason) for a batch of lines; runs in a worker process for big files."""
    checker = _Builder(elements, max_heavy_atoms)
    verdicts = []
    with _quiet_rdkit():
        for text in smiles:
            if text is None:
                verdicts.append((None, f"line longer than {MAX_LINE_BYTES} bytes"))
                continue
            try:
                verdicts.append(checker.check(text))
            except Exception as exc:  # noqa: BLE001 - one odd molecule must not stop the whole file
                verdicts.append((None, f"RDKit could not process {_shown(text)} ({one_line(str(exc))})"))
    return verdicts


@contextlib.contextmanager
def _checker(path: Path) -> Iterator[Any]:
    """A function checking batches in file order: in this process for small files, on every core for big ones.

    The checks (an RDKit parse and canonicalization per line) are what takes the time for a million-molecule
    library; batches are checked ahead in a process pool while the file is still being read.
    """
    import os

    workers = os.cpu_count() or 1
    if workers < 2 or path.stat().st_size < PARALLEL_BYTES:
        def inline(batches, elements, max_heavy_atoms):
            for batch in batches:
                yield batch, _check_batch([s for _, s, _ in batch], elements, max_heavy_atoms)

        yield inline
        return

    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        def parallel(batches, elements, max_heavy_atoms):
            pending: list[tuple[list, Any]] = []
            for batch in batches:
                pending.append((batch, pool.submit(_check_batch, [s for _, s, _ in batch], elements,
                                                   max_heavy_atoms)))
                while len(pending) > 2 * workers:  # bounded look-ahead: memory stays flat for any file size
                    done_batch, future = pending.pop(0)
                    yield done_batch, future.result()
            for done_batch, future in pending:
                yield done_batch, future.result()

        yield parallel


class _Builder:
    """Collects the valid, unique molecules and the reasons for the rest, line by line."""

    def __init__(self, elements: frozenset[str], max_heavy_atoms: int) -> None:
        self.elements = frozenset(elements)
        self.max_heavy_atoms = max_heavy_atoms
        self.max_chars = CHARS_PER_HEAVY_ATOM * max(max_heavy_atoms, 1)
        self.allowed = _element_list(self.elements)
        self.smiles: list[str] = []
        self.names: list[str | None] = []
        self.seen: set[str] = set()
        self.skipped: list[tuple[int, str]] = []
        self.duplicates = 0
        self.n_lines = 0

    def add(self, number: int, smiles: str | None, name: str | None,
            verdict: tuple[str | None, str | None]) -> None:
        """Account for one data line, given its verdict from :func:`_check_batch`: keep, count as duplicate, or skip."""
        self.n_lines += 1
        canonical, reason = verdict
        if canonical is None:
            self.skipped.append((number, reason or f"invalid SMILES {_shown(smiles)}"))
        elif canonical in self.seen:
            self.duplicates += 1
        else:
            self.seen.add(canonical)
            self.smiles.append(canonical)
            self.names.append(name)

    def check(self, smiles: str) -> tuple[str | None, str | None]:
        """Canonical SMILES of a valid molecule, or None and the first rule it breaks."""
        if not smiles:
            return None, "empty SMILES"
        if not _SMILES_CHARS.fullmatch(smiles):
            bad = next(c for c in smiles if not _SMILES_CHARS.fullmatch(c))
            return None, f"unparsable SMILES {_shown(smiles)} (character {bad!r} cannot be in a SMILES)"
        if len(smiles) > self.max_chars:
            return None, (f"SMILES of {len(smiles)} characters is too long for at most "
                          f"{self.max_heavy_atoms} heavy atoms")
        mol = Chem.MolFromSmiles(smiles)
        if mol is None:
            return None, f"unparsable SMILES {_shown(smiles)}{_parse_problem(smiles)}"
        fragments = len(Chem.GetMolFrags(mol))
        if fragments > 1:
            return None, f"{fragments} fragments (a salt or mixture, not one molecule)"
        charged = radical = None
        check_hydrogens = "H" not in self.elements
        for index in range(mol.GetNumAtoms()):  # one pass, by index: RDKit's atom sequence is slow from Python
            atom = mol.GetAtomWithIdx(index)
            if atom.GetSymbol() not in self.elements:
                return None, f"element {atom.GetSymbol()} is not supported ({self.allowed})"
            if check_hydrogens and atom.GetTotalNumHs():
                return None, f"element H is not supported ({self.allowed})"
            if charged is None and atom.GetFormalCharge():
                charged = atom
            if radical is None and atom.GetNumRadicalElectrons():
                radical = atom
        if charged is not None:
            return None, (f"formal charge {charged.GetFormalCharge():+d} on {charged.GetSymbol()} "
                          f"(atom {charged.GetIdx() + 1})")
        if radical is not None:
            return None, f"radical electrons on {radical.GetSymbol()} (atom {radical.GetIdx() + 1})"
        heavy = mol.GetNumHeavyAtoms()
        if heavy > self.max_heavy_atoms:
            return None, f"{heavy} heavy atoms (at most {self.max_heavy_atoms})"
        if heavy == 0:
            return None, "no heavy atoms"
        return Chem.MolToSmiles(mol), None

    def result(self, path: Path, key: str) -> SearchSpace:
        """The collected molecules as a :class:`SearchSpace`."""
        return SearchSpace(path=path, smiles=self.smiles, names=self.names, n_lines=self.n_lines,
                           skipped=self.skipped, duplicates=self.duplicates, key=key)


class _LineReader:
    """Lines of a binary stream as text, with their line numbers; binary or non-UTF-8 content is an error.

    Reading bytes and decoding line by line (rather than through a text wrapper) is what lets the error say
    which line and byte offset is not UTF-8, and bounds the memory a single enormous line can take.
    """

    def __init__(self, handle: BinaryIO, prefix: str, compressed: bool) -> None:
        self.handle = handle
        self.prefix = prefix
        self.compressed = compressed
        self.number = 0  # number of the line read last (1-based); 0 before the first
        self.offset = 0  # byte offset (of the uncompressed data) where the next line starts

    def __iter__(self) -> Iterator[str | None]:
        """Each line with its line ending, or None for a line longer than :data:`MAX_LINE_BYTES`."""
        while True:
            raw = self.handle.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            self.number += 1
            start = self.offset
            self.offset += len(raw)
            if self.number == 1:
                raw = self._first_line(raw)
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                self._skip_rest_of_line()
                yield None
                continue
            nul = raw.find(b"\x00")
            if nul >= 0:
                raise SettingsError(f"{self.prefix} binary data (a NUL byte) at line {self.number}, "
                                    f"{self._where(start + nul)}: not a text file of molecules")
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SettingsError(
                    f"{self.prefix} line {self.number} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at "
                    f"{self._where(start + exc.start)}): binary data, or text in another encoding; "
                    "save it as UTF-8") from None

    def _first_line(self, raw: bytes) -> bytes:
        """Drop a UTF-8 byte-order mark; name the problem when the file is UTF-16 or gzip in disguise."""
        if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise SettingsError(f"{self.prefix} the file is UTF-16 text; save it as UTF-8")
        if raw.startswith(b"\x1f\x8b") and not self.compressed:
            raise SettingsError(f"{self.prefix} the file is gzip-compressed; give it a name ending in .gz")
        return raw.removeprefix(b"\xef\xbb\xbf")

    def _skip_rest_of_line(self) -> None:
        """Consume an over-long line in bounded pieces, so it never sits in memory whole."""
        while True:
            piece = self.handle.readline(MAX_LINE_BYTES)
            self.offset += len(piece)
            if not piece or piece.endswith(b"\n"):
                return

    def _where(self, offset: int) -> str:
        return f"byte offset {offset}" + (" of the uncompressed data" if self.compressed else "")


def _smi_rows(reader: _LineReader) -> Iterator[tuple[int, str | None, str | None]]:
    """``(line number, SMILES, name)`` of each data line of a SMILES file (one molecule per line)."""
    header_possible = True
    for line in reader:
        if line is None:
            header_possible = False
            yield reader.number, None, None
            continue
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.split(maxsplit=1)
        if header_possible and parts[0].lower() == "smiles":  # a column header, as some tools write one
            header_possible = False
            continue
        header_possible = False
        yield reader.number, parts[0], parts[1].strip() if len(parts) > 1 else None


def _csv_rows(reader: _LineReader, prefix: str) -> Iterator[tuple[int, str | None, str | None]]:
    """``(line number, SMILES, name)`` of each data row of a CSV file with a ``smiles`` column."""

    def lines() -> Iterator[str]:
        for line in reader:
            if line is None:
                raise SettingsError(f"{prefix} line {reader.number} is longer than {MAX_LINE_BYTES} bytes")
            yield line

    rows = csv.reader(lines(), strict=True)
    header: list[str] | None = None
    smiles_column = name_column = -1
    while True:
        start = reader.number + 1
        try:
            row = next(rows)
        except StopIteration:
            if header is None and reader.number:
                raise SettingsError(f"{prefix} the file has only blank or comment lines, no CSV header") from None
            return
        except csv.Error as exc:
            raise SettingsError(f"{prefix} malformed CSV row at line {start}: {one_line(str(exc))}") from exc
        if not any(cell.strip() for cell in row) or row[0].lstrip().startswith("#"):
            continue
        if header is None:
            header = [cell.strip().lower() for cell in row]
            if "smiles" not in header:
                columns = ", ".join(_shown(cell, 20) for cell in row[:8]) + (", ..." if len(row) > 8 else "")
                raise SettingsError(f"{prefix} the CSV header (line {start}) has no 'smiles' column "
                                    f"(columns: {columns})")
            smiles_column = header.index("smiles")
            name_column = next((header.index(key) for key in ("name", "id") if key in header), -1)
            continue
        if len(row) != len(header):
            raise SettingsError(f"{prefix} malformed CSV row at line {start}: {len(row)} fields, "
                                f"the header has {len(header)}")
        name = row[name_column].strip() if name_column >= 0 else ""
        yield start, row[smiles_column].strip(), name or None


@contextlib.contextmanager
def _open(path: Path, compressed: bool) -> Iterator[BinaryIO]:
    """The file as a binary stream, decompressed on the fly when it is gzip."""
    with open(path, "rb") as raw:
        if compressed:
            with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
                yield unzipped
        else:
            yield raw


@contextlib.contextmanager
def _quiet_rdkit() -> Iterator[None]:
    """Silence RDKit's parse errors (one per bad line, on stderr) and restore the previous log levels.

    Bad lines are reported through :class:`SearchSpace` and one warning; thousands of RDKit messages on the
    terminal would only bury that.
    """
    enabled = [line.split(":")[0] for line in rdBase.LogStatus().splitlines() if line.endswith(":enabled")]
    RDLogger.DisableLog("rdApp.*")
    try:
        yield
    finally:
        for name in enabled:
            RDLogger.EnableLog(name)


def _parse_problem(smiles: str) -> str:
    """RDKit's reason a SMILES failed (valence, kekulization), since "unparsable" alone does not help fix it."""
    try:
        mol = Chem.MolFromSmiles(smiles, sanitize=False)
        if mol is None:
            return ""
        Chem.SanitizeMol(mol)
    except Exception as exc:  # noqa: BLE001 - RDKit's sanitization exceptions carry the reason as their text
        return f" ({one_line(str(exc))[:120]})"
    return ""


def _gzip_problem(exc: BaseException, reader: _LineReader | None) -> str:
    """A user's description of a broken gzip file, with the line it broke in when any was read."""
    line = reader.number if reader is not None else 0
    where = f" (in line {line + 1})" if line or isinstance(exc, EOFError) else ""
    if isinstance(exc, EOFError):
        return f"the gzip file is truncated{where}"
    return f"not a valid gzip file{where}: {one_line(str(exc))}"


def _element_list(elements: frozenset[str]) -> str:
    """The allowed elements in periodic-table order (H, C, N, O, F), as the error messages list them."""
    table = Chem.GetPeriodicTable()

    def number(symbol: str) -> tuple[int, str]:
        try:
            return table.GetAtomicNumber(symbol), symbol
        except Exception:  # noqa: BLE001 - an unknown symbol sorts last rather than failing
            return 1000, symbol

    with _quiet_rdkit():
        return ", ".join(sorted(elements, key=number))


def _shown(text: str, limit: int = 40) -> str:
    """A piece of the file quoted for a message: shortened, and with control characters escaped by repr."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _printable(text: str) -> str:
    """A path as the user typed it, or its repr when it holds characters that would break the line."""
    return text if text.isprintable() else repr(text)
