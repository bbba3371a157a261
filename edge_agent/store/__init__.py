"""The SQLite memory store: `Store.open(path)`, migrations, queries, text safety."""

from edge_agent.store.db import Store
from edge_agent.store.text import clean_text, match_expression

__all__ = ["Store", "clean_text", "match_expression"]
