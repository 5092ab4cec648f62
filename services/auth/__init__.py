"""The auth service: owns tenants, users, roles, API keys (hashed), policies, signing keys."""
