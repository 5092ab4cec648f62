"""Circuit breakers and retry timing."""
