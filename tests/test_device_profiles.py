"""Model profiles resolve with the documented precedence: default < profile < config.toml < env < --set, and
`config show` / `doctor` say where each value came from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli
from edge_agent.config import PROFILE_KEYS, load_config
from edge_agent.device.profiles import PRECEDENCE, effective_profile, source_layer
from edge_agent.errors import ConfigError
from edge_agent.models import CATALOG_PATH, load_catalog, model_profile

ROOT = Path(__file__).resolve().parents[1]


def test_every_catalog_profile_names_known_keys_and_valid_values(tmp_path):
    catalog = load_catalog()
    for name, entry in catalog.items():
        assert entry.profile, f"{name} has no profile"
        cfg = load_config(tmp_path / "h", environ={"EDGE_AGENT_MODEL__NAME": name})  # checks every value
        for key, value in entry.profile.items():
            if key in PROFILE_KEYS:
                section, field = PROFILE_KEYS[key].split(".")
                assert getattr(getattr(cfg, section), field) == value
                # a local model's own manifest.json profile (the embedded default has one) wins over the catalog
                assert cfg.sources[PROFILE_KEYS[key]] in (f"profile {name} (models/catalog.toml)",
                                                          f"profile {ROOT / 'models' / name / 'manifest.json'}")


def test_qwen3_vl_frames_are_large_enough_for_its_vision_tower():
    catalog = load_catalog()
    sizes = [catalog[n].profile["frame_size"] for n in ("qwen3-vl-2b", "qwen3-vl-4b", "qwen3-vl-8b")]
    assert sizes == sorted(sizes) and all(s % 32 == 0 for s in sizes)
    for s in sizes:  # a 4:3 frame at this size holds at least Qwen3-VL's 65,536 px minimum
        assert s * (round(s * 3 / 4 / 32) * 32) >= 65536
    assert catalog["default"].profile["frame_size"] == 128  # what the embedded default was trained on
    assert "Qwen3-VL" in CATALOG_PATH.read_text()  # the reasons sit beside the numbers


def test_precedence_default_profile_toml_env_cli(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {"EDGE_AGENT_MODEL__NAME": "qwen3-vl-2b"}
    cfg = load_config(home, environ=env)
    assert cfg.capture.frame_size == 448 and source_layer(cfg.sources["capture.frame_size"]) == "profile"
    assert cfg.capture.sample_fps == 2.0 and "capture.sample_fps" not in cfg.sources  # default

    (home / "config.toml").write_text("[capture]\nframe_size = 320\nkeyframes_per_segment = 2\n")
    cfg = load_config(home, environ=env)
    assert cfg.capture.frame_size == 320 and cfg.sources["capture.frame_size"] == str(home / "config.toml")
    assert cfg.model.n_ctx == 4096 and source_layer(cfg.sources["model.n_ctx"]) == "profile"

    cfg = load_config(home, environ={**env, "EDGE_AGENT_CAPTURE__FRAME_SIZE": "256"})
    assert cfg.capture.frame_size == 256 and cfg.sources["capture.frame_size"] == "env EDGE_AGENT_CAPTURE__FRAME_SIZE"
    assert cfg.capture.keyframes_per_segment == 2  # still config.toml's

    cfg = load_config(home, environ={**env, "EDGE_AGENT_CAPTURE__FRAME_SIZE": "256"},
                      overrides={"capture.frame_size": "192"})
    assert cfg.capture.frame_size == 192 and cfg.sources["capture.frame_size"] == "cli"
    layers = [source_layer(cfg.sources.get(k, "default")) for k in
              ("capture.sample_fps", "model.n_ctx", "capture.keyframes_per_segment", "model.name",
               "capture.frame_size")]
    assert layers == list(PRECEDENCE)


def test_the_embedded_default_brings_the_phase_two_recipe_measured_on_it(tmp_path):
    """A fresh home on the embedded default gets the product recipe (README, Phase Two: the SFT term is what let
    the vectors go live at full length), from its manifest; the built-in defaults stay the paper's."""
    from edge_agent.config import AdaptConfig, WriterConfig

    cfg = load_config(tmp_path / "home", environ={})
    assert cfg.model.name == "default"
    got = (cfg.writer.candidate_share, cfg.adapt.learning_rate, cfg.adapt.steps, cfg.adapt.sft_weight)
    assert got == (0.3, 1e-2, 50, 1.0)
    assert all(source_layer(cfg.sources[k]) == "profile" for k in
               ("writer.candidate_share", "adapt.learning_rate", "adapt.steps", "adapt.sft_weight"))
    paper = AdaptConfig()
    assert (WriterConfig().candidate_share, paper.learning_rate, paper.steps, paper.sft_weight) == (0.1, 1e-3, 10, 0.0)
    product = (ROOT / "configs" / "phase_two" / "product.toml").read_text()
    for line in ("learning_rate = 1e-2", "steps = 50", "sft_weight = 1.0", "candidate_share = 0.3"):
        assert line in product  # the profile and the experiment's settings file are one recipe


