"""Durable JetStream pull consumers that come back after NATS lost them.

A NATS restarted without its store (an emptyDir, a wiped volume) has neither the stream nor the durable consumer
a subscription is bound to, and every fetch from that subscription fails for good (``ServiceUnavailableError``:
nothing answers the consumer's subject any more), whereas a timeout only means no message came. The rule for
every pull consumer: a fetch that fails for anything other than a timeout drops the subscription, and the next
fetch subscribes again, which declares the stream (the service's own spec) and creates the durable with the
consumer's own configuration when it is missing. An existing durable is bound to as it is.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, StreamConfig

from parapet.kit.bus import Bus, StreamSpec


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
        return await self._bus.jetstream.pull_subscribe(
            self._subject,
            durable=self._config.durable_name,
            stream=self._stream.name,
            config=dataclasses.replace(self._config),  # nats-py writes the filter and name into it
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
