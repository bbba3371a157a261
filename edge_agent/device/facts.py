"""What the device is and whether it can run the configured model: `edge-agent doctor --device [--json]`.

Every field is always there; a fact the platform does not expose (a Jetson's power mode on a laptop, thermal
zones in a container) is the string "not present", never a missing key. Paths are read below `root` so tests
can point it at a fake /sys, /proc, /dev and /etc.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from edge_agent.config import Config

NOT_PRESENT = "not present"
GiB = 1 << 30

FIELDS = ("platform", "llama_cpp", "gpu", "gpu_layers", "memory", "disk", "cameras", "csi_camera",
          "thermal_zones", "power", "profile")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").replace("\x00", "").strip()
    except OSError:
        return None


def _platform(root: Path) -> dict[str, Any]:
    model = _read(root / "proc/device-tree/model")
    l4t = _read(root / "etc/nv_tegra_release")
    return {"system": platform.system(), "machine": platform.machine(), "kernel": platform.release(),
            "python": sys.version.split()[0], "device_model": model or NOT_PRESENT,
            "jetson": bool(l4t) or bool(model and "jetson" in model.lower()),
            "l4t_release": l4t.splitlines()[0] if l4t else NOT_PRESENT}


def _llama() -> dict[str, Any]:
    try:
        import llama_cpp
    except Exception as e:  # a broken native build fails here in many ways; report, do not crash doctor
        return {"installed": False, "version": NOT_PRESENT, "gpu_offload_built": NOT_PRESENT,
                "error": f"{type(e).__name__}: {e}"}
    try:
        gpu = bool(llama_cpp.llama_supports_gpu_offload())
    except Exception:  # an old binding without the call
        gpu = NOT_PRESENT
    return {"installed": True, "version": getattr(llama_cpp, "__version__", NOT_PRESENT), "gpu_offload_built": gpu}


def _gpu(root: Path) -> dict[str, Any]:
    dev = root / "dev"
    nodes = sorted(str(p.relative_to(root).as_posix()) for pat in ("nvidia[0-9]*", "nvhost-gpu", "nvhost-ctrl-gpu",
                                                                     "nvgpu/igpu0", "dri/renderD*")
                   for p in dev.glob(pat))
    return {"device_nodes": ["/" + n for n in nodes] or NOT_PRESENT,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", NOT_PRESENT)}


def _gpu_layers(cfg: Config, llama: dict[str, Any]) -> dict[str, Any]:
    configured = cfg.model.n_gpu_layers
    source = cfg.sources.get("model.n_gpu_layers", "default")
    n_layers = None
    try:
        from edge_agent.models import load_catalog

        entry = load_catalog().get(cfg.model.name)
        n_layers = entry.n_layers if entry is not None else None
    except Exception:
        pass
    if llama.get("gpu_offload_built") is not True:
        in_use, note = 0, "llama.cpp built without GPU offload: every layer runs on the CPU"
    elif configured == 0:
        in_use, note = 0, "GPU offload built but model.n_gpu_layers = 0: set it to -1 to use the GPU"
    elif configured < 0:
        in_use = n_layers if n_layers is not None else "all"
        note = "all layers on the GPU"
    else:
        in_use = min(configured, n_layers) if n_layers is not None else configured
        note = f"{in_use} layers on the GPU, the rest on the CPU"
    return {"configured": configured, "source": source, "in_use": in_use, "model_layers": n_layers or NOT_PRESENT,
            "note": note}


def _meminfo(root: Path) -> dict[str, int]:
    out = {}
    for line in (_read(root / "proc/meminfo") or "").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0]) * 1024
    return out


def _memory(root: Path, needs: dict[str, Any]) -> dict[str, Any]:
    info = _meminfo(root)
    total, avail = info.get("MemTotal"), info.get("MemAvailable")
    need = int(needs["ram_gb"] * GiB) if needs.get("ram_gb") is not None else None
    return {"total_bytes": total if total is not None else NOT_PRESENT,
            "available_bytes": avail if avail is not None else NOT_PRESENT,
            "needed_bytes": need if need is not None else NOT_PRESENT,
            "ok": (avail >= need) if (need is not None and avail is not None) else NOT_PRESENT}


def _disk(cfg: Config, needs: dict[str, Any]) -> dict[str, Any]:
    probe = cfg.home if cfg.home.exists() else next((p for p in cfg.home.parents if p.exists()), Path("/"))
    free = shutil.disk_usage(probe).free
    model_need = int(needs["disk_gb"] * GiB) if needs.get("disk_gb") is not None else 0
    need = model_need + cfg.storage.max_bytes
    return {"path": str(probe), "free_bytes": free, "model_bytes": model_need or NOT_PRESENT,
            "storage_max_bytes": cfg.storage.max_bytes or NOT_PRESENT, "needed_bytes": need or NOT_PRESENT,
            "ok": free >= need if need else NOT_PRESENT,
            "note": None if cfg.storage.max_bytes else "storage.max_bytes = 0: memories grow without limit"}


def _cameras(root: Path) -> list[dict[str, Any]]:
    out = []
    for p in sorted((root / "dev").glob("video*"), key=lambda p: (len(p.name), p.name)):
        name = _read(root / "sys/class/video4linux" / p.name / "name")
        out.append({"device": "/dev/" + p.name, "name": name or NOT_PRESENT})
    return out


def _csi(root: Path) -> dict[str, Any]:
    from edge_agent.device.csi import csi_pipeline, opencv_gstreamer

    gst = opencv_gstreamer()
    argus = any((root / p).exists() for p in ("usr/sbin/nvargus-daemon", "usr/bin/nvargus-daemon"))
    if gst is None:
        msg = "OpenCV is not importable"
    elif not gst:
        msg = ("the installed OpenCV has no GStreamer (pip's opencv-python-headless never has it): a CSI camera "
               "cannot be opened; install JetPack's python3-opencv or use a USB camera")
    elif not argus:
        msg = "OpenCV has GStreamer, but nvargus-daemon (Jetson CSI) is not present"
    else:
        msg = "ready: edge-agent run \"gst:<pipeline>\" (service.source accepts the same)"
    return {"opencv_gstreamer": NOT_PRESENT if gst is None else gst, "argus_daemon": argus,
            "pipeline": "gst:" + csi_pipeline(), "message": msg}


def _thermal(root: Path) -> list[dict[str, Any]] | str:
    zones = []
    for z in sorted((root / "sys/class/thermal").glob("thermal_zone*"), key=lambda p: int(p.name[12:] or 0)):
        temp = _read(z / "temp")
        zones.append({"zone": z.name, "type": _read(z / "type") or NOT_PRESENT,
                      "temp_c": round(int(temp) / 1000, 1) if temp and temp.lstrip("-").isdigit() else NOT_PRESENT})
    return zones or NOT_PRESENT


def power_supplies(root: Path = Path("/")) -> list[dict[str, Any]]:
    out = []
    for s in sorted((root / "sys/class/power_supply").glob("*")):
        kind = _read(s / "type") or "Unknown"
        online = _read(s / "online")
        out.append({"name": s.name, "type": kind, "online": None if online is None else online == "1",
                    "status": _read(s / "status"), "capacity": _read(s / "capacity")})
    return out


def on_ac_power(root: Path = Path("/")) -> bool | None:
    """True: on mains (or USB-C) power; False: on battery; None: the platform does not say (treat as mains:
    a Jetson on a barrel jack, a desktop or a container usually lists nothing)."""
    supplies = power_supplies(root)
    mains = [s for s in supplies if s["type"] in ("Mains", "USB", "USB_C", "USB_PD") and s["online"] is not None]
    if any(s["online"] for s in mains):
        return True
    if mains:
        return False
    if any(s["type"] == "Battery" and (s["status"] or "").lower() == "discharging" for s in supplies):
        return False
    return None


def _power(root: Path) -> dict[str, Any]:
    mode: str = NOT_PRESENT
    nvpmodel = shutil.which("nvpmodel")
    if nvpmodel:
        try:
            res = subprocess.run([nvpmodel, "-q"], capture_output=True, text=True, timeout=5)
            lines = [ln.strip() for ln in res.stdout.splitlines() if ln.strip()]
            mode = " / ".join(lines) or NOT_PRESENT
        except (OSError, subprocess.SubprocessError):
            pass
    supplies = power_supplies(root)
    ac = on_ac_power(root)
    return {"mode": mode, "supplies": supplies or NOT_PRESENT, "on_ac": NOT_PRESENT if ac is None else ac}


def device_facts(cfg: Config, root: Path | str = "/") -> dict[str, Any]:
    """Every field of FIELDS (see the module docstring)."""
    from edge_agent.device.profiles import effective_profile

    root = Path(root)
    profile = effective_profile(cfg)
    llama = _llama()
    return {"platform": _platform(root), "llama_cpp": llama, "gpu": _gpu(root),
            "gpu_layers": _gpu_layers(cfg, llama), "memory": _memory(root, profile["needs"]),
            "disk": _disk(cfg, profile["needs"]), "cameras": _cameras(root), "csi_camera": _csi(root),
            "thermal_zones": _thermal(root), "power": _power(root), "profile": profile}


def _gb(v: Any) -> str:
    return f"{v / GiB:.1f} GiB" if isinstance(v, int) else str(v)


def summary_lines(facts: dict[str, Any]) -> list[tuple[bool | None, str, str]]:
    """(ok: True/False/None for "no verdict", name, detail) rows for the human-readable doctor output."""
    p, ll, gl, mem, disk = facts["platform"], facts["llama_cpp"], facts["gpu_layers"], facts["memory"], facts["disk"]
    rows: list[tuple[bool | None, str, str]] = [
        (None, "platform", f"{p['system']} {p['machine']}, {p['device_model']}, L4T {p['l4t_release']}"),
        (ll["installed"], "llama.cpp", f"{ll['version']}, GPU offload built: {ll['gpu_offload_built']}"),
        (None, "gpu layers", f"configured {gl['configured']} ({gl['source']}), in use {gl['in_use']}: {gl['note']}"),
        (mem["ok"] if isinstance(mem["ok"], bool) else None, "memory",
         f"{_gb(mem['available_bytes'])} available of {_gb(mem['total_bytes'])}, profile needs "
         f"{_gb(mem['needed_bytes'])}"),
        (disk["ok"] if isinstance(disk["ok"], bool) else None, "disk",
         f"{_gb(disk['free_bytes'])} free under {disk['path']}, needs {_gb(disk['needed_bytes'])}"
         + (f" ({disk['note']})" if disk["note"] else "")),
        (bool(facts["cameras"]) or None, "cameras",
         ", ".join(f"{c['device']} ({c['name']})" for c in facts["cameras"]) or "no /dev/video* found"),
        (None, "csi camera", facts["csi_camera"]["message"]),
        (None, "thermal", NOT_PRESENT if isinstance(facts["thermal_zones"], str) else
         ", ".join(f"{z['type']} {z['temp_c']} C" for z in facts["thermal_zones"][:6])),
        (None, "power", f"mode {facts['power']['mode']}, on AC: {facts['power']['on_ac']}"),
    ]
    prof = facts["profile"]
    rows.append((None, "profile", f"{prof['model']} ({prof['profile_source'] or 'no profile: defaults'}): " +
                 ", ".join(f"{r['setting']}={r['value']} [{r['layer']}]" for r in prof["settings"])))
    return rows
