"""Deadline propagation, server side: remember when the incoming call must end.

The absolute deadline goes into a contextvar so that every outgoing call made while serving this RPC
gets at most the time that is left (see ``parapet.kit.clients``): work for a caller who has given up is
wasted, and a chain of services must not outlive its first caller's deadline.
"""

from __future__ import annotations

import time

import grpc.aio

from parapet.kit.context import deadline_var
from parapet.kit.errors import DeadlineExceeded


def enter_deadline(context: grpc.aio.ServicerContext) -> None:
    """Record the call's absolute deadline; reject a call whose deadline already passed."""
    remaining = context.time_remaining()
    if remaining is None:
        deadline_var.set(None)
        return
    if remaining <= 0:
        raise DeadlineExceeded("the call's deadline passed before it was served", reason="DEADLINE_EXCEEDED")
    # Set without reset: grpc.aio serves each RPC in a task of its own, whose context dies with it.
    deadline_var.set(time.monotonic() + remaining)