def test_the_model_named_in_config_toml_picks_the_profile(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text('[model]\nname = "qwen3-vl-8b"\n')
    cfg = load_config(home, environ={})
    assert (cfg.capture.frame_size, cfg.model.n_ctx, cfg.model.n_gpu_layers) == (640, 8192, -1)


def _folder(path: Path, manifest: dict | None) -> Path:
    path.mkdir(parents=True)
    (path / "model.gguf").write_bytes(b"GGUF")
    (path / "mmproj.gguf").write_bytes(b"GGUF")
    if manifest is not None:
        (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def test_a_local_folder_manifest_carries_its_profile(tmp_path):
    d = _folder(tmp_path / "mymodel", {"seed": 1, "profile": {"frame_size": 224, "n_ctx": 2048, "ram_gb": 1.5}})
    cfg = load_config(tmp_path / "h", environ={"EDGE_AGENT_MODEL__NAME": str(d)})
    assert cfg.capture.frame_size == 224 and cfg.model.n_ctx == 2048
    assert cfg.sources["capture.frame_size"] == f"profile {d / 'manifest.json'}"
    prof = effective_profile(cfg)
    assert prof["needs"] == {"ram_gb": 1.5, "disk_gb": None}
    row = next(r for r in prof["settings"] if r["setting"] == "capture.frame_size")
    assert row["value"] == 224 and row["profile_value"] == 224 and row["layer"] == "profile"
    # a folder without a manifest: defaults
    plain = _folder(tmp_path / "plain", None)
    assert model_profile(str(plain), tmp_path / "h") is None
    assert load_config(tmp_path / "h", environ={"EDGE_AGENT_MODEL__NAME": str(plain)}).capture.frame_size == 128


def test_local_catalog_entry_manifest_wins_over_the_catalog(tmp_path):
    home = tmp_path / "h"
    _folder(home / "models" / "tiny", {"profile": {"frame_size": 96}})
    cfg = load_config(home, environ={"EDGE_AGENT_MODEL__NAME": "tiny"})
    assert cfg.capture.frame_size == 96 and "manifest.json" in cfg.sources["capture.frame_size"]


def test_bad_profiles_fail_at_load_naming_the_key(tmp_path):
    d = _folder(tmp_path / "m", {"profile": {"frame_sise": 224}})
    with pytest.raises(ConfigError, match="frame_sise"):
        load_config(tmp_path / "h", environ={"EDGE_AGENT_MODEL__NAME": str(d)})
    d2 = _folder(tmp_path / "m2", {"profile": {"frame_size": 100}})
    with pytest.raises(ConfigError, match="capture.frame_size=100"):
        load_config(tmp_path / "h", environ={"EDGE_AGENT_MODEL__NAME": str(d2)})


def test_config_show_and_doctor_print_value_and_source(tmp_path):
    home = tmp_path / "home"
    res = run_cli(home, "config", "show", "--json", "--set", "capture.keyframes_per_segment=2",
                  model="qwen3-vl-4b")
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)["settings"]}
    assert rows["capture.frame_size"]["value"] == 512
    assert rows["capture.frame_size"]["source"] == "profile qwen3-vl-4b (models/catalog.toml)"
    assert rows["capture.keyframes_per_segment"] == {**rows["capture.keyframes_per_segment"], "value": 2,
                                                     "source": "cli"}
    assert rows["storage.max_bytes"]["source"] == "default"
    res = run_cli(home, "config", "show", "--set", "nonsense")
    assert res.returncode != 0 and b"SECTION.NAME=VALUE" in res.stderr
    res = run_cli(home, "doctor", "--json", model="qwen3-vl-4b")
    profile = next(c for c in json.loads(res.stdout) if c["name"] == "profile")
    assert "capture.frame_size=512 (profile qwen3-vl-4b (models/catalog.toml))" in profile["detail"]
