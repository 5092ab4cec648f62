"""A cached answer streams back in bounded pieces cut at spaces, losing nothing."""

from __future__ import annotations

from services.inference.engine import CACHED_PIECE_CHARS, _split_for_stream


def test_pieces_rejoin_exactly_and_stay_bounded() -> None:
    text = " ".join(f"word{n}" for n in range(200)) + " " + "x" * 300 + " tail"
    pieces = _split_for_stream(text)
    assert "".join(pieces) == text
    assert len(pieces) > 10
    assert all(len(p) <= CACHED_PIECE_CHARS for p in pieces)
    assert all(p.startswith(" ") or i == 0 or not pieces[i - 1].endswith(" ") for i, p in enumerate(pieces))
    assert _split_for_stream("short answer") == ["short answer"]
    assert _split_for_stream("") == [""]
