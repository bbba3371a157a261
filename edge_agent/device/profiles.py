"""Model profiles: the capture and writer settings each model wants, and what it needs of the device.

A profile comes from the model's catalog entry (`[models.NAME] profile = {...}` in models/catalog.toml) or from a
local model folder's manifest.json (`"profile": {...}`, which wins over the catalog). It is the lowest layer
above the built-in defaults:

    default  <  model profile  <  config.toml  <  EDGE_AGENT_* environment  <  --set on the command line

`config.load_config` applies it (so every command sees the same values) and records `profile ...` as the source
of each value it filled; `edge-agent config show` and `edge-agent doctor` print value and source side by side.
Keys: `config.PROFILE_KEYS` (settings) and `config.PROFILE_NEEDS` (ram_gb, disk_gb: checked by doctor --device).
"""

from __future__ import annotations

from typing import Any

from edge_agent.config import PROFILE_KEYS, PROFILE_NEEDS, Config
from edge_agent.errors import ModelError

PRECEDENCE = ("default", "profile", "config.toml", "env", "cli")


def source_layer(source: str) -> str:
    """Which precedence layer a `cfg.sources` label belongs to (one of PRECEDENCE)."""
    if source == "default" or not source:
        return "default"
    if source.startswith("profile"):
        return "profile"
    if source.startswith("env "):
        return "env"
    if source == "cli":
        return "cli"
    return "config.toml"


def _get(cfg: Config, dotted: str) -> Any:
    section, name = dotted.split(".", 1)
    return getattr(getattr(cfg, section), name)


def profile_of(cfg: Config) -> tuple[dict[str, Any], str] | None:
    """The configured model's raw profile and where it came from; None when it declares none (or is unreadable)."""
    from edge_agent.models import model_profile

    try:
        return model_profile(cfg.model.name, cfg.home)
    except ModelError:
        return None


def effective_profile(cfg: Config) -> dict[str, Any]:
    """{"model", "profile_source", "settings": [{"key", "setting", "value", "profile_value", "source", "layer"}],
    "needs": {"ram_gb", "disk_gb"}} for the configured model: what `doctor` prints."""
    found = profile_of(cfg)
    raw, label = found if found is not None else ({}, None)
    rows = []
    for key, dotted in PROFILE_KEYS.items():
        source = cfg.sources.get(dotted, "default")
        rows.append({"key": key, "setting": dotted, "value": _get(cfg, dotted), "profile_value": raw.get(key),
                     "source": source, "layer": source_layer(source)})
    needs = {k: (float(raw[k]) if raw.get(k) is not None else None) for k in PROFILE_NEEDS}
    return {"model": cfg.model.name, "profile_source": label, "settings": rows, "needs": needs}

