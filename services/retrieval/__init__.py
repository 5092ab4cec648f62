"""The retrieval service: owns documents, chunks, embeddings, access groups."""
