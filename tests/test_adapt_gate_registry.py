"""Gate decisions and the adapter registry (files, provenance, activate / rollback / export)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.adapt.gate import GateConfig, decide
from edge_agent.adapt.registry import GGUF_NAME, SAFETENSORS_NAME, AdapterRegistry, new_adapter_id
from edge_agent.errors import AdapterError, ConfigError
from edge_agent.store import Store
from edge_agent.types import SteeringVector
from edge_agent.vlm import steering


def test_gate_accepts_only_improvement_with_format_kept():
    # the evidence rules (min_holdout_pairs, max_p_value) are off here; tests/test_claims_gate.py checks them
    cfg = GateConfig(min_holdout_pairs=1, max_p_value=1.0)
    ok = decide(new_accuracy=0.75, base_accuracy=0.5, n_holdout=4, new_compliance=1.0, base_compliance=1.0, cfg=cfg)
    assert ok.accepted and "0.500 -> 0.750" in ok.reason
    same = decide(new_accuracy=0.5, base_accuracy=0.5, n_holdout=4, new_compliance=1.0, base_compliance=1.0,
                  cfg=cfg, baseline="adapter X")
    assert not same.accepted and "does not improve on adapter X 0.500" in same.reason
    drop = decide(new_accuracy=1.0, base_accuracy=0.5, n_holdout=4, new_compliance=0.9, base_compliance=1.0, cfg=cfg)
    assert not drop.accepted and "format compliance drops 1.000 -> 0.900" in drop.reason
    tolerated = decide(new_accuracy=1.0, base_accuracy=0.5, n_holdout=4, new_compliance=0.9, base_compliance=1.0,
                       cfg=GateConfig(max_compliance_drop=0.1, min_holdout_pairs=1, max_p_value=1.0))
    assert tolerated.accepted
    blind = decide(new_accuracy=1.0, base_accuracy=0.5, n_holdout=4, new_compliance=None, base_compliance=None,
                   cfg=cfg)
    assert not blind.accepted and "not measured" in blind.reason
    assert decide(new_accuracy=1.0, base_accuracy=0.5, n_holdout=4, new_compliance=None, base_compliance=None,
                  cfg=GateConfig(require_compliance=False, min_holdout_pairs=1, max_p_value=1.0)).accepted
    few = decide(new_accuracy=1.0, base_accuracy=0.5, n_holdout=1, new_compliance=1, base_compliance=1,
                 cfg=GateConfig(min_holdout_pairs=2))
    assert not few.accepted and "only 1 held-out" in few.reason
    gain = decide(new_accuracy=0.55, base_accuracy=0.5, n_holdout=20, new_compliance=1, base_compliance=1,
                  cfg=GateConfig(min_accuracy_gain=0.1))
    assert not gain.accepted
    with pytest.raises(ConfigError, match="gate.max_compliance_drop=2"):
        GateConfig(max_compliance_drop=2)


@pytest.fixture
def registry(tmp_path):
    s = Store.open(tmp_path / "memory.db")
    yield AdapterRegistry(s, tmp_path / "adapters")
    s.close()


def _vec(seed, layer=22):
    v = np.random.RandomState(seed).randn(64).astype(np.float32)
    return SteeringVector(v, layer=layer, scale=1.0, base_model_hash="base-hash")


def test_register_writes_both_files_and_provenance(registry, tmp_path):
    v = _vec(0)
    row = registry.register(v, status="rejected", reason="held-out accuracy 0.4", pair_ids=[3, 1, 3],
                            feedback_ids=[7], metrics={"holdout": {"accuracy": 0.4}},
                            extra={"scale_after_training": 1.5}, adapter_id="a1")
    assert row["id"] == "a1" and row["status"] == "rejected" and row["reason"] == "held-out accuracy 0.4"
    assert row["pair_ids"] == [1, 3] and row["feedback_ids"] == [7] and row["metrics"]["holdout"]["accuracy"] == 0.4
    assert row["scale_after_training"] == 1.5 and row["base_model_hash"] == "base-hash"
    assert (row["layer"], row["hidden_size"], row["scale"]) == (22, 64, 1.0)
    folder = tmp_path / "adapters" / "a1"
    assert (folder / SAFETENSORS_NAME).is_file() and (folder / GGUF_NAME).is_file()
    st = steering.load_safetensors(folder / SAFETENSORS_NAME)
    gg = steering.load_control_vector(folder / GGUF_NAME)
    np.testing.assert_array_equal(st.vector, v.vector)
    np.testing.assert_allclose(gg.applied(), v.applied(), rtol=1e-7)
    assert st.adapter_id == gg.adapter_id == "a1" and st.layer == gg.layer == 22
    assert registry.active() is None  # rejected adapters never go live by themselves
    with pytest.raises(AdapterError, match="adapter a1: already registered"):
        registry.register(v, adapter_id="a1")  # id taken: nothing overwritten


def test_activate_rollback_export(registry, tmp_path):
    a = registry.register(_vec(1), status="active")["id"]
    b = registry.register(_vec(2), status="active", adapter_id="b")["id"]
    assert registry.active()["id"] == b
    assert {r["id"]: r["status"] for r in registry.list()} == {a: "inactive", b: "active"}
    np.testing.assert_array_equal(registry.active_vector().vector, _vec(2).vector)
    back = registry.rollback()
    assert back["id"] == a and registry.get(b)["status"] == "rolled_back"
    assert registry.rollback() is None and registry.active() is None  # back to the base model
    with pytest.raises(AdapterError, match="no adapter is active"):
        registry.rollback()
    registry.activate(b)
    assert registry.active()["id"] == b
    out_g = registry.export(b, tmp_path / "out" / "b.gguf")
    out_s = registry.export(b, tmp_path / "out" / "b.safetensors")
    np.testing.assert_allclose(steering.load(out_g).applied(), _vec(2).vector, rtol=1e-7)
    np.testing.assert_array_equal(steering.load(out_s).vector, _vec(2).vector)
    with pytest.raises(AdapterError, match="adapter nope: no such adapter"):
        registry.activate("nope")


def test_adapter_ids_sort_by_time():
    v = np.ones(4, np.float32)
    assert new_adapter_id(v, now=0.0).startswith("19700101-000000-")
    assert new_adapter_id(v, now=0.0) != new_adapter_id(2 * v, now=0.0)
