"""The gateway's async jobs: batches of chat requests queued on JetStream and run by workers through the same
governed flow as ``Chat`` (docs/gateway-jobs.md)."""
