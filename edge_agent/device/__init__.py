"""Running on a device for days: model profiles, keeping up with a live camera, the storage budget, the systemd
service, and the device facts `edge-agent doctor --device` reports.

Imports the bottom, `store`, `vlm` and `capture` (docs/architecture.md); the runtime imports it, never the reverse.
"""
