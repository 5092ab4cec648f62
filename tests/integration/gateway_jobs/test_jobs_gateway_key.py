"""The gateway's own key (its platform account's, `token-delegator`) replaced or revoked while jobs wait: the
jobs are not the ones refused, so they are given back, without using an attempt, until the key file holds a
key auth accepts, and then run. Only a refusal of the job's own principal (its submitter's key revoked, say)
fails a job (`test_a_revoked_key_fails_its_queued_job_with_the_reason`).

Until the fix the worker took auth's UNAUTHENTICATED for its own credential as the job's: after `parapet
bootstrap gateway --replace` every job a gateway claimed failed at once with `API_KEY_REVOKED`, and the
gateway kept the old key it had read until it restarted.
"""

from __future__ import annotations

import logging

import pytest
from google.protobuf import field_mask_pb2

from parapet.auth.v1 import tenant_admin_service_pb2, user_pb2
from parapet.gateway.v1 import job_pb2
from parapet.kit import timeouts
from tests.integration.auth.conftest import PLATFORM
from tests.integration.gateway_jobs.conftest import Suite, batch_request, bearer, ended, watch_until
from tests.integration.gateway_jobs.test_jobs import _given_back, _key, _lease


async def _revoke_the_gateway_s_key(suite: Suite) -> None:
    await suite.auth.admin.RevokeApiKey(
        tenant_admin_service_pb2.RevokeApiKeyRequest(
            tenant_id=PLATFORM, api_key_id=suite.service_key_id, reason="rotated"
        ),
        metadata=suite.auth.operator,
    )


async def test_jobs_wait_out_a_revoked_gateway_key_and_run_with_the_one_written_next(
    suite: Suite, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="services.gateway.jobs")
    runner = suite.runner()
    async with suite.gateway(runner) as jobs:
        # A first job: the gateway has read its key and holds a token of it.
        first = (await jobs.SubmitJob(batch_request(_key(), ["a"]), metadata=bearer(suite.key))).job.job_id
        assert (await watch_until(jobs, suite.key, first, ended)).state == job_pb2.JOB_STATE_SUCCEEDED

        # The operator revokes the gateway's key (a leak) before writing the new one.
        await _revoke_the_gateway_s_key(suite)
        job_id = (
            await jobs.SubmitJob(batch_request(_key(), ["b", "c"]), metadata=bearer(suite.key))
        ).job.job_id
        runs, attempts, _worker = await timeouts.within(30, _given_back(suite.database_url, job_id, 1))
        assert attempts == 0  # given back, its attempt taken back: not failed

        # Then the new key is written to the file (`parapet bootstrap gateway --replace` does both at once).
        _id, new_key = await suite.auth.new_key(PLATFORM, suite.service_account)
        suite.service_key_file.write_text(new_key + "\n")
        done = await watch_until(jobs, suite.key, job_id, ended, within=60)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error
    assert runner.calls == {0: 2, 1: 1}  # job 1's item 0, then job 2's items 0 and 1, each once
    runs, attempts, _worker = await _lease(suite.database_url, job_id)
    assert runs >= 2 and attempts == 1  # only the run that finished counts
    # Logged as an error naming the file the operator must fix.
    refused = {(getattr(r, "key_file", None), getattr(r, "why", None)) for r in caplog.records}
    assert (str(suite.service_key_file), "API_KEY_REVOKED") in refused


async def test_a_job_claimed_with_a_token_of_a_rotated_gateway_key_runs_with_the_new_key(
    suite: Suite,
) -> None:
    # `parapet bootstrap gateway --replace`: the new key is in the file, the old one revoked, while the gateway
    # still holds a token of the old one (minutes left).
    runner = suite.runner()
    async with suite.gateway(runner) as jobs:
        first = (await jobs.SubmitJob(batch_request(_key(), ["a"]), metadata=bearer(suite.key))).job.job_id
        assert (await watch_until(jobs, suite.key, first, ended)).state == job_pb2.JOB_STATE_SUCCEEDED
        _id, new_key = await suite.auth.new_key(PLATFORM, suite.service_account)
        suite.service_key_file.write_text(new_key + "\n")
        await _revoke_the_gateway_s_key(suite)
        job_id = (await jobs.SubmitJob(batch_request(_key(), ["b"]), metadata=bearer(suite.key))).job.job_id
        done = await watch_until(jobs, suite.key, job_id, ended, within=60)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error
    _runs, attempts, _worker = await _lease(suite.database_url, job_id)
    assert attempts == 1  # the run refused the old key's token was given back, not counted


async def _set_roles(suite: Suite, roles: list[str]) -> None:
    await suite.auth.admin.UpdateUser(
        tenant_admin_service_pb2.UpdateUserRequest(
            tenant_id=PLATFORM,
            user=user_pb2.User(user_id=suite.service_account, roles=roles),
            update_mask=field_mask_pb2.FieldMask(paths=["roles"]),
        ),
        metadata=suite.auth.operator,
    )


async def test_jobs_wait_while_the_gateway_s_account_may_not_delegate(suite: Suite) -> None:
    # PERMISSION_DENIED `PERMISSION_MISSING` from IssueDelegatedToken is about its caller too (the account's
    # role taken away, a key file holding another account's key): jobs wait for the operator, as above.
    await _set_roles(suite, [])
    runner = suite.runner()
    async with suite.gateway(runner) as jobs:
        job_id = (await jobs.SubmitJob(batch_request(_key(), ["a"]), metadata=bearer(suite.key))).job.job_id
        _runs, attempts, _worker = await timeouts.within(30, _given_back(suite.database_url, job_id, 1))
        assert attempts == 0
        await _set_roles(suite, ["token-delegator"])
        done = await watch_until(jobs, suite.key, job_id, ended, within=60)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error
    assert runner.calls == {0: 1}
