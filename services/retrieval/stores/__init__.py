"""Vector stores behind one protocol (`VectorStore`): pgvector (default) and Pinecone."""
