"""The inference service: owns providers, routes, circuit breakers, the semantic cache, prompt templates."""
