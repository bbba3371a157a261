"""`edge-agent doctor --device --json`: every field on this machine ("not present" where a Jetson-only fact is
missing), the Jetson facts read from /proc, /sys, /dev and /etc, and a clear message for CSI cameras."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli
from edge_agent.config import load_config
from edge_agent.device.csi import csi_pipeline, is_pipeline, open_video, opencv_gstreamer
from edge_agent.device.facts import FIELDS, NOT_PRESENT, device_facts, on_ac_power
from edge_agent.errors import SourceError


def test_doctor_device_json_has_every_field_on_this_machine(tmp_path):
    res = run_cli(tmp_path / "home", "doctor", "--device", "--json")
    assert res.returncode in (0, 1), res.stderr  # 1: a required check failed (no model here); the facts still print
    facts = json.loads(res.stdout)
    assert set(FIELDS) | {"checks"} == set(facts)
    assert {"installed", "version", "gpu_offload_built"} <= set(facts["llama_cpp"])
    assert {"configured", "source", "in_use", "note"} <= set(facts["gpu_layers"])
    assert {"total_bytes", "available_bytes", "needed_bytes", "ok"} <= set(facts["memory"])
    assert {"free_bytes", "needed_bytes", "storage_max_bytes", "ok"} <= set(facts["disk"])
    assert isinstance(facts["cameras"], list)
    assert {"opencv_gstreamer", "argus_daemon", "pipeline", "message"} <= set(facts["csi_camera"])
    assert {"mode", "supplies", "on_ac"} <= set(facts["power"])
    assert facts["thermal_zones"] == NOT_PRESENT or all({"zone", "type", "temp_c"} <= set(z)
                                                         for z in facts["thermal_zones"])
    assert {"device_model", "l4t_release", "jetson"} <= set(facts["platform"])
    assert {"model", "profile_source", "settings", "needs"} <= set(facts["profile"])
    if not facts["platform"]["jetson"]:
        assert facts["platform"]["l4t_release"] == NOT_PRESENT
    if facts["llama_cpp"]["gpu_offload_built"] is False:
        assert facts["gpu_layers"]["in_use"] == 0
    text = run_cli(tmp_path / "home", "doctor", "--device")
    assert b"gpu layers" in text.stdout and b"csi camera" in text.stdout


def _write(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def test_jetson_facts_from_a_fake_root(tmp_path):
    root = tmp_path / "root"
    _write(root, "proc/device-tree/model", "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit\x00")
    _write(root, "etc/nv_tegra_release", "# R36 (release), REVISION: 4.0, GCID: 1, BOARD: generic\n")
    _write(root, "proc/meminfo", "MemTotal:        7800000 kB\nMemAvailable:    2000000 kB\n")
    _write(root, "sys/class/thermal/thermal_zone0/type", "cpu-thermal\n")
    _write(root, "sys/class/thermal/thermal_zone0/temp", "48500\n")
    _write(root, "sys/class/thermal/thermal_zone1/type", "gpu-thermal\n")
    _write(root, "sys/class/thermal/thermal_zone1/temp", "47000\n")
    _write(root, "dev/video0", "")
    _write(root, "sys/class/video4linux/video0/name", "USB Camera\n")
    _write(root, "dev/nvhost-ctrl-gpu", "")
    _write(root, "usr/sbin/nvargus-daemon", "")
    _write(root, "sys/class/power_supply/ac/type", "Mains\n")
    _write(root, "sys/class/power_supply/ac/online", "1\n")
    cfg = load_config(tmp_path / "h", environ={"EDGE_AGENT_MODEL__NAME": "qwen3-vl-2b"})
    f = device_facts(cfg, root=root)
    assert f["platform"]["jetson"] and f["platform"]["l4t_release"].startswith("# R36")
    assert f["platform"]["device_model"].startswith("NVIDIA Jetson Orin Nano")
    assert f["memory"]["needed_bytes"] == 3 * (1 << 30) and f["memory"]["ok"] is False  # 2 GB free < 3 GB
    assert [z["temp_c"] for z in f["thermal_zones"]] == [48.5, 47.0]
    assert f["cameras"] == [{"device": "/dev/video0", "name": "USB Camera"}]
    assert f["gpu"]["device_nodes"] == ["/dev/nvhost-ctrl-gpu"]
    assert f["power"]["on_ac"] is True and f["csi_camera"]["argus_daemon"] is True
    assert f["gpu_layers"]["configured"] == -1 and f["gpu_layers"]["model_layers"] == 28


def test_power_supply_readings(tmp_path):
    assert on_ac_power(tmp_path) is None
    _write(tmp_path, "sys/class/power_supply/BAT0/type", "Battery\n")
    _write(tmp_path, "sys/class/power_supply/BAT0/status", "Discharging\n")
    assert on_ac_power(tmp_path) is False
    _write(tmp_path, "sys/class/power_supply/USB0/type", "USB\n")
    _write(tmp_path, "sys/class/power_supply/USB0/online", "1\n")
    assert on_ac_power(tmp_path) is True


def test_csi_pipeline_needs_gstreamer_in_opencv():
    spec = "gst:" + csi_pipeline()
    assert is_pipeline(spec) and is_pipeline(csi_pipeline()) and not is_pipeline("0")
    assert "nvarguscamerasrc" in spec and spec.endswith("appsink drop=1 max-buffers=1")
    if opencv_gstreamer():
        pytest.skip("this OpenCV has GStreamer; the pipeline would be tried for real")
    with pytest.raises(SourceError, match="without GStreamer"):
        open_video(spec)
