"""Questions from memory: retrieval (FTS5 + MiniLM via onnxruntime, fused by rank),
answering from memories only with citations and abstention. Heavy imports stay inside embed.py."""
