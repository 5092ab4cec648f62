"""The gateway service: owns the request flow of the governed chat, async jobs."""
