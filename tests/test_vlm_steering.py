"""Steering vectors on disk: safetensors and llama.cpp control-vector GGUF round trips, malformed files, fit checks."""

import numpy as np
import pytest

from edge_agent.errors import AdapterError
from edge_agent.types import SteeringVector
from edge_agent.vlm import steering as S


def _write(path, arch, tensors, kvs=()):
    """A GGUF with the given architecture, string/int KVs and float32 tensors."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch=arch)
    for key, value in kvs:
        (w.add_int32 if isinstance(value, int) else w.add_string)(key, value)
    for name, data in tensors:
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _vec(n=64, layer=22, scale=1.5, h="base-abc", aid="a1"):
    return SteeringVector(np.random.RandomState(1).randn(n).astype(np.float32), layer=layer, scale=scale,
                          base_model_hash=h, adapter_id=aid)


def test_safetensors_round_trip_exact(tmp_path):
    v = _vec()
    w = S.load(S.save(v, tmp_path / "a.safetensors"))
    assert np.array_equal(w.vector, v.vector) and w.vector.dtype == np.float32
    assert (w.layer, w.scale, w.base_model_hash, w.adapter_id) == (22, 1.5, "base-abc", "a1")


def test_safetensors_without_adapter_id(tmp_path):
    w = S.load_safetensors(S.save_safetensors(_vec(aid=None), tmp_path / "a.safetensors"))
    assert w.adapter_id is None


def test_control_vector_round_trip_folds_scale(tmp_path):
    import gguf

    v = _vec(scale=1.5)
    path = S.save(v, tmp_path / "a.gguf")
    r = gguf.GGUFReader(str(path))
    kv = {k: f.contents() for k, f in r.fields.items()}
    assert kv["general.architecture"] == "controlvector"
    assert kv["controlvector.model_hint"] == "qwen3vl" and kv["controlvector.layer_count"] == 1
    [t] = r.tensors
    assert t.name == "direction.22" and t.tensor_type == gguf.GGMLQuantizationType.F32
    # the file holds the applied vector, so stock llama.cpp applies what our backend applies
    assert np.allclose(np.array(t.data), 1.5 * v.vector, rtol=0, atol=1e-6)
    w = S.load(path)
    assert np.allclose(w.vector, v.vector, rtol=1e-6, atol=1e-7)
    assert (w.layer, w.scale, w.base_model_hash, w.adapter_id) == (22, 1.5, "base-abc", "a1")
    assert np.allclose(w.applied(), v.applied(), atol=1e-6)


def test_stock_llama_cpp_control_vector_without_our_keys(tmp_path):
    """A control vector as llama.cpp's cvector-generator writes it (one layer): scale 1, no hash."""
    path = _write(tmp_path / "stock.gguf", "controlvector", [("direction.5", np.arange(8, dtype=np.float32))],
                  [("controlvector.model_hint", "qwen3vl"), ("controlvector.layer_count", 1)])
    v = S.load(path)
    assert v.layer == 5 and v.scale == 1.0 and v.base_model_hash == "" and v.adapter_id is None
    assert np.array_equal(v.vector, np.arange(8, dtype=np.float32))


def test_control_vector_with_two_layers_is_refused(tmp_path):
    path = _write(tmp_path / "two.gguf", "controlvector",
                  [(f"direction.{layer}", np.ones(8, dtype=np.float32)) for layer in (3, 4)])
    with pytest.raises(AdapterError, match="2 direction tensors"):
        S.load(path)


@pytest.mark.parametrize("suffix", [".gguf", ".safetensors"])
def test_malformed_files(tmp_path, suffix):
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(b"this is not an adapter at all" * 10)
    with pytest.raises(AdapterError, match="bad"):
        S.load(bad)
    with pytest.raises(AdapterError, match="not found"):
        S.load(tmp_path / f"missing{suffix}")


def test_gguf_of_other_architecture_is_refused(tmp_path):
    path = _write(tmp_path / "llama.gguf", "llama", [("direction.1", np.ones(4, dtype=np.float32))])
    with pytest.raises(AdapterError, match="architecture 'llama'"):
        S.load(path)


def test_safetensors_metadata_mismatch(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "m.safetensors"
    save_file({"direction": np.ones(8, np.float32)}, str(path),
              metadata={"layer": "22", "hidden_size": "16", "base_model_hash": "x", "scale": "1.0"})
    with pytest.raises(AdapterError, match="metadata says float32"):
        S.load(path)
    save_file({"direction": np.ones(8, np.float32)}, str(path), metadata={"layer": "22"})
    with pytest.raises(AdapterError, match="lacks hidden_size"):
        S.load(path)
    save_file({"other": np.ones(8, np.float32)}, str(path), metadata={})
    with pytest.raises(AdapterError, match="no tensor 'direction'"):
        S.load(path)


def test_check_compatible_names_both_values():
    v = _vec(n=64, layer=22, h="aaa")
    S.check_compatible(v, hidden_size=64, n_layers=24, base_model_hash="aaa")
    with pytest.raises(AdapterError, match="hidden size 64 does not match the model's hidden size 2048"):
        S.check_compatible(v, hidden_size=2048, n_layers=28, base_model_hash="aaa")
    with pytest.raises(AdapterError, match="'aaa' does not match the loaded model's 'bbb'"):
        S.check_compatible(v, hidden_size=64, n_layers=24, base_model_hash="bbb")
    with pytest.raises(AdapterError, match="layer 22 out of range 1..19"):
        S.check_compatible(v, hidden_size=64, n_layers=20, base_model_hash="aaa")
    with pytest.raises(AdapterError, match="layer=0"):
        S.check_compatible(_vec(layer=0, h="aaa"), hidden_size=64, n_layers=24, base_model_hash="aaa")
    bad = _vec(h="aaa")
    bad.vector[3] = np.nan
    with pytest.raises(AdapterError, match="NaN"):
        S.check_compatible(bad, hidden_size=64, n_layers=24, base_model_hash="aaa")
