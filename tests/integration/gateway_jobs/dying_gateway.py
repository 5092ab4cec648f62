"""A gateway process whose job worker finishes ``argv[2]`` items of tenant ``argv[3]``'s jobs and then hangs in
the next one, until the test kills it (SIGKILL: no shutdown, no give-back). Run with the repository root as the
working directory."""

from __future__ import annotations

import asyncio
import json
import sys

from parapet.kit.testing import running
from services.gateway.jobs.settings import JobSettings
from tests.integration.gateway_jobs.conftest import Runner, gateway_app


async def main() -> None:
    settings = JobSettings(**json.loads(sys.argv[1]))
    assert settings.auth_address is not None
    runner = Runner(settings.auth_address, tenant=sys.argv[3], free_items=int(sys.argv[2]))
    runner.gate.clear()
    async with running(gateway_app(runner, settings.auth_address), settings):
        print("serving", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
