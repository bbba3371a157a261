"""Issue 13's campaign as property tests (hypothesis): the memory-format parser, the option parser, time filters
and the config loader never raise anything but their own one-line errors, and keep their rules on any input."""

from __future__ import annotations

import functools
import json
import math
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.cli import duplicate_option, parse_range, parse_time
from edge_agent.config import SECTIONS, load_config
from edge_agent.errors import ConfigError, QuestionError
from edge_agent.memory.validate import validate_memory
from edge_agent.qa.answer import parse_options, parse_reply
from edge_agent.store import Store
from edge_agent.types import Segment

CASES = {"n": 0}  # counted across the module, printed at the end
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def counted(fn):
    @functools.wraps(fn)
    def wrapper(*a, **k):
        CASES["n"] += 1
        return fn(*a, **k)
    return wrapper


# -- memory-format parser --------------------------------------------------------------------------------------
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
                           max_leaves=8)


@SETTINGS
@given(raw=st.one_of(st.text(), json_values.map(json.dumps),
                     st.text().map(lambda t: json.dumps({"description": t}))))
@counted
def test_memory_parser_never_raises_and_accepts_only_the_format(raw):
    v = validate_memory(raw, lambda s: len(s.split()), 150)
    assert (v.description is None) != (v.failure is None)
    if v.ok:
        obj = json.loads(raw)
        assert set(obj) == {"description"} and v.description == " ".join(obj["description"].split())
        assert v.description and v.n_tokens <= 150
    else:
        assert "\n" not in v.failure


@SETTINGS
@given(text=st.text(), options=st.lists(st.text(min_size=1), max_size=4), shown=st.lists(st.integers(1, 50), max_size=5))
@counted
def test_answer_parser_never_raises_and_cites_only_shown_memories(text, options, shown):
    opts = [o for o in options if o.strip()] or []
    res = parse_reply(text, opts, shown)
    assert set(res["cited"]) <= set(shown)
    if opts:
        assert res["choice"] in list("ABCD"[: len(opts)]) + ["E"]


# -- option parsers --------------------------------------------------------------------------------------------
@SETTINGS
@given(options=st.lists(st.text(max_size=30), max_size=6))
@counted
def test_question_options_parse_or_refuse_in_one_line(options):
    try:
        texts = parse_options(options)
    except QuestionError as e:
        assert "\n" not in str(e)
        return
    assert len(texts) == len(options) <= 4 and all(t.strip() for t in texts)


OPTION_TOKENS = ["--since", "--until", "--search", "--limit", "--json", "--home", "--since=5", "--until=9", "10m",
                 "1", "--", "x", "-o", "--option", "--correct", "--wrong", "--answer"]


@SETTINGS
@given(command=st.sampled_from(["memories", "forget", "ask", "feedback"]),
       tokens=st.lists(st.sampled_from(OPTION_TOKENS), max_size=8))
@counted
def test_duplicate_option_finder_agrees_with_a_plain_count(command, tokens):
    why = duplicate_option([command, *tokens])
    # a plain count of option names, skipping the values of options that take one
    takes_value = {"--since", "--until", "--search", "--limit", "--home", "--answer", "-o", "--option"}
    flags = {"--json", "--all", "--correct", "--wrong", "--delete"}
    repeatable = {"-o", "--option"}
    seen, dup, i = set(), False, 0
    allowed = {"memories": {"--since", "--until", "--search", "--limit", "--home", "--json"},
               "forget": {"--since", "--until", "--all", "--home", "--json"},
               "ask": {"--since", "--until", "-o", "--option", "--home", "--json", "--config"},
               "feedback": {"--correct", "--wrong", "--answer", "--delete", "--home", "--json"}}[command]
    while i < len(tokens):
        tok = tokens[i]
        if tok == "--":
            break
        name = tok.split("=", 1)[0]
        i += 1
        if name not in allowed:
            continue
        if name in takes_value and "=" not in tok:
            i += 1
        key = "correct" if name in ("--correct", "--wrong") else ("option" if name in repeatable else name)
        if name in repeatable:
            continue
        dup = dup or key in seen
        seen.add(key)
    assert (why is not None) == dup, (tokens, why)


# -- time filters ----------------------------------------------------------------------------------------------
time_words = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                       st.integers(-10**20, 10**20).map(str),
                       st.tuples(st.integers(0, 10**6), st.sampled_from("smhd")).map(lambda p: f"{p[0]}{p[1]}"),
                       st.datetimes().map(lambda d: d.isoformat()), st.text(max_size=12))


@SETTINGS
@given(since=st.none() | time_words, until=st.none() | time_words)
@counted
def test_time_options_give_finite_ordered_bounds_or_one_line_errors(since, until):
    try:
        lo, hi = parse_range(since, until)
    except ConfigError as e:
        assert "\n" not in str(e) and ("--since" in str(e) or "--until" in str(e))
        return
    for bound in (lo, hi):
        assert bound is None or math.isfinite(bound)
    assert lo is None or hi is None or lo <= hi


@pytest.fixture(scope="module")
def timed_store(tmp_path_factory):
    store = Store.open(tmp_path_factory.mktemp("props") / "m.db")
    sid = store.get_or_create_stream("s", "fp", 1000.0, "camera")
    for i in range(40):
        store.commit_segment(sid, Segment(i, 10.0 * i, 10.0 * i + 10), memory=f"memory {i}.", failure=None,
                             writer_model="t", adapter_id=None, n_tokens=2, latency_s=0.0)
    return store


@SETTINGS
@given(since=st.none() | st.floats(900, 1500), until=st.none() | st.floats(900, 1500))
@counted
def test_store_time_filter_is_the_documented_rule(timed_store, since, until):
    rows = timed_store.memories(since=since, until=until)
    got = sorted(r["id"] for r in rows)
    everything = timed_store.memories()
    want = sorted(r["id"] for r in everything
                  if (since is None or r["t_end"] > since) and (until is None or r["t_end"] <= until))
    assert got == want


def test_durations_count_back_from_now():
    assert parse_time("10m", "--since") == pytest.approx(time.time() - 600, abs=2)


# -- config loader ---------------------------------------------------------------------------------------------
def _fields():
    import dataclasses

    out = []
    for name, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            if not (isinstance(f.default_factory, type)):
                out.append((name, f.name))
    return out


raw_values = st.one_of(st.text(max_size=10), st.integers(-10**30, 10**30).map(str), st.floats().map(repr),
                       st.sampled_from(["true", "false", "inf", "-inf", "nan", "", "1e309", "0", "-1"]))


@SETTINGS
@given(field=st.sampled_from(_fields()), raw=raw_values)
@counted
def test_config_loader_accepts_valid_values_or_names_the_setting(tmp_path, field, raw):
    section, name = field
    key = f"EDGE_AGENT_{section.upper()}__{name.upper()}"
    try:
        cfg = load_config(tmp_path / "home", environ={key: raw})
    except ConfigError as e:
        assert f"{section}.{name}" in str(e) and "\n" not in str(e)
        return
    value = getattr(getattr(cfg, section), name)
    if isinstance(value, float):
        assert math.isfinite(value)
    assert not (isinstance(value, int) and not isinstance(value, bool) and raw.strip().lower() in ("true", "false"))


def test_zz_print_counts():
    print(f"\nproperty campaign: {CASES['n']} cases tried")
    assert CASES["n"] > 0
