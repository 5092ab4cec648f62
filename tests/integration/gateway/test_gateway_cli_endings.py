"""How ``parapet chat`` ends an answer that does not end well, as its own process against the whole suite in one
process (tests/integration/gateway/conftest.py: real auth, moderation, metering, inference, audit and gateway,
the emulator as the model provider): an answer the tenant's output screening stops, and Ctrl-C mid-answer."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from parapet.auth.v1 import tenant_policy_pb2
from parapet.cli import failures
from parapet.kit.timeouts import within
from tests.integration.gateway.conftest import MODULE, Suite, Tenant

pytestmark = MODULE


async def chat(
    suite: Suite, tenant: Tenant, home: Path, *argv: str, interrupt_after: bytes | None = None
) -> tuple[int, str, str]:
    """``parapet chat ARGV`` as a person runs it with the tenant's key: exit code, stdout, stderr. With
    ``interrupt_after``, SIGINT (Ctrl-C) once stdout has shown that much."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARAPET_")}
    env["PARAPET_HOME"] = str(home)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "parapet.cli",
        "chat",
        *argv,
        "--no-retrieval",
        "--api-key",
        tenant.api_key,
        "--address",
        suite.gateway_address,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    shown = b""
    if interrupt_after is not None:
        while interrupt_after not in shown:
            chunk = await within(30, proc.stdout.read(1))
            assert chunk, f"the answer ended before {interrupt_after!r}: {shown!r}"
            shown += chunk
        proc.send_signal(signal.SIGINT)
    out, err = await within(60, proc.communicate())
    assert proc.returncode is not None  # set by communicate(); for the type checker
    return proc.returncode, (shown + out).decode(), err.decode()


async def test_an_answer_withheld_by_output_screening_is_said_so_and_is_no_success(
    suite: Suite, tmp_path: Path
) -> None:
    """The stream ends with status OK and finish reason content_filter; stdout had only "Sure: the card ".
    The command exited 0, so `parapet chat "..." > answer.txt` kept a cut answer as if it were the answer."""
    blocking = tenant_policy_pb2.ModerationPolicy(blocked_terms=["falcon"])
    tenant = await suite.tenant(tenant_policy_pb2.TenantPolicy(moderation=blocking))
    code, out, err = await chat(suite, tenant, tmp_path, "What is on file?", "--model", "leaky")
    assert "Traceback" not in err and "Falcon" not in out
    assert err.strip().splitlines()[-1] == (
        "parapet chat: the rest of the answer was withheld by the tenant's output screening "
        "(finish reason content_filter)"
    )
    assert code == failures.EXIT_PROBLEM_FOUND


async def test_ctrl_c_mid_answer_ends_its_line_and_exits_130(suite: Suite, tmp_path: Path) -> None:
    """ "parapet chat: interrupted" (stderr) came right after the last word of the cut answer (stdout), on the
    same line of the terminal."""
    tenant = await suite.tenant()
    question = " ".join(f"word{i}" for i in range(60))  # the "slow" model echoes it, a word per 50 ms
    code, out, err = await chat(
        suite, tenant, tmp_path, question, "--model", "slow", interrupt_after=b"word5"
    )
    assert code == failures.EXIT_INTERRUPTED
    assert err == "parapet chat: interrupted\n"
    assert out.startswith("You said: word0") and "word59" not in out
    assert out.endswith("\n"), repr(out)
