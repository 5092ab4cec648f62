"""``python -m parapet.upstream [--host H] [--port P]``: the emulator as a process of its own."""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from parapet.upstream.server import serve_forever


def main() -> None:
    parser = argparse.ArgumentParser(description="Fault-injecting OpenAI/Anthropic upstream emulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(args.host, args.port))


if __name__ == "__main__":
    main()
