"""Making user text safe for SQLite: valid UTF-8, and FTS5 MATCH expressions that cannot be misread as syntax."""

from __future__ import annotations

import re

# FTS5's unicode61 tokenizer splits on everything that is not a letter, a number or a private-use char;
# `[^\W_]` is Python's nearest class (letters and digits, no underscore). Whatever a token holds, it is
# quoted as an FTS5 string below, so a mismatch between the two rules can only change recall, never syntax.
_TOKEN = re.compile(r"[^\W_]+")
MAX_QUERY_TOKENS = 64
# Lone surrogates cannot be encoded to UTF-8 (Python keeps undecodable argv/file bytes as U+DC80..U+DCFF);
# NUL would cut C strings short.
_UNENCODABLE = re.compile("[\ud800-\udfff\x00]")


def clean_text(text: str) -> str:
    """`text` as valid UTF-8: lone surrogates (e.g. undecodable argv bytes) and NUL become U+FFFD.

    sqlite3 refuses to bind a str that cannot be encoded to UTF-8, so every user-typed string passes here.
    """
    if not isinstance(text, str):
        raise TypeError(f"expected str, got {type(text).__name__}")
    return _UNENCODABLE.sub("\ufffd", text)


STOPWORDS = frozenset(
    "a an and are as at be by did do does for from had has have he her his how i in is it its me my of on or "
    "our she so that the their them then there they this to was we were what when where which who whom why "
    "will with you your".split())


def tokens(text: str) -> list[str]:
    """Distinct lower-cased word tokens of `text`, in order of first appearance, at most MAX_QUERY_TOKENS."""
    seen: dict[str, None] = {}
    for tok in _TOKEN.findall(clean_text(text).lower()):
        seen.setdefault(tok, None)
        if len(seen) >= MAX_QUERY_TOKENS:
            break
    return list(seen)


def _phrase(tok: str) -> str:
    # An FTS5 string: double quotes, inner double quotes doubled. Inside it AND/OR/NOT/NEAR, *, :, ^ and
    # parentheses are plain text, so no user input can change the query's structure.
    return '"' + tok.replace('"', '""') + '"'


def search_tokens(text: str, op: str = "OR") -> list[str]:
    """The tokens `match_expression` joins: for OR a question's function words ("where did I ... the") are
    dropped, since they would make nearly every memory match and be BM25-scored (4x slower at 10k
    memories); they are kept only when nothing else is left."""
    if op not in ("OR", "AND"):
        raise ValueError(f"op={op!r}: expected 'OR' or 'AND'")
    toks = tokens(text)
    if op == "OR":
        toks = [t for t in toks if t not in STOPWORDS] or toks
    return toks


def phrases(toks: list[str], op: str = "OR") -> str | None:
    """An FTS5 MATCH expression of tokens quoted as phrases joined by `op`; None when there is none."""
    return f" {op} ".join(_phrase(t) for t in toks) if toks else None


def match_expression(text: str, op: str = "OR") -> str | None:
    """An FTS5 MATCH expression of `text`'s tokens quoted as phrases joined by `op` ("OR" or "AND").

    None when `text` has no token (then nothing can match and the caller returns no rows).
    """
    return phrases(search_tokens(text, op), op)
