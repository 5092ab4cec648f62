"""End to end: the people-facing ``parapet`` commands against a whole suite started by ``parapet up``.

One suite for the module (starting it takes most of a minute): the demo tenant ``parapet up`` sets up, a
first ``parapet chat`` answered from the sample documents with a citation of the right one, then every
other command as a person runs it, each as its own process with the documented exit codes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.support import REPO, Launcher, running_suite

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(400)]

DEMO_QUESTION = "How many vacation days do employees get?"
# The shape of a key (the CLI refuses anything else before any call), but no key auth ever issued.
WELL_FORMED_KEY = "pk_" + "a" * 12 + "_" + "b" * 43


@pytest.fixture(scope="module")
def suite() -> Iterator[Launcher]:
    with running_suite("parapet-cli-e2e-") as launcher:
        deadline = time.monotonic() + 120.0
        while "demo tenant" not in launcher.output:
            if time.monotonic() > deadline or launcher.proc.poll() is not None:
                pytest.fail(f"the demo tenant was not set up\n{launcher.logs()}")
            time.sleep(0.2)
        yield launcher


def cli_env(suite: Launcher, api_key: str | None = None) -> dict[str, str]:
    """The environment of a person using ``suite``: its home and base port, nothing else of Parapet's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARAPET_")}
    env.update({"PARAPET_HOME": str(suite.home), "PARAPET_BASE_PORT": str(suite.ports.base)})
    if api_key is not None:
        env["PARAPET_API_KEY"] = api_key
    return env


