"""The semantic cache (PostgreSQL + pgvector) and the consumer that drops answers grounded in deleted documents."""
