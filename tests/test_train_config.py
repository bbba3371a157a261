"""Phase One config: the shipped files load; a bad field or value is named with its value; every field has help."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from edge_agent.errors import ConfigError
from edge_agent.train import config as C

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "p1.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("name", ["tiny.toml", "qwen3-vl-2b.toml"])
def test_shipped_configs_load(name):
    cfg = C.load(REPO / "configs" / "phase_one" / name)
    assert cfg.gspo.epsilon == 3e-4 and cfg.gspo.epsilon_high == 4e-4 and cfg.gspo.beta == 0.0


def test_defaults_are_the_papers():
    cfg = C.from_dict({})
    assert (cfg.gspo.learning_rate, cfg.gspo.num_generations, cfg.gspo.epsilon, cfg.gspo.epsilon_high,
            cfg.gspo.beta) == (1e-6, 8, 3e-4, 4e-4, 0.0)
    assert (cfg.rewards.parse_failure, cfg.rewards.correct, cfg.rewards.wrong, cfg.rewards.richness_scale) == \
        (-1.5, 0.5, -0.5, 0.1)
    assert cfg.data.window_segments == 5 and cfg.export.quant_type == "Q4_K_M"


def test_every_field_has_help():
    for section, cls in C.SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{section}.{f.name} has no help"
    assert "num_generations" in C.help_text()


@pytest.mark.parametrize("toml,match", [
    ("[gspo]\nnum_generations = 1\n", r"gspo\.num_generations=1: must be in \[2, 256\]"),
    ("[gspo]\nlearning_rate = -0.1\n", r"gspo\.learning_rate=-0\.1"),
    ("[gspo]\nepsilon = 2.0\n", r"gspo\.epsilon=2\.0"),
    ("[rewards]\nlength_limit = 0\n", r"rewards\.length_limit=0"),
    ("[rewards]\nparse_failure = 1.5\n", r"rewards\.parse_failure=1\.5"),
    ("[data]\nframe_size = 100\n", r"data\.frame_size=100: must be a multiple of 32"),
    ("[data]\nprior_memories = \"oracle\"\n", r"data\.prior_memories='oracle'"),
    ("[judge]\nkind = \"openai\"\n", r"judge\.base_url='': must be an http"),
    ("[export]\nquant_type = \"Q2_K\"\n", r"export\.quant_type='Q2_K'"),
    ("[model]\ndtype = \"int8\"\n", r"model\.dtype='int8'"),
])
def test_bad_value_names_field_and_value(tmp_path, toml, match):
    with pytest.raises(ConfigError, match=match):
        C.load(write(tmp_path, toml))


def test_unknown_field_and_section_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"gspo\.num_generation=4 .*unknown field.*num_generations"):
        C.load(write(tmp_path, "[gspo]\nnum_generation = 4\n"))
    with pytest.raises(ConfigError, match=r"\[trainer\].*unknown section"):
        C.load(write(tmp_path, "[trainer]\nx = 1\n"))


def test_wrong_types_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"gspo\.max_steps='10': expected an integer"):
        C.load(write(tmp_path, '[gspo]\nmax_steps = "10"\n'))
    with pytest.raises(ConfigError, match=r"gspo\.use_cpu=1: expected true or false"):
        C.load(write(tmp_path, "[gspo]\nuse_cpu = 1\n"))
    with pytest.raises(ConfigError, match=r"data\.synth_seeds\[1\]='b': expected an integer"):
        C.load(write(tmp_path, '[data]\nsynth_seeds = [1, "b"]\n'))
    assert C.load(write(tmp_path, "[gspo]\nlearning_rate = 1\n")).gspo.learning_rate == 1.0  # int for float is fine


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        C.load(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="p1.toml"):
        C.load(write(tmp_path, "[gspo\n"))


def test_relative_paths_follow_the_file(tmp_path):
    cfg = C.load(write(tmp_path, '[data]\nvideos = ["clips"]\n'))
    assert cfg.path(cfg.data.videos[0]) == tmp_path.resolve() / "clips"
    assert cfg.path("/abs/x") == Path("/abs/x")
