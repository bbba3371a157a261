"""`edge-agent service install|uninstall|status|logs [--user]`: run the writer at boot under systemd.

Three units, written to /etc/systemd/system (system; needs root) or ~/.config/systemd/user (`--user`):

- `edge-agent.service` runs `edge-agent run <service.source> --home <home>` at boot, restarts it on failure
  (RestartSec=service.restart_seconds, growing to 5 minutes via RestartSteps where systemd >= 254 has it), logs
  to the journal (`edge-agent service logs`), and stops it with SIGINT, which `run` treats as Ctrl-C: everything
  committed is kept.
- `edge-agent-adapt.timer` fires every `service.adapt_every_minutes` and starts `edge-agent-adapt.service`, which
  holds only on AC power (ConditionACPower=, which reads /sys/class/power_supply; no supply listed counts as AC)
  and runs `edge-agent service adapt-if-idle`: Phase Two only when the 1-minute load per core is under
  `service.idle_max_load` (and, again, on AC per /sys/class/power_supply), at idle CPU and I/O priority.

A `--user` service starts at boot only if the user lingers (`loginctl enable-linger $USER`); install says so.
"""

from __future__ import annotations

import getpass
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from edge_agent.config import Config
from edge_agent.errors import EdgeAgentError

RUN_UNIT = "edge-agent.service"
ADAPT_UNIT = "edge-agent-adapt.service"
ADAPT_TIMER = "edge-agent-adapt.timer"
UNITS = (RUN_UNIT, ADAPT_UNIT, ADAPT_TIMER)
RESTART_STEPS_SYSTEMD = 254  # RestartSteps= / RestartMaxDelaySec= appeared in systemd 254
MAX_RESTART_DELAY_S = 300

Runner = Callable[..., subprocess.CompletedProcess]


class ServiceError(EdgeAgentError):
    """The service cannot be installed, changed or queried (permissions, no systemd)."""


def unit_dir(user: bool) -> Path:
    if user:
        base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(base) / "systemd" / "user"
    return Path("/etc/systemd/system")


def systemd_version(runner: Runner = subprocess.run) -> int | None:
    try:
        res = runner(["systemctl", "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    parts = (res.stdout or "").split()
    return int(parts[1]) if len(parts) > 1 and parts[0] == "systemd" and parts[1].isdigit() else None


def _arg(value: str) -> str:
    """One ExecStart argument in systemd's syntax: quoted when needed; % and $ escaped."""
    v = str(value).replace("%", "%%").replace("$", "$$")
    if v and not any(c in v for c in ' \t"\'\\;'):
        return v
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _command(python: str, *args: str) -> str:
    return " ".join(_arg(a) for a in (python, "-m", "edge_agent.cli", *args))


def render_units(cfg: Config, *, user: bool, python: str | None = None, systemd: int | None = None,
                 account: str | None = None) -> dict[str, str]:
    """The three unit files' text, by file name. `systemd`: the version to write for (None: the newest syntax)."""
    python = python or sys.executable
    home = str(cfg.home)
    svc = cfg.service
    wanted_by = "default.target" if user else "multi-user.target"
    who = [] if user else [f"User={account or getpass.getuser()}", "SupplementaryGroups=video"]
    backoff = (["RestartSteps=6", f"RestartMaxDelaySec={MAX_RESTART_DELAY_S}"]
               if systemd is None or systemd >= RESTART_STEPS_SYSTEMD else
               ["# systemd < 254 has no RestartSteps=: restarts stay spaced by RestartSec"])
    common_env = [f"Environment={_arg('EDGE_AGENT_HOME=' + home)}", "Environment=PYTHONUNBUFFERED=1"]
    run = "\n".join([
        "[Unit]",
        f"Description=edge-agent: write memories of {svc.source}",
        "After=local-fs.target network-online.target",
        "Wants=network-online.target" if not user else "# (user manager: network-online.target is the system's)",
        "StartLimitIntervalSec=0",  # never give up restarting; the backoff spaces the attempts
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={_command(python, 'run', svc.source, '--home', home)}",
        *common_env,
        *who,
        "Restart=on-failure",
        f"RestartSec={svc.restart_seconds}",
        *backoff,
        "KillSignal=SIGINT",  # `run` stops as on Ctrl-C: the segment in flight is the only loss
        "TimeoutStopSec=60",
        "StandardOutput=journal",
        "StandardError=journal",
        "SyslogIdentifier=edge-agent",
        "",
        "[Install]",
        f"WantedBy={wanted_by}",
        "",
    ])
    adapt = "\n".join([
        "[Unit]",
        "Description=edge-agent: Phase Two adaptation when the device is idle",
        *(["ConditionACPower=true"] if svc.require_ac_power else []),
        "",
        "[Service]",
        "Type=oneshot",
        f"ExecStart={_command(python, 'service', 'adapt-if-idle', '--home', home)}",
        *common_env,
        *who,
        "Nice=19",
        "IOSchedulingClass=idle",
        "CPUSchedulingPolicy=idle",
        "StandardOutput=journal",
        "StandardError=journal",
        "SyslogIdentifier=edge-agent-adapt",
        "",
    ])
    timer = "\n".join([
        "[Unit]",
        f"Description=edge-agent: try Phase Two every {svc.adapt_every_minutes} minutes",
        "",
        "[Timer]",
        "OnBootSec=15min",
        f"OnUnitInactiveSec={svc.adapt_every_minutes}min",
        "RandomizedDelaySec=60",
        f"Unit={ADAPT_UNIT}",
        "",
        "[Install]",
        "WantedBy=timers.target",
        "",
    ])
    return {RUN_UNIT: run, ADAPT_UNIT: adapt, ADAPT_TIMER: timer}


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values]}} (comments and blank lines skipped): for tests and status."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for line in text.splitlines():
        s = line.strip()
        if not s or s[0] in "#;":
            continue
        if s.startswith("[") and s.endswith("]"):
            section = s[1:-1]
            out.setdefault(section, {})
            continue
        if section is None or "=" not in s:
            raise ValueError(f"not a unit-file line: {line!r}")
        key, _, value = s.partition("=")
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


