"""What moderation's stream tests share: a stream run over chunks, seeded random cuttings, and texts (scripts
written without spaces, a JWT, a private key) the unit and integration tests both use."""

from __future__ import annotations

import random

from services.moderation.masking import MaskingVault
from services.moderation.policy import DEFAULT_POLICY, Policy
from services.moderation.screener import Screener
from services.moderation.stream import StreamScreener


def run(screener: Screener, chunks: list[str], vault: MaskingVault | None = None, protected: tuple[str, ...] = (),
        policy: Policy = DEFAULT_POLICY) -> tuple[StreamScreener, list[str]]:  # fmt: skip
    """A stream of ``chunks`` and what each chunk, then the end, released."""
    stream = StreamScreener(screener.output_detectors(policy, protected), policy, vault or MaskingVault())
    released = [stream.feed(chunk).released for chunk in chunks]
    released.append(stream.finish().released)
    return stream, released


def random_chunkings(text: str, seed: int, times: int, most_cuts: int = 60) -> list[list[str]]:
    """``text`` cut at 1 to ``most_cuts`` random places, ``times`` over: the same cuttings every run (seeded)."""
    if len(text) < 2:
        return [[text] for _ in range(times)]  # nothing to cut
    rng = random.Random(seed)
    chunkings = []
    for _ in range(times):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, min(most_cuts, len(text) - 1))))
        chunkings.append([text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)])
    return chunkings


# Text before and after a value, with no space: Japanese, Chinese, Korean (particles glued to the value) and
# Thai (its last letter before the value carries tone and vowel marks). Shared with the integration tests.
WITHOUT_SPACES = {
    "ja": ("連絡先は", "までお願いします"),
    "zh": ("请发到", "谢谢"),
    "ko": ("연락처는", "입니다"),
    "th": ("ติดต่อที่", "ครับ"),
}
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
PRIVATE_KEY = (
    "-----BEGIN RSA PRIVATE KEY-----\n" + "MIIEpAIBAAKCAQEA7x" * 4 + "\n-----END RSA PRIVATE KEY-----"
)
