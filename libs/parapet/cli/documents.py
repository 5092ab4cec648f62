"""Files to ingest: found under folders by the extensions retrieval accepts, read and described.

Retrieval accepts ``text/plain``, ``text/markdown`` and ``text/html`` (docs/retrieval.md), at most 3 MiB per
document. A document's id is its path relative to the folder given (its name for a file given directly),
with an optional prefix, so ingesting the same folder again replaces the same documents.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

MIME_TYPES = {
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".txt": "text/plain",
    ".text": "text/plain",
    ".html": "text/html",
    ".htm": "text/html",
}
# Retrieval's limit per request message (docs/retrieval.md); larger files are refused here, not sent.
MAX_BYTES = 3 * 1024 * 1024
_HEADING = re.compile(r"^#\s+(.+?)\s*#*\s*$")


@dataclass(frozen=True)
class Candidate:
    """A file to ingest, or why it cannot be (``problem``), before its content is read."""

    path: Path
    document_id: str
    mime_type: str = ""
    problem: str = ""


@dataclass(frozen=True)
class LoadedDocument:
    document_id: str
    path: Path
    mime_type: str
    title: str
    content: bytes


def shown(path: Path | str) -> str:
    """``path`` as text that can be printed: bytes of a name that is not UTF-8 as ``\\xNN`` escapes.

    Python keeps such bytes as lone surrogates, which a UTF-8 terminal, JSON output or protobuf cannot take.
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _candidate(path: Path, document_id: str, mime_type: str, problem: str = "") -> Candidate:
    # A document id is a protobuf string: a name that is not UTF-8 (a Latin-1 name from an old archive) cannot be
    # sent, and failed the whole stream; it is that file's problem alone.
    if not _is_utf8(document_id):
        return Candidate(
            path, shown(document_id), problem=problem or "its name is not UTF-8: rename it to ingest it"
        )
    return Candidate(path, document_id, mime_type, problem)


def find(paths: Sequence[Path], prefix: str = "") -> Iterator[Candidate]:
    """Every file to ingest under ``paths``, in a stable order; unsupported explicit files are reported."""
    for given in paths:
        try:
            is_dir, is_file = given.is_dir(), given.is_file()
        except OSError as exc:  # a folder on the way not readable, a name too long (a missing path is False)
            yield _candidate(given, prefix + given.name, "", f"cannot read: {exc.strerror or exc}")
            continue
        if is_dir:
            for path, problem in _walk(given):
                relative = path.relative_to(given).as_posix()
                mime = MIME_TYPES.get(path.suffix.lower())
                if problem:
                    yield _candidate(path, prefix + relative, "", problem)
                elif mime is not None:
                    yield _candidate(path, prefix + relative, mime)
        elif is_file:
            mime = MIME_TYPES.get(given.suffix.lower())
            problem = "" if mime else f"unsupported file type (supported: {', '.join(sorted(MIME_TYPES))})"
            yield _candidate(given, prefix + given.name, mime or "", problem)
        else:
            yield _candidate(given, prefix + given.name, "", "no such file or folder")


def _walk(folder: Path) -> list[tuple[Path, str]]:
    """The regular files under ``folder`` (hidden ones and hidden folders left out), sorted, each with "" or, for
    a folder or file that could not be looked at, why.

    A folder that cannot be listed was skipped without a word by ``Path.rglob`` until 2026-12-06, so a person
    saw "0 failed" with part of the tree never sent; a file that cannot be looked at ended the command with a
    traceback. Links to folders are not followed (a link may loop back to its own folder), as before.
    """
    found: list[tuple[Path, str]] = []

    def unreadable(error: OSError) -> None:
        found.append((Path(error.filename), f"cannot read the folder: {error.strerror or error}"))

    for root, folders, files in os.walk(folder, onerror=unreadable):
        # Pruned here, so hidden folders (.git, editors' swap files) are not even walked.
        folders[:] = [name for name in folders if not name.startswith(".")]
        for name in files:
            if name.startswith("."):
                continue
            path = Path(root, name)
            try:
                regular = path.is_file()  # False for a dangling link, a FIFO, a socket: no document
            except OSError as exc:  # a folder others may list but not enter
                found.append((path, f"cannot read: {exc.strerror or exc}"))
                continue
            if regular:
                found.append((path, ""))
    return sorted(found)


def title_of(path: Path, mime_type: str, text: str) -> str:
    """Markdown: the first ``# heading``; plain text: a short first line; else the file name without
    extension. HTML: empty, so retrieval uses the page's ``<title>``."""
    if mime_type == "text/html":
        return ""
    if mime_type == "text/markdown":
        for line in text.splitlines():
            match = _HEADING.match(line)
            if match:
                return _shown_title(match.group(1), path)
    if mime_type == "text/plain":
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        if 0 < len(first) <= 120:
            return _shown_title(first, path)
    return _file_title(path)


def _file_title(path: Path) -> str:
    return path.stem.replace("_", " ").replace("-", " ")


def _shown_title(text: str, path: Path) -> str:
    """``text`` as the title unless it holds what no title holds (control characters such as NUL or ESC, U+FFFD
    for bytes that are no UTF-8): the bytes of a binary file, or UTF-16 text, read as a line. Those were sent as
    the title, and retrieval rejected the file for its title rather than for its content. (Not ``isprintable``:
    it refuses the zero-width joiners of emoji too.)"""
    unreadable = "\ufffd" in text or any(unicodedata.category(char) == "Cc" for char in text)
    return _file_title(path) if unreadable else text


def check_size(candidate: Candidate) -> None:
    """Raises ValueError with a readable reason when the candidate is too large or cannot be looked at."""
    try:
        size = candidate.path.stat().st_size
    except OSError as exc:
        raise ValueError(f"cannot read: {exc.strerror}") from None
    if size > MAX_BYTES:
        raise ValueError(f"too large ({size:,} bytes; at most {MAX_BYTES:,})")


def load(candidate: Candidate) -> LoadedDocument:
    """Read a candidate; raises ValueError with a readable reason (too large, unreadable)."""
    check_size(candidate)  # again: the file may have grown since it was vetted
    try:
        content = candidate.path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read: {exc.strerror}") from None
    if len(content) > MAX_BYTES:
        raise ValueError(f"too large ({len(content):,} bytes; at most {MAX_BYTES:,})")
    text = content.decode("utf-8", errors="replace")
    return LoadedDocument(
        candidate.document_id,
        candidate.path,
        candidate.mime_type,
        title_of(candidate.path, candidate.mime_type, text),
        content,
    )
