"""The audit service: owns the hash-chained AI interaction log, retention."""
