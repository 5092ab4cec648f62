"""Durable JetStream pull consumers that come back after NATS lost them.

A NATS restarted without its store (an emptyDir, a wiped volume) has neither the stream nor the durable consumer
a subscription is bound to, and every fetch from that subscription fails for good (``ServiceUnavailableError``:
nothing answers the consumer's subject any more), whereas a timeout only means no message came. The rule for
every pull consumer: a fetch that fails for anything other than a timeout drops the subscription, and the next
fetch subscribes again, which declares the stream (the service's own spec) and creates the durable with the
consumer's own configuration when it is missing.

An existing durable gets the consumer's configuration where JetStream lets it change (ack wait, max ack pending,
max deliver, backoff, filter, description...): a release or settings that change them take effect at the next
subscription, instead of being ignored for as long as the durable lives. What JetStream cannot change on an existing
consumer (deliver, ack and replay policy, ...) is logged as an error and the durable bound to as it is: its state
(what it delivered and what is acknowledged) is worth more than the new setting; deleting it (``nats consumer rm``)
is the operator's call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from parapet.kit.bus import Bus, StreamSpec

log = logging.getLogger(__name__)

# Fields JetStream refuses to change on an existing consumer.
FIXED_FIELDS = frozenset(
    {
        "deliver_policy",
        "opt_start_seq",
        "opt_start_time",
        "ack_policy",
        "replay_policy",
        "idle_heartbeat",
        "flow_control",
        "max_waiting",
        "deliver_subject",
        "deliver_group",
        "mem_storage",
    }
)
_IDENTITY_FIELDS = frozenset({"name", "durable_name"})


class DurableConsumer:
    """``config.durable_name`` on ``stream``, filtered to ``subject`` (unless ``config`` names filter subjects).

    ``on_declared`` sees the stream's configuration each time it is declared (before subscribing), for a
    consumer that checks what an operator changed (audit: its retention).
    """

    def __init__(
        self,
        bus: Bus,
        stream: StreamSpec,
        subject: str,
        config: ConsumerConfig,
        *,
        on_declared: Callable[[StreamConfig], None] | None = None,
    ) -> None:
        if not config.durable_name:
            raise ValueError("a durable consumer needs config.durable_name")
        self._bus = bus
        self._stream = stream
        self._subject = subject
        self._config = config
        self._on_declared = on_declared
        self._subscription: JetStreamContext.PullSubscription | None = None

    async def subscribe(self) -> JetStreamContext.PullSubscription:
        """A new subscription bound to the durable (``fetch`` keeps one of its own): declares the stream, and
        the durable when it is missing, first."""
        declared = await self._bus.ensure_stream(self._stream)
        if self._on_declared is not None:
            self._on_declared(declared)
        await self._reconcile()
        return await self._bus.jetstream.pull_subscribe(
            self._subject,
            durable=self._config.durable_name,
            stream=self._stream.name,
            config=dataclasses.replace(self._config),  # nats-py writes the filter and name into it
        )

    def _wanted(self) -> dict[str, Any]:
        """The fields this consumer's configuration sets, the filter subject included as ``pull_subscribe``
        writes it into a new durable."""
        wanted = {
            field.name: getattr(self._config, field.name)
            for field in dataclasses.fields(self._config)
            if field.name not in _IDENTITY_FIELDS and getattr(self._config, field.name) is not None
        }
        if not self._config.filter_subjects:
            wanted["filter_subject"] = self._subject
        return wanted

    async def _reconcile(self) -> None:
        """Give an existing durable what changed in this consumer's configuration, where JetStream allows it."""
        durable = self._config.durable_name
        assert durable is not None  # checked in __init__
        try:
            current = (await self._bus.jetstream.consumer_info(self._stream.name, durable)).config
        except NotFoundError:
            return  # pull_subscribe creates it with this configuration
        changed = {
            name: value for name, value in self._wanted().items() if getattr(current, name, None) != value
        }
        fixed = sorted(changed.keys() & FIXED_FIELDS)
        if fixed:
            log.error(
                "durable consumer %s on %s differs in %s, which JetStream cannot change on an existing consumer; "
                "bound to as it is (remove the consumer to have it created anew)",
                durable,
                self._stream.name,
                ", ".join(
                    f"{name} (is {getattr(current, name, None)!r}, wanted {changed[name]!r})"
                    for name in fixed
                ),
                extra={"stream": self._stream.name, "consumer": durable, "fields": fixed},
            )
        editable = {name: value for name, value in changed.items() if name not in FIXED_FIELDS}
        if not editable:
            return
        updated = dataclasses.replace(current, **editable)
        # JetStream takes one filter field or the other.
        if "filter_subject" in editable:
            updated.filter_subjects = None
        elif updated.filter_subjects:
            updated.filter_subject = None
        try:
            await self._bus.jetstream.add_consumer(self._stream.name, config=updated)
        except BadRequestError as error:
            log.error(
                "updating durable consumer %s on %s refused (%s); bound to as it is",
                durable,
                self._stream.name,
                error,
                extra={"stream": self._stream.name, "consumer": durable, "fields": sorted(editable)},
            )
            return
        log.info(
            "durable consumer %s on %s updated: %s",
            durable,
            self._stream.name,
            ", ".join(sorted(editable)),
            extra={"stream": self._stream.name, "consumer": durable, "fields": sorted(editable)},
        )

    async def fetch(self, batch: int, seconds: float) -> list[Msg]:
        """Up to ``batch`` messages; none when none came within ``seconds``. Any other failure (subscribing
        included) drops the subscription, so the next call subscribes again, and is raised: the caller logs it
        and pauses before the next call."""
        if self._subscription is None:
            self._subscription = await self.subscribe()
        subscription = self._subscription
        try:
            messages: list[Msg] = await subscription.fetch(batch, timeout=seconds)
        except TimeoutError:  # nats-py's timeouts are TimeoutErrors too
            return []
        except Exception:
            await self.reset()
            raise
        return messages

    async def reset(self) -> None:
        """Drop the subscription (its unacknowledged messages are redelivered after ack_wait); the next
        ``fetch`` subscribes again."""
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            # NATS may be down or the consumer gone: the client forgets the subscription all the same.
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
