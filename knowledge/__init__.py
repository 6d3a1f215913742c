"""Knowledge base: document chunking, embeddings, pgvector storage and retrieval."""