def _needs_sudo(user: bool, d: Path) -> bool:
    """A system install by an ordinary user: the unit folder is root's, so copies and systemctl go through sudo
    (the process itself stays the user's: the data folder is owner-only and must stay the wearer's)."""
    if user or os.geteuid() == 0:
        return False
    probe = d if d.exists() else d.parent
    return not os.access(probe, os.W_OK)


def _systemctl(user: bool, *args: str, runner: Runner = subprocess.run, check: bool = True,
               sudo: bool = False) -> subprocess.CompletedProcess:
    cmd = [*(["sudo"] if sudo else []), "systemctl", *(["--user"] if user else []), *args]
    try:
        res = runner(cmd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise ServiceError("systemctl not found: this system does not run systemd") from None
    except subprocess.SubprocessError as e:
        raise ServiceError(f"{' '.join(cmd)}: {e}") from None
    if check and res.returncode != 0:
        raise ServiceError(f"{' '.join(cmd)} failed ({res.returncode}): {(res.stderr or res.stdout).strip()}")
    return res


def install(cfg: Config, *, user: bool, start: bool = True, directory: Path | None = None,
            runner: Runner = subprocess.run, python: str | None = None) -> dict[str, Any]:
    """Write the units, reload systemd, enable (and start unless `start=False`) the service and the timer."""
    d = directory or unit_dir(user)
    units = render_units(cfg, user=user, python=python, systemd=systemd_version(runner))
    sudo = _needs_sudo(user, d)
    cfg.home.mkdir(parents=True, exist_ok=True, mode=0o700)  # the service's data folder, the user's own
    target = cfg.home / "run" / "units" if sudo else d  # staged in the home, then copied by `sudo install`
    try:
        target.mkdir(parents=True, exist_ok=True)
        for name, text in units.items():
            (target / name).write_text(text, encoding="utf-8")
            os.chmod(target / name, 0o644)
    except PermissionError:
        raise ServiceError(f"cannot write units into {target} (permission denied): use --user for a user "
                           "service") from None
    if sudo:
        cmd = ["sudo", "install", "-m", "0644", *(str(target / n) for n in units), str(d)]
        res = runner(cmd, capture_output=False, text=True)
        if res.returncode != 0:
            raise ServiceError(f"{' '.join(cmd)} failed ({res.returncode}): could not copy the units as root")
    _systemctl(user, "daemon-reload", runner=runner, sudo=sudo)
    enable = ["enable", *(["--now"] if start else []), RUN_UNIT, ADAPT_TIMER]
    _systemctl(user, *enable, runner=runner, sudo=sudo)
    notes = []
    if user:
        notes.append(f"a user service starts at boot only if you linger: sudo loginctl enable-linger "
                     f"{getpass.getuser()}")
    return {"installed": [str(d / n) for n in units], "started": start, "user": user, "notes": notes}


def uninstall(cfg: Config, *, user: bool, directory: Path | None = None,
              runner: Runner = subprocess.run) -> dict[str, Any]:
    d = directory or unit_dir(user)
    sudo = _needs_sudo(user, d)
    _systemctl(user, "disable", "--now", RUN_UNIT, ADAPT_TIMER, runner=runner, check=False, sudo=sudo)
    present = [d / n for n in UNITS if (d / n).exists()]
    if sudo and present:
        runner(["sudo", "rm", "-f", *(str(p) for p in present)], capture_output=False, text=True)
    removed = []
    for p in present:
        try:
            p.unlink()
        except FileNotFoundError:
            pass
        except PermissionError:
            raise ServiceError(f"cannot remove {p} (permission denied)") from None
        if not p.exists():
            removed.append(str(p))
    _systemctl(user, "daemon-reload", runner=runner, check=False, sudo=sudo)
    return {"removed": removed, "user": user}


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except (OSError, ValueError, TypeError):
        return False


def health(cfg: Config, *, now: float | None = None) -> dict[str, Any]:
    """What the store and the runner's status file say: segments behind, drops and degradations in the last hour,
    last memory time, active adapter, disk used vs budget."""
    from edge_agent.device.budget import usage
    from edge_agent.device.events import summary_since
    from edge_agent.device.keepup import read_status
    from edge_agent.store import Store

    now = time.time() if now is None else now
    status = read_status(cfg)
    alive = bool(status and _pid_alive(status.get("pid")))
    out: dict[str, Any] = {
        "writer_alive": alive,
        "segments_behind": status.get("queued") if (status and alive) else None,
        "keepup_level": status.get("level") if (status and alive) else None,
        "status_updated_at": status.get("updated_at") if status else None,
    }
    if not cfg.db_path.is_file():
        out.update({"last_memory_at": None, "active_adapter": None, "last_hour": None, "disk": None,
                    "note": f"no store yet at {cfg.db_path}"})
        return out
    with Store.open(cfg.db_path) as store:
        last = store._one("SELECT MAX(t_end) AS t, MAX(created_at) AS c FROM memories")
        adapter = store.active_adapter()
        out["last_memory_at"] = last["c"] if last else None
        out["last_memory_t_end"] = last["t"] if last else None
        out["active_adapter"] = adapter["id"] if adapter else None
        out["last_hour"] = summary_since(store, now - 3600)
        # frames dropped by the capture queue also show on the segments committed after the loss
        row = store._one("SELECT COALESCE(SUM(frames_dropped), 0) AS f FROM segments WHERE created_at > ?",
                         (now - 3600,))
        out["last_hour"]["frames_dropped"] = int(row["f"]) if row else 0
        use = usage(store, cfg)
    out["disk"] = {"used_bytes": use["used_bytes"], "max_bytes": use["max_bytes"], "file_bytes": use["file_bytes"],
                   "retention_days": use["retention_days"],
                   "share_of_budget": round(use["used_bytes"] / use["max_bytes"], 4) if use["max_bytes"] else None}
    return out


def status(cfg: Config, *, user: bool, runner: Runner = subprocess.run) -> dict[str, Any]:
    """`service status`: systemd's view of the units plus `health(cfg)`."""
    units: dict[str, Any] = {}
    for name in (RUN_UNIT, ADAPT_TIMER):
        try:
            active = _systemctl(user, "is-active", name, runner=runner, check=False).stdout.strip() or "unknown"
            enabled = _systemctl(user, "is-enabled", name, runner=runner, check=False).stdout.strip() or "unknown"
        except ServiceError as e:
            active, enabled = "unknown", str(e)
        units[name] = {"active": active, "enabled": enabled}
    running = units[RUN_UNIT]["active"] == "active"
    return {"running": running, "user": user, "units": units, **health(cfg)}


def logs(*, user: bool, lines: int = 100, follow: bool = False, runner: Runner = subprocess.run) -> int:
    """journalctl for the service and the adapt job; returns its exit status."""
    cmd = ["journalctl", *(["--user"] if user else []), "-u", RUN_UNIT, "-u", ADAPT_UNIT, "-n", str(lines),
           "--no-pager", *(["-f"] if follow else [])]
    try:
        return runner(cmd).returncode
    except FileNotFoundError:
        raise ServiceError("journalctl not found: this system does not run systemd") from None


def adapt_if_idle(cfg: Config, *, root: Path = Path("/"), loadavg: Callable[[], tuple] = os.getloadavg,
                  cpus: int | None = None, runner: Runner = subprocess.run) -> dict[str, Any]:
    """The adapt timer's job: `edge-agent adapt` only when idle and (if required) on AC power."""
    from edge_agent.device.facts import on_ac_power

    cpus = cpus or os.cpu_count() or 1
    load = loadavg()[0] / cpus
    ac = on_ac_power(root)
    if cfg.service.require_ac_power and ac is False:
        return {"ran": False, "reason": "on battery (/sys/class/power_supply)", "load_per_core": round(load, 3)}
    if load >= cfg.service.idle_max_load:
        return {"ran": False, "reason": f"busy: load {load:.2f} per core >= service.idle_max_load "
                                        f"{cfg.service.idle_max_load:g}", "load_per_core": round(load, 3)}
    cmd = [sys.executable, "-m", "edge_agent.cli", "adapt", "--home", str(cfg.home), "--json"]
    res = runner(cmd, capture_output=True, text=True)
    try:
        summary = json.loads(res.stdout) if res.stdout.strip() else None
    except json.JSONDecodeError:
        summary = None
    return {"ran": True, "returncode": res.returncode, "load_per_core": round(load, 3), "on_ac": ac,
            "summary": summary, "stderr": (res.stderr or "")[-2000:] or None, "command": shlex.join(cmd)}
