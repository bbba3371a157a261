"""One config tree: defaults < config.toml < EDGE_AGENT_* env, nested sections, checks at load time, sources."""

from __future__ import annotations

import dataclasses
import json

import pytest

from edge_agent.config import SECTIONS, AdaptConfig, Config, Section, describe, load_config
from edge_agent.errors import ConfigError


def write(home, text: str):
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(text)


def test_defaults_are_the_papers():
    # the Qwen3-VL profile leaves Phase Two at the paper's recipe (the embedded default's profile brings the one
    # measured on it: tests/test_device_profiles.py)
    cfg = load_config(environ={"EDGE_AGENT_HOME": "/nonexistent-home", "EDGE_AGENT_MODEL__NAME": "qwen3-vl-2b"})
    assert (cfg.capture.segment_seconds, cfg.writer.window_segments, cfg.writer.max_memory_tokens) == (10.0, 5, 150)
    a = cfg.adapt
    assert (a.layer, a.beta, a.learning_rate, a.steps, a.scale_after_training) == (22, 0.1, 1e-3, 10, 1.5)
    assert a.reward.rule == "auto" and a.gate.min_holdout_pairs >= 1


def test_toml_then_env_with_nested_sections_and_sources(tmp_path):
    home = tmp_path / "h"
    write(home, "[writer]\nwindow_segments = 3\n[adapt]\nsteps = 20\n[adapt.gate]\nmin_holdout_pairs = 4\n")
    cfg = load_config(home, environ={"EDGE_AGENT_ADAPT__REWARD__RULE": "judge", "EDGE_AGENT_ADAPT__STEPS": "30"})
    assert cfg.writer.window_segments == 3 and cfg.adapt.gate.min_holdout_pairs == 4
    assert cfg.adapt.reward.rule == "judge" and cfg.adapt.steps == 30  # env beats the file
    assert cfg.sources["writer.window_segments"].endswith("config.toml")
    assert cfg.sources["adapt.steps"] == "env EDGE_AGENT_ADAPT__STEPS"
    rows = {r["name"]: r for r in describe(cfg)}
    assert rows["adapt.reward.rule"]["source"] == "env EDGE_AGENT_ADAPT__REWARD__RULE"
    assert rows["qa.top_k"]["source"] == "default" and rows["qa.top_k"]["value"] == 8


@pytest.mark.parametrize("text,needle", [
    ("[adapt]\nlayer = 0\n", "adapt.layer=0"),  # used to load, then fail at training time
    ("[capture]\nsegment_seconds = inf\n", "capture.segment_seconds=inf"),
    ("[capture]\nreconnect_backoff_seconds = inf\n", "capture.reconnect_backoff_seconds=inf"),
    ("[qa]\ntop_k = true\n", "qa.top_k=True"),  # a bool is not the number 1
    ("[adapt.reward]\nrule = \"vote\"\n", "adapt.reward.rule='vote'"),
    ("[adapt.gate]\nmin_holdout_pairs = 0\n", "adapt.gate.min_holdout_pairs=0"),
    ("[adapt]\nreward = 3\n", "adapt.reward=3"),
    ("[writer]\nnope = 1\n", "writer.nope"),
    ("[nope]\nx = 1\n", "unknown section [nope]"),
])
def test_bad_values_name_the_setting_and_value(tmp_path, text, needle):
    write(tmp_path / "h", text)
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "h", environ={})
    assert needle in str(e.value)


def test_bad_env_values_and_empty_home(tmp_path):
    with pytest.raises(ConfigError, match="adapt.gate.max_compliance_drop=2.0"):
        load_config(tmp_path, environ={"EDGE_AGENT_ADAPT__GATE__MAX_COMPLIANCE_DROP": "2"})
    with pytest.raises(ConfigError, match="writer.window_segments='x'"):
        load_config(tmp_path, environ={"EDGE_AGENT_WRITER__WINDOW_SEGMENTS": "x"})
    with pytest.raises(ConfigError, match="EDGE_AGENT_HOME=''"):
        load_config(environ={"EDGE_AGENT_HOME": ""})


def test_every_field_has_help_and_every_section_loads_from_toml():
    def walk(cls):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.section}.{f.name} has no help"
            sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
            if isinstance(sub, type) and issubclass(sub, Section):
                walk(sub)
    for cls in SECTIONS.values():
        walk(cls)
    assert isinstance(Config().adapt, AdaptConfig)


def test_config_show_json_lists_settings_with_sources(tmp_path):
    from typer.testing import CliRunner

    from edge_agent.cli import app

    write(tmp_path / "h", "[qa]\ntop_k = 5\n")
    res = CliRunner().invoke(app, ["config", "show", "--home", str(tmp_path / "h"), "--json"], env={})
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.stdout)["settings"]}
    assert rows["qa.top_k"]["value"] == 5 and rows["qa.top_k"]["source"].endswith("config.toml")
    assert rows["adapt.gate.min_holdout_pairs"]["help"]