def parapet(
    suite: Launcher, *args: str, api_key: str | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """One CLI command as its own process, against ``suite``."""
    return subprocess.run(
        [sys.executable, "-m", "parapet.cli", *args],
        env=cli_env(suite, api_key),
        cwd=REPO,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_demo_tenant_key_and_samples_after_parapet_up(suite: Launcher) -> None:
    key_file = suite.home / "identity" / "demo.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert key_file.read_text().startswith("pk_")
    assert "5 documents stored (5 created" in suite.output, suite.output
    assert f'parapet chat "{DEMO_QUESTION}"' in suite.output


def test_first_chat_answers_from_the_sample_documents_with_a_citation(suite: Launcher) -> None:
    done = parapet(suite, "chat", DEMO_QUESTION)
    assert done.returncode == 0, done.stderr
    answer, _, sources = done.stdout.partition("\nsources:\n")
    assert "28 days" in answer
    assert sources.splitlines()[0] == "[1] Leave and holidays at Larkspur Robotics (leave-policy.md)"
    # The one-line summary on stderr: model, tokens, cost, cache, Parapet's own time.
    summary = done.stderr.strip().splitlines()[-1]
    assert summary.startswith("local/local · ") and "tokens" in summary and "parapet " in summary

    events = parapet(suite, "chat", "--json", "--no-retrieval", "Say hello")
    assert events.returncode == 0, events.stderr
    kinds = [next(iter(json.loads(line))) for line in events.stdout.splitlines()]
    assert "citation" not in kinds and kinds[-1] == "summary" and "text_delta" in kinds


def test_conversation_keeps_its_history_and_ctrl_c_at_the_prompt_exits_130(suite: Launcher) -> None:
    talk = parapet(suite, "chat", stdin="How long does the Kestrel K2 battery last?\nAnd the warranty?\n")
    assert talk.returncode == 0, talk.stderr
    assert talk.stdout.count("sources:") == 2 and "kestrel-k2-faq.md" in talk.stdout
    assert "you>" not in talk.stdout + talk.stderr  # the prompt is for a terminal, not for piped questions
    assert len([line for line in talk.stderr.splitlines() if line.startswith("local/local · ")]) == 2

    proc = subprocess.Popen(
        [sys.executable, "-m", "parapet.cli", "chat"],
        env=cli_env(suite),
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        assert "ask away" in proc.stderr.readline()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ingest_reports_each_file_and_fails_only_the_bad_ones(suite: Launcher, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    (folder / "nested").mkdir(parents=True)
    (folder / "pricing.md").write_text("# Pricing\n\nThe Kestrel K2 costs 499 EUR including the dock.\n")
    (folder / "nested" / "notes.txt").write_text("Quarterly planning happens in the first week of March.\n")
    (folder / "image.png").write_bytes(b"\x89PNG")  # skipped: not a document type
    (folder / "nested" / "empty.md").write_text("")
    done = parapet(
        suite, "ingest", str(folder), str(tmp_path / "missing.md"), "--prefix", "t/", "--group", "ops"
    )
    assert done.returncode == 4, done.stderr
    assert "created    t/pricing.md" in done.stdout and "created    t/nested/notes.txt" in done.stdout
    assert "rejected   t/nested/empty.md: INVALID_ARGUMENT" in done.stderr
    assert "missing.md: no such file or folder" in done.stderr
    assert "2 documents stored (2 created, 0 updated, 0 unchanged), 2 failed" in done.stdout

    again = parapet(suite, "ingest", str(folder / "pricing.md"), "--prefix", "t/", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["results"][0]["outcome"] == "unchanged"


def test_tenants_and_keys_lifecycle(suite: Launcher) -> None:
    created = parapet(suite, "tenants", "create", "acme", "--name", "Acme Corp")
    assert created.returncode == 0, created.stderr
    again = parapet(suite, "tenants", "create", "acme")
    assert again.returncode == 1
    assert "ALREADY_EXISTS" in again.stderr and len(again.stderr.strip().splitlines()) == 1

    # The default credential is the demo tenant's admin key: another tenant is not its to administer.
    mismatch = parapet(suite, "keys", "create", "--tenant", "acme", "--user", "bot")
    assert mismatch.returncode == 1 and "TENANT_MISMATCH" in mismatch.stderr
    operator = (suite.home / "identity" / "operator.key").read_text().strip()
    key = parapet(
        suite,
        "keys",
        "create",
        "--tenant",
        "acme",
        "--user",
        "bot",
        "--role",
        "admin",
        "--json",
        api_key=operator,
    )
    assert key.returncode == 0, key.stderr
    secret = json.loads(key.stdout)["secret"]
    listed = parapet(suite, "keys", "list", "--json", api_key=secret)
    keys = json.loads(listed.stdout)["api_keys"]
    assert [k["user_id"] for k in keys] == ["bot"] and "secret" not in listed.stdout

    # A tenant's own key cannot manage tenants: one clear line, exit 1.
    denied = parapet(suite, "tenants", "list", api_key=secret)
    assert denied.returncode == 1 and "PERMISSION_DENIED" in denied.stderr

    disabled = parapet(suite, "tenants", "disable", "acme", "--reason", "test")
    assert disabled.returncode == 0 and "disabled" in disabled.stdout
    refused = parapet(suite, "keys", "list", api_key=secret)
    assert refused.returncode == 1 and "TENANT_DISABLED" in refused.stderr
    assert parapet(suite, "tenants", "enable", "acme").returncode == 0
    listing = parapet(suite, "tenants", "list", "--json")
    assert {t["tenant_id"]: t["state"] for t in json.loads(listing.stdout)["tenants"]}["acme"] == (
        "TENANT_STATE_ACTIVE"
    )

    revoked = parapet(suite, "keys", "revoke", keys[0]["api_key_id"], "--tenant", "acme", api_key=operator)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    gone = parapet(suite, "keys", "list", api_key=secret)
    assert gone.returncode == 1 and "API_KEY_REVOKED" in gone.stderr


def test_policy_show_and_set_by_flags_and_file(suite: Launcher, tmp_path: Path) -> None:
    shown = parapet(suite, "policy", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    policy = json.loads(shown.stdout)
    version = int(policy["version"])

    changed = parapet(suite, "policy", "set", "--max-tokens", "800")
    assert changed.returncode == 0, changed.stderr
    assert f"policy version {version + 1} (was {version})" in changed.stdout

    # An edit based on the version read before someone else's change is refused, not applied.
    stale = tmp_path / "policy.json"
    stale.write_text(json.dumps(policy))
    refused = parapet(suite, "policy", "set", "--file", str(stale))
    assert refused.returncode == 1 and "POLICY_VERSION_MISMATCH" in refused.stderr

    policy["version"] = str(version + 1)
    policy.setdefault("models", {})["allowed_models"] = ["local"]
    stale.write_text(json.dumps(policy))
    applied = parapet(suite, "policy", "set", "--file", str(stale))
    assert applied.returncode == 0, applied.stderr
    current = json.loads(parapet(suite, "policy", "show", "--json").stdout)
    assert current["version"] == str(version + 2) and current["models"]["allowed_models"] == ["local"]

    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({"modles": {}}))
    bad = parapet(suite, "policy", "set", "--file", str(typo))
    assert bad.returncode == 2 and "modles" in bad.stderr


def test_usage_and_audit_show_the_chats(suite: Launcher) -> None:
    asked = parapet(suite, "chat", "--feature", "cli-test", "How long does the Kestrel K2 battery last?")
    assert asked.returncode == 0, asked.stderr
    request_id = asked.stderr.strip().splitlines()[-1].rsplit("request ", 1)[1]

    deadline = time.monotonic() + 30
    while True:  # metering settles and audit records arrive off the request path
        usage = json.loads(parapet(suite, "usage", "--by", "feature", "--json").stdout)
        tail = parapet(suite, "audit", "tail", "-n", "50")
        features = {a.get("feature"): a for a in usage["aggregates"]}
        if "cli-test" in features and request_id in tail.stdout:
            break
        assert time.monotonic() < deadline, (usage, tail.stdout)
        time.sleep(0.5)
    assert int(features["cli-test"]["request_count"]) == 1
    line = next(line for line in tail.stdout.splitlines() if request_id in line)
    assert " demo " in line and line.endswith(" ok")

    table = parapet(suite, "usage", "--by", "model,feature", "--invoice")
    assert table.returncode == 0, table.stderr
    assert "cli-test" in table.stdout and "invoice preview (billing)" in table.stdout

    verified = parapet(suite, "audit", "verify")
    assert verified.returncode == 0, verified.stderr
    assert "audit chain of tenant demo intact" in verified.stdout


def test_jobs_submit_wait_list_results_and_delete(suite: Launcher, tmp_path: Path) -> None:
    questions = tmp_path / "questions.txt"
    questions.write_text(
        "How many vacation days do employees get?\n\nHow long does the Kestrel K2 battery last?\n"
    )
    submitted = parapet(suite, "jobs", "submit", str(questions), "--wait", "--label", "batch=e2e", "--json")
    assert submitted.returncode == 0, submitted.stderr
    (job,) = json.loads(submitted.stdout)["jobs"]
    assert job["state"] == "JOB_STATE_SUCCEEDED" and job["progress"]["succeeded_items"] == 2
    assert job["metadata"] == {"batch": "e2e"} and "expire_time" in job

    listed = parapet(suite, "jobs", "list", "--state", "succeeded")
    assert listed.returncode == 0, listed.stderr
    assert job["job_id"] in listed.stdout and "2/2" in listed.stdout

    results = parapet(suite, "jobs", "results", job["job_id"])
    assert results.returncode == 0, results.stderr
    lines = results.stdout.splitlines()
    assert lines[0].startswith("[0] ") and any(line.startswith("[1] ") for line in lines)
    assert "vacation" in results.stdout.lower() or "days" in results.stdout.lower()

    finished = parapet(suite, "jobs", "cancel", job["job_id"])  # a finished job: nothing changes
    assert finished.returncode == 0 and "succeeded" in finished.stdout, finished.stderr
    assert parapet(suite, "jobs", "delete", job["job_id"]).returncode == 0

    gone = parapet(suite, "jobs", "show", job["job_id"])
    assert gone.returncode == 1 and "NOT_FOUND" in gone.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    refused = parapet(suite, "jobs", "submit", str(empty))
    assert refused.returncode == 2 and "holds no question" in refused.stderr


def test_erase_removes_a_user_s_jobs_answers_documents_and_audited_bodies(
    suite: Launcher, tmp_path: Path
) -> None:
    created = parapet(suite, "keys", "create", "--user", "erin", "--role", "admin", "--json")
    assert created.returncode == 0, created.stderr
    erin = json.loads(created.stdout)["secret"]
    note = tmp_path / "erin.md"
    note.write_text("# Erin's notes\n\nErin's locker code is 4711.\n")
    assert parapet(suite, "ingest", str(note), "--prefix", "erin/", api_key=erin).returncode == 0
    assert parapet(suite, "chat", "--no-retrieval", "What is my locker code?", api_key=erin).returncode == 0
    questions = tmp_path / "erin.txt"
    questions.write_text("Where is the locker room?\n")
    assert parapet(suite, "jobs", "submit", str(questions), "--wait", api_key=erin).returncode == 0
    deadline = time.monotonic() + 30
    while len(parapet(suite, "audit", "tail", "--user", "erin").stdout.strip().splitlines()) < 2:
        assert time.monotonic() < deadline, "erin's two chats were not audited"
        time.sleep(0.5)

    unconfirmed = parapet(suite, "erase", "erin", "--reason", "ticket-7")
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
    # A caller without admin erases nothing: a `member` role that may only chat, and a key of it.
    policy = json.loads(parapet(suite, "policy", "show", "--json").stdout)  # its version: the one it edits
    policy["roles"].append({"role": "member", "permissions": ["PERMISSION_CHAT"]})
    policy_file = tmp_path / "with-member.json"
    policy_file.write_text(json.dumps(policy))
    assert parapet(suite, "policy", "set", "--file", str(policy_file)).returncode == 0
    member = parapet(suite, "keys", "create", "--user", "finn", "--role", "member", "--json")
    assert member.returncode == 0, member.stderr
    finn = json.loads(member.stdout)["secret"]
    refused = parapet(suite, "erase", "erin", "--reason", "ticket-7", "--yes", api_key=finn)
    assert refused.returncode == 1 and "admin" in refused.stderr and "nothing was erased" in refused.stderr

    erased = parapet(suite, "erase", "erin", "--reason", "ticket-7", "--yes", "--json")
    assert erased.returncode == 0, erased.stderr
    counts = json.loads(erased.stdout)
    # Everything was still there for the admin's run: finn's attempt changed nothing.
    assert counts["jobs_deleted"] == 1 and counts["documents_deleted"] == 1
    assert counts["audit_records_erased"] >= 2
    # Her chat's and her job's questions were answered by the model, and their answers cached as hers.
    assert counts["cached_answers_deleted"] >= 1
    assert "(no jobs)" in parapet(suite, "jobs", "list", "--user", "erin").stdout
    again = json.loads(parapet(suite, "erase", "erin", "--reason", "ticket-7", "--yes", "--json").stdout)
    assert {name: count for name, count in again.items() if name != "user_id"} == {
        "jobs_cancelled": 0,
        "jobs_deleted": 0,
        "stored_answers_deleted": 0,
        "cached_answers_deleted": 0,
        "documents_deleted": 0,
        "audit_records_erased": 0,
        "set_aside_audit_records_deleted": 0,
    }
    verified = parapet(suite, "audit", "verify")  # metadata and hashes stay: the chain still verifies
    assert verified.returncode == 0 and "intact" in verified.stdout


def test_unreachable_suite_and_missing_credentials(suite: Launcher, tmp_path: Path) -> None:
    env_home = parapet(suite, "keys", "list", "--home", str(tmp_path / "nowhere"))
    assert env_home.returncode == 2 and "no API key" in env_home.stderr
    unreachable = parapet(suite, "audit", "verify", "--base-port", "1100", "--api-key", WELL_FORMED_KEY)
    assert unreachable.returncode == 3 and "UNAVAILABLE" in unreachable.stderr


# A folder as people have them: a file whose name is not UTF-8 (an old archive's Latin-1 name), a symbolic link
# loop, a dangling link and an empty folder beside ordinary documents: each odd entry is its own problem or
# skipped, the rest is stored.
def test_ingest_reports_a_name_that_is_not_utf8_and_stores_the_rest(suite: Launcher, tmp_path: Path) -> None:
    folder = tmp_path / "odd"
    (folder / "empty").mkdir(parents=True)
    (folder / "guide.md").write_text("# Guide\n\nThe staff canteen opens at 11:30 on weekdays.\n")
    latin1 = os.fsencode(folder) + b"/caf\xe9-menu.md"  # "café" in Latin-1: not a UTF-8 name
    Path(os.fsdecode(latin1)).write_text("# Menu\n\nSoup of the day.\n")
    (folder / "loop").symlink_to(folder)  # a folder that contains itself
    (folder / "dangling.md").symlink_to(folder / "gone.md")

    done = parapet(suite, "ingest", str(folder), "--prefix", "odd/")
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 4, done.stderr
    assert "created    odd/guide.md" in done.stdout
    assert "caf\\xe9-menu.md: its name is not UTF-8" in done.stderr
    assert "1 documents stored (1 created, 0 updated, 0 unchanged), 1 failed" in done.stdout


def test_an_answer_with_characters_the_terminal_cannot_show(suite: Launcher, tmp_path: Path) -> None:
    # An ASCII terminal (PYTHONIOENCODING, or a locale without UTF-8) and a document with an é and an emoji: the
    # answer streamed up to its first such character, then the command died with a UnicodeEncodeError.
    (tmp_path / "canteen.md").write_text(
        "# Canteen\n\nOn Fridays the canteen serves crème brûlée 🍮 at noon.\n"
    )
    stored = parapet(suite, "ingest", str(tmp_path / "canteen.md"), "--prefix", "ascii/")
    assert stored.returncode == 0, stored.stderr
    for extra in ([], ["--json"]):
        done = subprocess.run(
            [sys.executable, "-m", "parapet.cli", "chat", *extra, "What does the canteen serve on Fridays?"],
            env={**cli_env(suite), "PYTHONIOENCODING": "ascii"},
            cwd=REPO,
            capture_output=True,
            timeout=60,
        )
        assert b"Traceback" not in done.stderr, done.stderr.decode(errors="replace")
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        out = done.stdout.decode("ascii")
        if extra:  # JSON keeps every character, escaped
            text = "".join(
                json.loads(line).get("text_delta", {}).get("text", "") for line in out.splitlines()
            )
            assert "crème brûlée 🍮" in text
        else:
            assert "cr?me br?l?e ?" in out and "ascii/canteen.md" in out
