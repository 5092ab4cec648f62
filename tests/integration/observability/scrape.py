"""Read a service's ``/metrics`` over HTTP, as Prometheus would, into samples a test can query."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

Key = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class Samples:
    by_key: dict[Key, float]

    def __getitem__(self, key: Key) -> float:
        return self.by_key[key]

    def names(self) -> set[str]:
        return {name for name, _ in self.by_key}

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels`` (0 when there is none)."""
        wanted = labels.items()
        return sum(v for (n, pairs), v in self.by_key.items() if n == name and wanted <= dict(pairs).items())


def _get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


async def scrape(port: int | None) -> Samples:
    assert port is not None, "the server was started without a metrics port"
    text = await asyncio.to_thread(_get, port)
    return Samples(
        {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
    )


async def until(
    read: Callable[[], Awaitable[Samples]], check: Callable[[Samples], bool], within: float = 15.0
) -> Samples:
    """Scrape until ``check`` holds (background work such as an outbox relay runs on its own time)."""
    deadline = time.monotonic() + within
    while True:
        samples = await read()
        if check(samples):
            return samples
        assert time.monotonic() < deadline, "the metrics never reached the expected values"
        await asyncio.sleep(0.05)
