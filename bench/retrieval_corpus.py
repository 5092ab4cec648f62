"""The retrieval evaluation set: Debian package descriptions and questions about them, built by script.

Source: Debian's English package descriptions (`Translation-en` of the machine's Debian release, main
component: Debian 12 "bookworm" here), fetched by `apt-get update -o Acquire::Languages=en` and read with
`apt-helper cat-file`: public text available offline once the package lists are there. (`apt-cache
dumpavail` carries only the short descriptions; the extended ones live in Translation-en.) Each document is one package: title = package name, content = its
short description and extended description. Selection is deterministic for a given package list:
packages with an extended description of at least `MIN_CHARS`, none of the library/-dev/-doc/-data/
-dbg/-common families (near-identical descriptions), no two with the same extended description; then
ordered by a SHA-256 of the name and the first `documents` kept.

A question targets one document: a sentence of its *extended* description (never the short description
or the name) that holds at least two words no other document of the corpus contains (so the answer is
in one document only), with the package's name masked, its subject stripped, a quarter of its other
words dropped (deterministically), and a question template around it. So it is neither the title nor a
verbatim copy of the text.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

MIN_CHARS = 250
_SKIP = re.compile(
    r"^(lib|golang-|rust-|node-|r-cran-|php-|ruby-|haskell-|ocaml-|texlive|fonts-|python3?-)|(-dev|-doc|-data|-dbg|-common|-dbgsym|-l10n|-locale.*|-examples)$"
)
_WORD = re.compile(r"[a-z][a-z0-9+\-]{2,}")
_TEMPLATES = (
    "Which package {s}?",
    "What software {s}?",
    "I am looking for a tool that {s}. Which one?",
    "Which program {s}?",
)


@dataclass(frozen=True)
class EvalDocument:
    document_id: str
    title: str
    content: str


@dataclass(frozen=True)
class Question:
    question: str
    document_id: str


def _packages(dump: str) -> list[tuple[str, str, str]]:
    """(name, short description, extended description) of every stanza."""
    result = []
    for stanza in dump.split("\n\n"):
        name, short, extended, in_description = "", "", [], False
        for line in stanza.splitlines():
            if line.startswith("Package: "):
                name = line[9:].strip()
            elif line.startswith("Description-en: "):
                short, in_description = line[16:].strip(), True
            elif in_description and line.startswith(" "):
                extended.append("" if line.strip() == "." else line.strip())
            else:
                in_description = False
        if name and short:
            result.append((name, short, "\n".join(extended).strip()))
    return result


LISTS = Path("/var/lib/apt/lists")


def translations() -> str:
    """The Translation-en text of the release's main component (apt-get update first, see above)."""
    files = sorted(
        p
        for p in LISTS.glob("*_main_i18n_Translation-en*")
        if "security" not in p.name and "updates" not in p.name
    )
    if not files:
        raise RuntimeError(
            "no Translation-en package list: run `apt-get update -o Acquire::Languages=en` once (needs the Debian mirror)"
        )
    return subprocess.run(
        ["/usr/lib/apt/apt-helper", "cat-file", str(files[0])], capture_output=True, text=True, check=True
    ).stdout


def build_documents(dump: str, documents: int) -> list[EvalDocument]:
    seen_extended: set[str] = set()
    seen_names: set[str] = set()
    candidates = []
    for name, short, extended in _packages(dump):
        if name in seen_names or _SKIP.search(name) or len(extended) < MIN_CHARS:
            continue
        key = hashlib.sha256(extended.encode()).hexdigest()
        if key in seen_extended:
            continue
        seen_names.add(name)
        seen_extended.add(key)
        candidates.append((hashlib.sha256(name.encode()).hexdigest(), name, short, extended))
    candidates.sort()
    return [
        EvalDocument(f"debian:{name}", name, f"{short}\n\n{extended}\n")
        for _, name, short, extended in candidates[:documents]
    ]


def _sentences(extended: str) -> list[str]:
    text = re.sub(r"\s+", " ", extended)
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if 40 <= len(s.strip()) <= 220]


def build_questions(corpus: list[EvalDocument], questions: int) -> list[Question]:
    frequency: Counter[str] = Counter()
    for document in corpus:
        frequency.update(set(_WORD.findall(document.content.lower())))
    result = []
    for document in sorted(corpus, key=lambda d: hashlib.sha256(f"q:{d.document_id}".encode()).hexdigest()):
        extended = document.content.split("\n\n", 1)[1]
        name_parts = {p for p in re.split(r"[-.]", document.title.lower()) if len(p) > 2} | {
            document.title.lower()
        }
        for sentence in _sentences(extended):
            words = sentence.lower().rstrip(".!?").split()
            rare = [w for w in _WORD.findall(sentence.lower()) if frequency[w] == 1 and w not in name_parts]
            if len(rare) < 2 or len(words) < 7:
                continue
            digest = hashlib.sha256(sentence.encode()).digest()
            kept = []
            for i, word in enumerate(words):
                bare = re.sub(r"[^a-z0-9+\-]", "", word)
                if bare in name_parts or any(part in bare for part in name_parts if len(part) > 4):
                    continue  # the package's own name would make the question trivial
                if i == 0 and bare in {"it", "this", "the", "a", "an"}:
                    continue
                if bare not in rare and digest[i % len(digest)] % 4 == 0:
                    continue  # drop a quarter of the ordinary words
                kept.append(word.strip(",;:()"))
            if len(kept) < 5:
                continue
            template = _TEMPLATES[digest[0] % len(_TEMPLATES)]
            result.append(Question(template.format(s=" ".join(kept)), document.document_id))
            break
        if len(result) == questions:
            break
    return result
