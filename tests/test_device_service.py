"""The systemd units: they parse, hold the keys the service needs, pass `systemd-analyze verify` where it runs;
install/uninstall/status drive systemctl as expected (a recording stand-in here); adapt waits for idle and AC."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.config import load_config
from edge_agent.device import service
from edge_agent.device.service import ADAPT_TIMER, ADAPT_UNIT, RUN_UNIT, parse_unit, render_units


@pytest.fixture
def cfg(tmp_path):
    return load_config(tmp_path / "home", environ={}, overrides={
        "service.source": "gst:nvarguscamerasrc ! video/x-raw, format=BGR ! appsink", "service.restart_seconds": 7,
        "service.adapt_every_minutes": 30})


@pytest.mark.parametrize("user", [False, True])
@pytest.mark.parametrize("version", [None, 252])
def test_units_parse_and_hold_the_expected_keys(cfg, user, version):
    units = render_units(cfg, user=user, systemd=version, account="wearer")
    assert set(units) == {RUN_UNIT, ADAPT_UNIT, ADAPT_TIMER}
    run = parse_unit(units[RUN_UNIT])
    exec_start = run["Service"]["ExecStart"][0]
    assert exec_start.startswith(f"{sys.executable} -m edge_agent.cli run ")
    assert '"gst:nvarguscamerasrc ! video/x-raw, format=BGR ! appsink"' in exec_start  # one quoted argument
    assert f"--home {cfg.home}" in exec_start
    assert run["Service"]["Restart"] == ["on-failure"] and run["Service"]["RestartSec"] == ["7"]
    assert run["Service"]["StandardOutput"] == ["journal"] and run["Service"]["KillSignal"] == ["SIGINT"]
    assert run["Unit"]["StartLimitIntervalSec"] == ["0"]
    assert ("RestartSteps" in run["Service"]) == (version is None)  # backoff where systemd >= 254 has it
    assert f"EDGE_AGENT_HOME={cfg.home}" in run["Service"]["Environment"]
    assert run["Install"]["WantedBy"] == ["default.target" if user else "multi-user.target"]
    assert ("User" in run["Service"]) == (not user)
    adapt = parse_unit(units[ADAPT_UNIT])
    assert adapt["Unit"]["ConditionACPower"] == ["true"]
    assert adapt["Service"]["Type"] == ["oneshot"] and adapt["Service"]["Nice"] == ["19"]
    assert "service adapt-if-idle" in adapt["Service"]["ExecStart"][0]
    timer = parse_unit(units[ADAPT_TIMER])
    assert timer["Timer"]["OnUnitInactiveSec"] == ["30min"] and timer["Timer"]["Unit"] == [ADAPT_UNIT]
    assert timer["Install"]["WantedBy"] == ["timers.target"]


def test_no_ac_condition_when_not_required(tmp_path):
    cfg = load_config(tmp_path / "h", environ={}, overrides={"service.require_ac_power": "false"})
    assert "ConditionACPower" not in parse_unit(render_units(cfg, user=True)[ADAPT_UNIT])["Unit"]


def test_exec_arguments_escape_percent_dollar_and_quotes():
    assert service._arg("0") == "0"
    assert service._arg("a b") == '"a b"'
    assert service._arg('say "hi" 100%') == '"say \\"hi\\" 100%%"'
    assert service._arg("$HOME") == "$$HOME"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_accepts_the_units(cfg, tmp_path):
    d = tmp_path / "units"
    d.mkdir()
    for name, text in render_units(cfg, user=False, systemd=service.systemd_version(),
                                   account="root").items():
        (d / name).write_text(text)
    res = subprocess.run(["systemd-analyze", "verify", *(str(d / n) for n in (RUN_UNIT, ADAPT_UNIT, ADAPT_TIMER))],
                         capture_output=True, text=True, timeout=60)
    if res.returncode != 0 and "Failed to initialize manager" in res.stderr:
        pytest.skip(f"systemd-analyze cannot run here: {res.stderr.strip()}")
    assert res.returncode == 0, res.stderr
    problems = [ln for ln in res.stderr.splitlines() if str(d) in ln]
    assert not problems, problems


class Recorder:
    """Stands in for subprocess.run: records every command, answers like systemctl."""

    def __init__(self, active="active"):
        self.calls: list[list[str]] = []
        self.active = active

    def __call__(self, cmd, **kw):
        self.calls.append(list(cmd))
        out = ""
        if "--version" in cmd:
            out = "systemd 255 (255.4)\n+PAM\n"
        elif "is-active" in cmd:
            out = self.active + "\n"
        elif "is-enabled" in cmd:
            out = "enabled\n"
        return subprocess.CompletedProcess(cmd, 0, out, "")


def test_install_status_uninstall_drive_systemctl(cfg, tmp_path):
    d = tmp_path / "systemd-user"
    rec = Recorder()
    result = service.install(cfg, user=True, directory=d, runner=rec)
    assert sorted(Path(p).name for p in result["installed"]) == sorted([RUN_UNIT, ADAPT_UNIT, ADAPT_TIMER])
    assert "RestartSteps" in (d / RUN_UNIT).read_text()  # systemd 255 answered
    assert ["systemctl", "--user", "daemon-reload"] in rec.calls
    assert ["systemctl", "--user", "enable", "--now", RUN_UNIT, ADAPT_TIMER] in rec.calls
    assert any("enable-linger" in n for n in result["notes"])

    st = service.status(cfg, user=True, runner=rec)
    assert st["running"] is True and st["units"][RUN_UNIT] == {"active": "active", "enabled": "enabled"}
    for key in ("segments_behind", "last_memory_at", "active_adapter", "last_hour", "disk", "writer_alive"):
        assert key in st

    gone = service.uninstall(cfg, user=True, directory=d, runner=rec)
    assert len(gone["removed"]) == 3 and not any(d.iterdir())
    assert ["systemctl", "--user", "disable", "--now", RUN_UNIT, ADAPT_TIMER] in rec.calls


def test_status_reports_store_health(cfg):
    import json
    import time

    from edge_agent.device.events import record
    from edge_agent.store import Store
    from edge_agent.types import Segment

    with Store.open(cfg.db_path) as store:
        sid = store.get_or_create_stream("0", "fp", time.time() - 100, "camera")
        seg_id, _ = store.commit_segment(sid, Segment(0, 0, 10), memory="I saw a cup.", failure=None,
                                         writer_model="m", adapter_id=None, n_tokens=4, latency_s=0.1)
        record(store, "degraded", stream_id=sid, segment_id=seg_id, segment_index=0, level=1,
               detail={"step": "down", "keyframes": 2})
        record(store, "dropped", stream_id=sid, segment_id=seg_id, segment_index=0, level=1, detail={"count": 2})
    (cfg.home / "run").mkdir()
    import os
    (cfg.home / "run" / "status.json").write_text(json.dumps({"pid": os.getpid(), "queued": 3, "level": 1}))
    st = service.status(cfg, user=False, runner=Recorder(active="inactive"))
    assert st["running"] is False and st["segments_behind"] == 3 and st["keepup_level"] == 1
    assert st["last_hour"]["degradations"] == 1 and st["last_hour"]["dropped_segments"] == 2
    assert st["last_memory_at"] is not None and st["active_adapter"] is None
    assert st["disk"]["used_bytes"] > 0 and st["disk"]["max_bytes"] is None


def _power(root: Path, kind: str, online: str | None = None, status: str | None = None) -> None:
    d = root / "sys/class/power_supply" / kind
    d.mkdir(parents=True)
    (d / "type").write_text(kind + "\n")
    if online is not None:
        (d / "online").write_text(online + "\n")
    if status is not None:
        (d / "status").write_text(status + "\n")


def test_adapt_runs_only_when_idle_and_on_ac(cfg, tmp_path):
    rec = Recorder()
    battery = tmp_path / "bat"
    _power(battery, "Mains", online="0")
    _power(battery, "Battery", status="Discharging")
    assert service.adapt_if_idle(cfg, root=battery, loadavg=lambda: (0.1, 0, 0), cpus=4, runner=rec)["ran"] is False
    mains = tmp_path / "ac"
    _power(mains, "Mains", online="1")
    busy = service.adapt_if_idle(cfg, root=mains, loadavg=lambda: (3.9, 0, 0), cpus=4, runner=rec)
    assert busy["ran"] is False and "busy" in busy["reason"]
    assert rec.calls == []
    ran = service.adapt_if_idle(cfg, root=mains, loadavg=lambda: (0.4, 0, 0), cpus=4, runner=rec)
    assert ran["ran"] is True and rec.calls[-1][1:4] == ["-m", "edge_agent.cli", "adapt"]
    # no power supply listed (a Jetson on a barrel jack, a desktop): counts as mains
    assert service.adapt_if_idle(cfg, root=tmp_path / "none", loadavg=lambda: (0.0, 0, 0), cpus=1,
                                 runner=rec)["ran"] is True


def test_a_system_install_by_a_user_copies_and_enables_through_sudo(cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(service, "_needs_sudo", lambda user, d: True)
    rec = Recorder()
    d = tmp_path / "etc-systemd"
    service.install(cfg, user=False, directory=d, runner=rec)
    copy = next(c for c in rec.calls if c[:2] == ["sudo", "install"])
    assert copy[-1] == str(d) and all(Path(f).parent == cfg.home / "run" / "units" for f in copy[4:-1])
    assert ["sudo", "systemctl", "enable", "--now", RUN_UNIT, ADAPT_TIMER] in rec.calls
    assert "User=" in (cfg.home / "run" / "units" / RUN_UNIT).read_text()
