"""The metering service: owns budgets, rate limits, reservations, the usage ledger and its outbox."""
