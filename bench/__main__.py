"""Run benchmarks: `python -m bench` runs all of them, `python -m bench NAME ...` the named ones.

A benchmark is a module ``bench/<name>.py`` with ``async def main() -> None`` that writes its own section
of docs/benchmarks.md; it is found by that shape, so adding one needs no registration here.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import pkgutil
import sys
from pathlib import Path

_SUPPORT = frozenset({"report", "stats"})


def benchmarks() -> tuple[str, ...]:
    """Names of the modules under bench/ that define ``async def main()``."""
    names = []
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name.startswith("_") or info.name in _SUPPORT or info.ispkg:
            continue
        module = importlib.import_module(f"bench.{info.name}")
        if inspect.iscoroutinefunction(getattr(module, "main", None)):
            names.append(info.name)
    return tuple(sorted(names))


def main(argv: list[str] | None = None) -> int:
    known = benchmarks()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {', '.join(known)})")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(known))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(known)}")
    for name in args.names or known:
        print(f"== bench {name}", flush=True)
        asyncio.run(importlib.import_module(f"bench.{name}").main())
    return 0


if __name__ == "__main__":
    sys.exit(main())
