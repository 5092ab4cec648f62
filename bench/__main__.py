"""Run benchmarks: `python -m bench` runs all of them, `python -m bench NAME ...` the named ones."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys

# Each entry is a module bench/<name>.py with `async def main() -> None` that writes its own section.
BENCHMARKS: tuple[str, ...] = ("kit_roundtrip",)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "names", nargs="*", help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})"
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    for name in args.names or BENCHMARKS:
        print(f"== bench {name}", flush=True)
        module = importlib.import_module(f"bench.{name}")
        asyncio.run(module.main())
    return 0


if __name__ == "__main__":
    sys.exit(main())
