"""edge-agent: on-device memory for wearable cameras (Qwen3-VL on llama.cpp, SQLite, steering-vector DPO)."""

__version__ = "0.1.0"
