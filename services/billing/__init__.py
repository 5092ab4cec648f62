"""The billing service: owns per-tenant usage rollups, consumed from the usage event stream."""
