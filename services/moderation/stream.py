"""Incremental screening of a streamed model output, with the smallest hold-back and linear total work.

Each chunk is appended to the unreleased tail and only that tail (plus ``LEFT_CONTEXT`` code points of
released text as the detectors read it, for look-behinds and context words) is scanned: the whole answer is
never rescanned, so total work is O(received + chunks x window), counted in ``scanned_chars``. What is
released is every code point before the earliest place a match could still be in progress:

- per detector, the start of its last ``max_tokens`` whitespace-separated pieces (a match cannot span
  more), bounded by ``max_span - 1`` code points, measured before the ``lookahead`` context it reads;
  for a detector whose matches open with an anchor piece, only from a few pieces before the first anchor
  in that reach (``anchored_start``), which is what lets prose through after a few words; never before the
  detector's ``hold_floor`` (for those whose values hold no letter outside the value scripts, the last such
  letter; for a password, the last one no open match precedes), which is what lets Chinese, Japanese or
  Thai prose (one piece) through;
- never inside a finding that reaches into the held tail (a private key whose END line has not come);
- never inside a masking placeholder, so ``<EMAIL_1>`` split over chunks is restored whole.

Findings are final once released text lies behind them; a finding whose action is BLOCK stops the
stream: nothing after it is released.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from parapet.moderation.v1 import finding_pb2
from services.moderation.detectors.base import Detection, Detector
from services.moderation.detectors.scripts import after_last_non_value_letter
from services.moderation.detectors.visible import visible
from services.moderation.engine import (
    Applied,
    apply_policy,
    detect_all,
    passive_categories,
    reads_invisible,
    to_finding,
)
from services.moderation.masking import MAX_PLACEHOLDER, PLACEHOLDER, MaskingVault
from services.moderation.policy import Policy

# ≥ the context-word window of any detector (detectors/context.py, 48) and the longest text a pattern reads
# before its value: a URL's scheme and user name before its password (21 + 3 + 64 + 1 = 89 code points). With
# 64, a stream released such a URL up to the last letter of a Chinese or Arabic user name (no address or number
# holds one), the next scan no longer saw the scheme, and the password went out as written.
LEFT_CONTEXT = 96
# The left context is counted in the code points detectors read (invisible characters dropped, ``visible``),
# and kept to at most this many times LEFT_CONTEXT as written, so padding cannot make every scan long.
MAX_CONTEXT_FACTOR = 4
# A held tail up to this long is rescanned with every chunk; a longer one (a token a JWT could still span,
# an unterminated private key: up to 16,384 code points) only once the text after it is half its length.
RESCAN_EVERY_CHUNK = 512


_PIECE = re.compile(r"\S+")


def anchored_start(text: str, n: int, detector: Detector, last_letter: int | None) -> int:
    """Earliest index at which a match of ``detector`` not yet complete at ``n`` could start.

    Without an anchor this is :func:`tail_start` over the detector's whole reach (its last ``max_tokens``
    pieces before the ``lookahead`` it reads). A detector with ``is_anchor`` and ``lead`` promises that
    each match has, among its first ``lead`` pieces, one its ``is_anchor`` accepts (a digit for a phone
    number, a street-type word or a house number for an address), and with ``may_lead`` which pieces can
    come before that anchor (an address's are capitalised words and numbers). Then a match in progress
    starts at most ``lead - 1`` such pieces before the first complete anchor piece in reach, or, with none,
    among the last ``lead - 1`` such pieces and the unfinished one: prose ending in lower-case words holds
    back only its unfinished word, not an address detector's 24 pieces.

    Pieces are whitespace-separated, and Chinese, Japanese or Thai prose is one piece: all of it was held, as
    far back as a JWT could reach (10,000 code points), until the answer ended. Its reach ends at
    :func:`hold_floor` instead; ``last_letter`` is where the last letter outside the value scripts in ``text``
    ends (0: none), found once for every detector, or None for ASCII text, which holds none and needs no floor.
    """
    end = max(0, n - getattr(detector, "lookahead", 0))
    floor = 0 if last_letter is None else hold_floor(text, end, detector, last_letter)
    reach = tail_start(text, end, detector.max_span, detector.max_tokens, floor)
    is_anchor = getattr(detector, "is_anchor", None)
    if is_anchor is None:
        return reach
    may_lead = getattr(detector, "may_lead", None)
    lead: int = detector.lead  # type: ignore[attr-defined]
    pieces = [(m.start(), m.group()) for m in _PIECE.finditer(text, reach, n)]
    unfinished = bool(pieces) and pieces[-1][0] + len(pieces[-1][1]) == n
    complete = pieces[:-1] if unfinished else pieces
    anchor = next((i for i, (_, piece) in enumerate(complete) if is_anchor(piece)), None)
    # From the anchor piece, or from what is still to come, back over pieces that may lead up to it.
    index = anchor if anchor is not None else len(complete)
    start = complete[anchor][0] if anchor is not None else (pieces[-1][0] if unfinished else n)
    for _ in range(lead - 1):
        index -= 1
        if index < 0 or (may_lead is not None and not may_lead(complete[index][1])):
            break
        start = complete[index][0]
    return max(reach, start)


def hold_floor(text: str, end: int, detector: Detector, last_letter: int) -> int:
    """Where a match of ``detector`` in progress at ``end`` could start at the earliest, by the scripts before it.

    Said by the detector's ``hold_floor``: for addresses, numbers and keys, whose values hold no letter outside
    the value scripts, just after the last such letter (``scripts.after_last_non_value_letter``); for a
    password, that letter only when no match opened before it is still open. Without one, anywhere (blocked
    terms, topics and leaks, written in any script). ``last_letter`` is where the last such letter of ``text``
    ends (0: none): when it lies before ``end`` it is the answer of ``after_last_non_value_letter`` for every
    detector using it, and a regex scan per detector per chunk is saved.
    """
    own = getattr(detector, "hold_floor", None)
    if own is None:
        return 0
    lowest = max(0, end - (detector.max_span - 1))
    if own is after_last_non_value_letter and last_letter <= end:
        return max(lowest, last_letter)
    return int(own(text, lowest, end))


def tail_start(text: str, end: int, max_span: int, max_tokens: int, floor: int = 0) -> int:
    """Earliest index in ``text[:end]``, not before ``floor``, at which a match of at most ``max_span`` code
    points and ``max_tokens`` whitespace-separated pieces, not yet complete at ``end``, could start."""
    lower = max(floor, end - (max_span - 1))
    tokens = 1 if end == 0 or text[end - 1].isspace() else 0  # the piece still to come counts
    if tokens >= max_tokens:
        return end
    position = end
    for i in range(end - 1, lower - 1, -1):
        if not text[i].isspace() and (i == 0 or text[i - 1].isspace()):
            tokens += 1
            position = i
            if tokens >= max_tokens:
                return position
    return lower if tokens < max_tokens else position


def left_context(released: str) -> str:
    """The end of ``released`` that holds its last ``LEFT_CONTEXT`` code points as the detectors read them,
    at most ``MAX_CONTEXT_FACTOR`` times that as written.

    Detectors read the text without invisible characters, so a label ("SSN", "api_key =") is within their
    context window whatever was typed between it and its value; counted as written, 80 zero-width spaces
    after "SSN" pushed it out of the stream's context, and the number went out as written. The bound gives up
    a label padded with more than that (400 of them), which the whole text still reads; unbounded, padding
    made every chunk rescan it.
    """
    last = released[-LEFT_CONTEXT:]
    if last.isascii() or visible(last) is None:
        # Nothing dropped among the last LEFT_CONTEXT code points, so they are the last the detectors read
        # (a run kept there alone is kept in the longer text too: a run at its start may reach further back,
        # but it stays kept by the same right-hand neighbour; any other has the same neighbours). Asked of the
        # whole bounded tail, ``visible`` cost each chunk of a French answer 6 µs; of these, 2.
        return last
    tail = released[-LEFT_CONTEXT * MAX_CONTEXT_FACTOR :]
    view = visible(tail)
    if view is None:
        return tail[-LEFT_CONTEXT:]
    if len(view.text) <= LEFT_CONTEXT:
        return tail
    return tail[view.position(len(view.text) - LEFT_CONTEXT) :]


@dataclass
class StreamStep:
    """What one chunk (or the end) produced: text safe to send now and findings made final."""

    released: str = ""
    findings: list[finding_pb2.Finding] = field(default_factory=list)
    blocked: bool = False


class StreamScreener:
    def __init__(self, detectors: Sequence[Detector], policy: Policy, vault: MaskingVault) -> None:
        self._detectors = list(detectors)
        self._policy = policy
        self._passive = passive_categories(policy)
        self._vault = vault
        self._buffer = ""  # received, not yet released (as the model wrote it)
        self._context = ""  # released text holding its last LEFT_CONTEXT visible code points, as written
        self._base = 0  # stream offset of _buffer[0]
        self._scanned_held = 0  # code points at the start of _buffer that the last scan held back
        self.received_chars = 0
        self.released_chars = 0
        self.scanned_chars = 0  # code points handed to detectors: the linear-work measure
        self.blocked = False
        self.applied: list[Applied] = []

    @property
    def held_chars(self) -> int:
        return len(self._buffer)

    def feed(self, chunk: str) -> StreamStep:
        if self.blocked:
            return StreamStep(blocked=True)
        if not chunk:
            # Nothing new, so the last scan's answer stands. Empty chunks are not bounded by the text limit,
            # and rescanning the held tail for each (about 200 µs) made a stream of them unbounded work.
            return StreamStep()
        self._buffer += chunk
        self.received_chars += len(chunk)
        if not self._worth_rescanning():
            return StreamStep()  # answered, with nothing yet: the same as a chunk whose text is held back
        return self._advance(final=False)

    def finish(self) -> StreamStep:
        if self.blocked:
            return StreamStep(blocked=True)
        return self._advance(final=True)

    def decision(self) -> int:
        if self.blocked:
            return finding_pb2.DECISION_BLOCK
        return finding_pb2.DECISION_MODIFIED if self.applied else finding_pb2.DECISION_PASS

    def _worth_rescanning(self) -> bool:
        """Whether to scan now: always when the held tail is short; a long one only once the text after it
        is half its length, so each code point is scanned a bounded number of times. Rescanning a held
        10,000-code-point tail with every 4-character chunk made a 40,000-character base64 answer cost
        28 s of CPU on the event loop. Deferring a scan is the same as receiving bigger chunks: what is
        released, and when a block stops the stream, does not depend on the chunking."""
        new = len(self._buffer) - self._scanned_held
        return self._scanned_held <= RESCAN_EVERY_CHUNK or 2 * new >= self._scanned_held

    def _hold(self) -> int:
        buffer, n = self._buffer, len(self._buffer)
        # An ASCII tail, the chat path's common case (one O(1) check per chunk), has no invisible character to
        # drop and no letter outside the value scripts to bound a reach: no ``visible`` and no floors. Worked
        # out per detector, they made each 4-character chunk of English prose cost 8% more (`python -m bench
        # moderation_speed`: 0.069 against 0.064 ms p50, docs/benchmarks.md).
        plain = buffer.isascii()
        # Placeholders are restored in the text as written; one is ASCII, so none is in progress before a
        # letter outside the value scripts.
        last_letter = None if plain else after_last_non_value_letter(buffer, 0, n)
        limit = tail_start(buffer, n, MAX_PLACEHOLDER, 1, last_letter or 0)
        # Detectors read the text without invisible characters (engine.detect_all), so where a match could
        # still start is measured there too: pieces and spans as they read them, the invisible characters a
        # value holds counting against neither. Mapped back, the start stays on the value's first code point.
        view = None if plain else visible(buffer)
        seen_last_letter = 0 if view is None else after_last_non_value_letter(view.text, 0, len(view.text))
        for detector in self._detectors:
            if view is None or reads_invisible(detector):
                limit = min(limit, anchored_start(buffer, n, detector, last_letter))
            else:
                start = anchored_start(view.text, len(view.text), detector, seen_last_letter)
                limit = min(limit, view.position(start))
        return limit

    def _advance(self, *, final: bool) -> StreamStep:
        scan = self._context + self._buffer
        self.scanned_chars += len(scan)
        shift = len(self._context)
        detections = [
            dataclasses.replace(d, start=d.start - shift, end=d.end - shift)
            for d in detect_all(self._detectors, scan, self._passive)
            if d.start >= shift
        ]
        limit = len(self._buffer) if final else self._hold()
        limit = self._settle_limit(limit, detections, final=final)
        ready = [d for d in detections if d.end <= limit]
        screened = apply_policy(self._buffer[:limit], ready, self._policy, None)
        step = StreamStep()
        for applied in screened.applied:
            # Kept with offsets from the start of the stream, as the summary reports them.
            d = applied.detection
            applied.detection = dataclasses.replace(d, start=d.start + self._base, end=d.end + self._base)
            self.applied.append(applied)
            step.findings.append(to_finding(applied))
        if screened.decision == finding_pb2.DECISION_BLOCK:
            self.blocked = step.blocked = True
            self._buffer = ""
            return step
        released, _ = self._vault.restore(screened.text)
        self.released_chars += len(released)
        step.released = released
        self._context = left_context(self._context + self._buffer[:limit])
        self._buffer = self._buffer[limit:]
        self._base += limit
        self._scanned_held = len(self._buffer)
        return step

    def _settle_limit(self, limit: int, detections: Sequence[Detection], *, final: bool) -> int:
        """Move ``limit`` left until no finding and no placeholder straddles it. Before the end, a finding
        that reaches the end of the text received may still grow (a private key runs on to its END line):
        it is held whole, or a chunk ending on a line break released the rest of the key unredacted."""
        # The end of what the detectors read: invisible characters received after a value's last code point
        # are not part of it, and the value may still grow with the next chunk.
        view = visible(self._buffer)
        end = len(self._buffer) if view is None else view.end_of_visible()
        moved = True
        while moved:
            moved = False
            for d in detections:
                may_grow = not final and d.end >= end
                if d.start < limit and (limit < d.end or may_grow):
                    limit, moved = d.start, True
            window_start = max(0, limit - MAX_PLACEHOLDER)
            for match in PLACEHOLDER.finditer(self._buffer, window_start, limit + MAX_PLACEHOLDER):
                if match.start() < limit < match.end():
                    limit, moved = match.start(), True
        return limit
