"""The memory-writing policy: window of segments + prior memories -> one validated memory."""

from edge_agent.memory.validate import MEMORY_SCHEMA, validate_memory
from edge_agent.memory.writer import MemoryWriter, WindowEntry, WriteResult

__all__ = ["MEMORY_SCHEMA", "MemoryWriter", "WindowEntry", "WriteResult", "validate_memory"]
