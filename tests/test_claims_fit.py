"""Issue 10.2: Phase Two must fit a device: the dtype setting reaches the frozen model (bfloat16 where it runs
natively or where only it fits), a memory estimate is checked before loading with a clear error, and the
llama.cpp model is released while the checkpoint trains."""

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from adapt_support import OBJECTS, BagOfWords, ask, hf_dir, one_torch_thread, prefer, seed_windows  # noqa: E402

from edge_agent.adapt import fit  # noqa: E402
from edge_agent.config import AdaptConfig, Config, GateConfig, RewardConfig, load_config  # noqa: E402
from edge_agent.errors import ModelError  # noqa: E402
from edge_agent.store import Store  # noqa: E402
from edge_agent.vlm.fake import ScriptedBackend  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    yield from one_torch_thread()


@pytest.fixture(scope="module")
def tiny_hf(request, tmp_path_factory):
    return hf_dir(request, tmp_path_factory)


def test_parameter_count_from_headers_matches_torch(tiny_hf):
    from transformers import Qwen3VLForConditionalGeneration

    n = fit.checkpoint_parameters(tiny_hf)
    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_hf)
    assert n == sum(p.numel() for p in model.state_dict().values())


def test_auto_dtype_and_the_memory_check(tiny_hf):
    n = fit.checkpoint_parameters(tiny_hf)
    big = 10**12
    assert fit.plan(tiny_hf, "auto", free=big, bf16_native=True).dtype == "bfloat16"
    assert fit.plan(tiny_hf, "auto", free=big, bf16_native=False).dtype == "float32"
    # float32 does not fit, bfloat16 does: auto takes bfloat16 even where it is emulated
    between = (fit.estimate_bytes(n, "float32") + fit.estimate_bytes(n, "bfloat16")) // 2
    assert fit.plan(tiny_hf, "auto", free=between, bf16_native=False).dtype == "bfloat16"
    with pytest.raises(ModelError, match=r"needs about .* GB of memory, .* GB is available; set adapt.dtype"):
        fit.plan(tiny_hf, "float32", free=between)
    with pytest.raises(ModelError, match="needs about"):
        fit.plan(tiny_hf, "auto", free=1000, bf16_native=False)
    # a 2.125e9-parameter checkpoint (8.5 GB of float32 weights, the figure for Qwen3-VL-2B): the
    # README's estimate for 2B
    assert round(fit.estimate_bytes(2_125_000_000, "float32") / 1e9, 1) == 10.4
    assert round(fit.estimate_bytes(2_125_000_000, "bfloat16") / 1e9, 1) == 5.5


def test_the_dtype_setting_reaches_the_frozen_model(tiny_hf, tmp_path, monkeypatch):
    from edge_agent.adapt import frozen_model
    from edge_agent.adapt.loop import run_adapt

    assert load_config(tmp_path, environ={}).adapt.dtype == "auto"
    seen = []
    real = frozen_model.FrozenQwen3VL.__init__

    def spy(self, hf, layer, *, dtype):
        seen.append(dtype)
        real(self, hf, layer, dtype=dtype)

    monkeypatch.setattr(frozen_model.FrozenQwen3VL, "__init__", spy)
    cfg = Config(home=tmp_path / "home", adapt=AdaptConfig(dtype="bfloat16", steps=2,
                                                            reward=RewardConfig(rule="embedding"),
                                                            gate=GateConfig(min_holdout_pairs=1, max_p_value=1.0)))
    store = Store.open(cfg.db_path)
    seed_windows(store, cfg.frames_dir, OBJECTS[:4])
    ask(store, "Where is the cup?", False, corrected="on the shelf")
    s = run_adapt(store, cfg, tiny_hf, None, BagOfWords(), lambda v: 1.0, base_model_hash="h")
    import torch

    assert seen == [torch.bfloat16] and s["fit"]["dtype"] == "bfloat16"


def test_the_llama_cpp_model_is_released_while_training(tiny_hf, tmp_path, monkeypatch):
    from edge_agent.adapt import frozen_model
    from edge_agent.adapt.job import run_adapt_job

    cfg = Config(home=tmp_path / "home", adapt=AdaptConfig(steps=2, gate=GateConfig(min_holdout_pairs=1,
                                                                                      max_p_value=1.0)))
    store = Store.open(cfg.db_path)
    seed_windows(store, cfg.frames_dir, OBJECTS[:4])
    ask(store, "Where is the cup?", False, corrected="on the shelf")
    judge = prefer("shelf")

    def reply(call):
        if "Memory A:" in call.prompt:
            return judge(call)
        return '{"description": "I saw the cup on the shelf."}'

    first = ScriptedBackend(reply, model_hash="h")
    opened = []

    def reopen():
        b = ScriptedBackend(reply, model_hash="h")
        opened.append(b)
        return b

    state_at_load = []
    real = frozen_model.FrozenQwen3VL.__init__

    def spy(self, *a, **kw):
        state_at_load.append((first.closed, len(opened)))
        real(self, *a, **kw)

    monkeypatch.setattr(frozen_model.FrozenQwen3VL, "__init__", spy)
    s = run_adapt_job(store, cfg, tiny_hf, first, BagOfWords(), reopen=reopen)
    assert state_at_load == [(True, 0)]  # the deployed model was closed before the checkpoint loaded
    assert s["backend_released"] is True
    assert len(opened) == 1 and opened[0].calls and opened[0].closed  # compliance ran on a reopened one
    assert s["metrics"]["compliance"] is not None


def test_a_reader_judges_in_place_of_the_writer_and_is_released_too(tiny_hf, tmp_path, monkeypatch):
    """`adapt` on a model that ships a reader: the reader answers the judge prompts (the writer is never asked),
    the summary names it, and it is closed with the writer before the checkpoint loads."""
    from edge_agent.adapt import frozen_model
    from edge_agent.adapt.job import run_adapt_job

    cfg = Config(home=tmp_path / "home", adapt=AdaptConfig(steps=2, gate=GateConfig(min_holdout_pairs=1,
                                                                                      max_p_value=1.0),
                                                           reward=RewardConfig(answer_match=False)))
    store = Store.open(cfg.db_path)
    seed_windows(store, cfg.frames_dir, OBJECTS[:4])
    ask(store, "Where is the cup?", False, corrected="on the shelf")

    def write(call):
        assert "Memory A:" not in call.prompt, "the writer was asked to judge"
        return '{"description": "I saw the cup on the shelf."}'

    writer = ScriptedBackend(write, model_hash="h", model_name="m")
    reader = ScriptedBackend(prefer("shelf"), model_hash="reader-hash", model_name="m-reader")
    closed_at_load = []
    real = frozen_model.FrozenQwen3VL.__init__

    def spy(self, *a, **kw):
        closed_at_load.append((writer.closed, reader.closed))
        real(self, *a, **kw)

    monkeypatch.setattr(frozen_model.FrozenQwen3VL, "__init__", spy)
    s = run_adapt_job(store, cfg, tiny_hf, writer, BagOfWords(),
                      reopen=lambda: ScriptedBackend(write, model_hash="h"), judge=reader)
    judged = [c for c in reader.calls if "Memory A:" in c.prompt]
    assert judged and len(judged) == len(reader.calls)
    assert s["judged_by"] == "m-reader" and s["reward"]["judge_consistent"] >= 1
    assert closed_at_load == [(True, True)]
    # the adapter steers the writer, so it carries the writer's identity, not the reader's
    assert s["status"] == "activated" and store.get_adapter(s["adapter_id"])["base_model_hash"] == "h"
