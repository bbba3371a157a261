"""LlamaCppBackend: Qwen3-VL GGUF + mmproj through llama-cpp-python (text via llama_cpp, images via mtmd), with
an LRU cache of encoded frames, KV prefix reuse, grammar-constrained decoding and the steering vector (cvec).

How a prompt runs (one llama.cpp sequence, id 0):
  1. The chat is rendered in the Qwen format and tokenized by `mtmd_tokenize_from_parts`: template pieces parse
     special tokens, message text does not (a memory containing "<|im_end|>" stays text), every ImagePart is one
     bitmap. Consecutive ImageParts are marked mergeable, so mtmd pairs them into one chunk (a Qwen3-VL temporal
     patch of 2 frames: half the tokens). mtmd wraps each image chunk in <|vision_start|> ... <|vision_end|>.
  2. The prompt becomes a list of "units": one per text token, one per image chunk (identified by its frames'
     keys). Units already in the KV cache from the previous call (same prefix) are kept; the rest is removed
     from the cache and decoded. Text goes through llama_decode; an image chunk's embeddings come from the LRU
     cache keyed by its frame keys, or from ONE vision-encoder pass (mtmd_encode_chunk), and are decoded with
     mtmd_helper_decode_image_chunk (which sets the M-RoPE 2-D positions). So each frame is encoded once however
     many sliding windows it appears in.
  3. Tokens are sampled by a llama.cpp sampler chain: grammar (from the JSON schema) -> top_k -> top_p -> temp ->
     dist(seed), or greedy; generation stops at an end-of-generation token (<|im_end|>, <|endoftext|>).

Positions: with M-RoPE an image chunk of n tokens advances the position by n_pos = max(h, w) merged patches, not
n; KV cells used (what n_ctx bounds) still grow by n. Both are tracked per unit.

Steering: `set_steering` calls llama_set_adapter_cvec with the vector at offset n_embd*(L-1) and il_start =
il_end = L: the vector is added to the output of block L, exactly like a torch forward hook on
`model.language_model.layers[L]`. The KV cache is cleared, because cached keys/values were computed with the
previous vector.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import random
import threading
import time
from collections import OrderedDict
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.errors import AdapterError, ModelError
from edge_agent.types import Generation, ImagePart, Message, Sampling, SteeringVector
from edge_agent.vlm.gguf_info import check_model_pair, inspect_gguf
from edge_agent.vlm.prompt import PromptPart, render_chat
from edge_agent.vlm.steering import check_compatible

log = logging.getLogger("edge_agent.llama_cpp")



# ---------------------------------------------------------------- native logs -> Python logging

# ggml log levels (ggml.h): 1 debug, 2 info, 3 warn, 4 error, 5 continuation of the previous message.
# llama.cpp and mtmd warn about things this project does not use (e.g. grounding needs >= 1024 image tokens),
# so their warnings go to INFO; errors stay errors. One callback for the process (llama.cpp's logger is global);
# it must stay referenced as long as the library may call it.
_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.INFO, 4: logging.ERROR}
_last_level = [logging.INFO]
_log_callback = None


def _install_log_callback(verbose: bool) -> None:
    global _log_callback
    import llama_cpp
    import llama_cpp.mtmd_cpp as mtmd

    if _log_callback is None:
        @llama_cpp.llama_log_callback
        def _cb(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
            lvl = _last_level[0] if level == 5 else _LEVELS.get(level, logging.INFO)
            _last_level[0] = lvl
            if not log.isEnabledFor(lvl):  # llama.cpp logs ~1600 debug lines per model load
                return
            msg = text.decode("utf-8", errors="replace").rstrip("\n")
            if msg:
                log.log(lvl, "%s", msg)

        _log_callback = _cb
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
        mtmd.mtmd_helper_log_set(_log_callback, ctypes.c_void_p(0))
    if verbose and not log.isEnabledFor(logging.DEBUG):
        log.setLevel(logging.DEBUG)


# ---------------------------------------------------------------- helpers

def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- JSON schema -> llama.cpp grammar

# llama-cpp-python's port of json-schema-to-grammar lets raw control characters into strings (`[^"\\]`), which
# JSON forbids; llama.cpp's own C++ converter excludes them. Tighten that one rule.
_LOOSE_CHAR = r'char ::= [^"\\] |'
_STRICT_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] |'


def schema_to_gbnf(schema: dict[str, Any]) -> str:
    """GBNF grammar (root rule "root") accepting exactly the JSON documents valid under `schema`.

    Bound string lengths (`maxLength`) in schemas used with a token cap, so the grammar closes the document
    before `max_tokens` runs out even when the model rambles.
    """
    import re

    from llama_cpp.llama_grammar import SchemaConverter

    class _Converter(SchemaConverter):
        # The port leaves a backslash unescaped in grammar literals, so an enum or const holding a quote (a note
        # that said "PIN 4066") becomes a literal that ends early and llama.cpp rejects the grammar; llama.cpp's
        # own converter escapes it.
        def _format_literal(self, literal: str) -> str:
            esc = {"\r": "\\r", "\n": "\\n", '"': '\\"', "\\": "\\\\"}
            return '"' + re.sub(r'[\r\n"\\]', lambda m: esc[m.group(0)], literal) + '"'

    conv = _Converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    conv.visit(conv.resolve_refs(schema, "stdin"), "")
    return conv.format_grammar().replace(_LOOSE_CHAR, _STRICT_CHAR)


# ---------------------------------------------------------------- the backend

@dataclass
class _Unit:
    """One entry of the evaluated prompt: a text token, or an image chunk (frames' keys) with its sizes."""

    ident: tuple  # ("t", token) or ("i", keys...)
    n_tokens: int  # KV cells
    n_pos: int  # positions advanced
    chunk: Any = None  # mtmd chunk pointer while the prompt's chunks are alive (image units only)


def _same_steering(a: SteeringVector | None, b: SteeringVector | None) -> bool:
    if a is None or b is None:
        return a is b
    return (a.layer == b.layer and a.base_model_hash == b.base_model_hash
            and np.array_equal(a.applied(), b.applied()))


def default_threads() -> int:
    """All cores this process may use but one (left for capture and SQLite), at least one.

    llama.cpp's workers spin-wait on each other: oversubscribed cores make decoding several times slower
    (measured on 2 shared cores: 28 ms vs 6.5 ms per token with 2 threads vs 1).
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


def cpu_has_amx() -> bool:
    """Whether the CPU reports Intel AMX (the Linux flag amx_int8; Sapphire Rapids and later Xeons)."""
    try:
        return "amx_int8" in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


_PARAMS_LOCK = threading.Lock()


@contextmanager
def _extra_buffers(enabled: bool):
    """Models loaded inside load their weights with llama.cpp's extra CPU buffer types (weight repacking, AMX) or
    without. llama-cpp-python's Llama() has no argument for `use_extra_bufts`: it takes the model parameters from
    llama_model_default_params() while it loads, so that function is swapped for the load."""
    import llama_cpp.llama_cpp as lc

    if enabled:
        yield
        return
    with _PARAMS_LOCK:
        default = lc.llama_model_default_params

        def without_extra_buffers():
            params = default()
            params.use_extra_bufts = False
            return params

        lc.llama_model_default_params = without_extra_buffers
        try:
            yield
        finally:
            lc.llama_model_default_params = default


def load_llama(model_path: str | Path, *, extra_buffers: bool | None = None, **kwargs):
    """llama_cpp.Llama(model_path, **kwargs), with llama.cpp's extra weight buffers on or off (`extra_buffers`; None:
    on unless the CPU has AMX, see LlamaCppBackend)."""
    import llama_cpp

    with _extra_buffers(not cpu_has_amx() if extra_buffers is None else extra_buffers):
        return llama_cpp.Llama(str(model_path), **kwargs)


class LlamaCppBackend:
    """Qwen3-VL on llama.cpp. Implements edge_agent.vlm.base.Backend; use as a context manager or call close()."""

    def __init__(self, model_path: str | Path, mmproj_path: str | Path | None, *, n_threads: int = 0,
                 n_ctx: int = 8192, n_gpu_layers: int = 0, image_cache_size: int = 64, seed: int = 0,
                 name: str | None = None, model_hash: str | None = None, verbose: bool = False,
                 extra_buffers: bool | None = None) -> None:
        """`mmproj_path=None` loads the text model only (the answerer): prompts with images then raise ModelError.

        `extra_buffers`: llama.cpp's repacked / AMX weight buffers; None = on unless the CPU has AMX. On a Xeon with
        AMX (the 2-core development machine, 2026-12-05) llama-cpp-python 0.3.36's AMX matrix multiply segfaulted
        on the first decode of every Q8_0 model tried (hidden 64, 96 and 1024), the shipped default included; with
        the extra buffers off the same files ran. The cost there: no repacked weights (slower quantized matmuls).

        `name` is the display name (default: the GGUF's general.name); `model_hash` the base-model hash declared
        by the catalog, used when the GGUF carries none.
        """
        self.model_path = Path(model_path)
        self.mmproj_path = Path(mmproj_path) if mmproj_path is not None else None
        # one-line ModelErrors for missing / corrupt / wrong-architecture / mismatched files, before llama.cpp
        if self.mmproj_path is not None:
            text, proj = check_model_pair(self.model_path, self.mmproj_path)
        else:
            text, proj = inspect_gguf(self.model_path, expect="qwen3vl"), None

        import llama_cpp
        import llama_cpp.mtmd_cpp as mtmd

        self._lc, self._mtmd = llama_cpp, mtmd
        self._lock = threading.RLock()
        self._stack = ExitStack()
        threads = n_threads or default_threads()
        _install_log_callback(verbose)
        try:
            try:
                self._llm = load_llama(self.model_path, extra_buffers=extra_buffers, n_ctx=n_ctx, n_threads=threads,
                                       n_threads_batch=threads, n_gpu_layers=n_gpu_layers, seed=seed,
                                       logits_all=False, verbose=verbose)
            except ValueError as e:
                raise ModelError(f"model {str(self.model_path)!r}: llama.cpp cannot load it ({e})") from None
            self._stack.callback(self._llm.close)
            self._ctx = self._llm._ctx.ctx  # raw llama_context*; the Llama object keeps it alive
            self._model = self._llm._model.model
            self._vocab = llama_cpp.llama_model_get_vocab(self._model)

            self._mctx = None
            if self.mmproj_path is not None:
                self._init_mtmd(proj, text, threads, n_gpu_layers, verbose)

            self.n_batch = llama_cpp.llama_n_batch(self._ctx)
            self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
            self._stack.callback(llama_cpp.llama_batch_free, self._batch)
            self._finish_init(text, name, model_hash, image_cache_size, seed)
        except BaseException:
            self._stack.close()
            raise

    def _init_mtmd(self, proj: dict, text: dict, threads: int, n_gpu_layers: int, verbose: bool) -> None:
        mtmd = self._mtmd
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = n_gpu_layers != 0
        params.n_threads = threads
        params.print_timings = verbose
        params.warmup = False
        mctx = mtmd.mtmd_init_from_file(str(self.mmproj_path).encode(), self._model, params)
        if not mctx:
            raise ModelError(f"{self.mmproj_path}: llama.cpp's mtmd could not load it for {self.model_path} "
                             f"(projection dim {proj['projection_dim']}, model hidden size {text['hidden_size']})")
        self._stack.callback(mtmd.mtmd_free, mctx)  # freed before the model (ExitStack is LIFO)
        self._mctx = mctx
        if not mtmd.mtmd_support_vision(mctx):
            raise ModelError(f"{self.mmproj_path}: the projector has no vision encoder")

    def _finish_init(self, text: dict, name: str | None, model_hash: str | None, image_cache_size: int,
                     seed: int) -> None:
        llama_cpp = self._lc
        self.n_ctx = llama_cpp.llama_n_ctx(self._ctx)
        self.hidden_size = int(llama_cpp.llama_model_n_embd(self._model))
        self.n_layers = int(llama_cpp.llama_model_n_layer(self._model))
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        self._n_embd_inp = int(llama_cpp.llama_model_n_embd_inp(self._model))  # n_embd * (1 + deepstack layers)
        self.model_name = name or str(text["name"] or self.model_path.parent.name)
        self._declared_hash = text["base_model_hash"] or model_hash or None
        self._file_hash: str | None = None
        self._stop_ids = {t for t in (self._single_token("<|im_end|>"), self._single_token("<|endoftext|>"))
                          if t is not None}

        self.image_cache_size = image_cache_size
        self._image_cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._kv: list[_Unit] = []  # what sequence 0 of the KV cache holds, in order
        self._rng = random.Random(seed)
        self.steering: SteeringVector | None = None
        self.stats = {"image_encodes": 0, "image_cache_hits": 0, "prompt_tokens_evaluated": 0,
                      "prompt_tokens_reused": 0}
        self._closed = False

    # ------------------------------------------------------------ identity

    @property
    def model_hash(self) -> str:
        """Base-model identity adapters are checked against: the GGUF's edge_agent.base_model_hash KV, else the
        hash declared by the caller (catalog), else the sha256 of the GGUF file (computed once, lazily)."""
        if self._declared_hash:
            return self._declared_hash
        if self._file_hash is None:
            self._file_hash = sha256_of(self.model_path)
        return self._file_hash

    # ------------------------------------------------------------ public API

    def generate(self, messages: list[Message], sampling: Sampling,
                 json_schema: dict[str, Any] | None = None) -> Generation:
        start = time.perf_counter()
        with self._lock, ExitStack() as stack:
            self._check_open()
            sampler = self._make_sampler(sampling, json_schema)
            stack.callback(self._lc.llama_sampler_free, sampler)
            units = self._prompt_units(messages, True, stack)
            self._evaluate(units, want_logits=True)
            n_prompt = sum(u.n_tokens for u in self._kv)
            out: list[int] = []
            try:
                for _ in range(sampling.max_tokens):
                    tok = int(self._lc.llama_sampler_sample(sampler, self._ctx, -1))  # also advances the grammar
                    if tok in self._stop_ids or self._lc.llama_vocab_is_eog(self._vocab, tok):
                        break
                    out.append(tok)
                    if len(out) == sampling.max_tokens:
                        break  # the last token is never needed in the cache
                    if sum(u.n_tokens for u in self._kv) >= self.n_ctx:
                        raise ModelError(f"generation ran out of context ({self.n_ctx} tokens, model.n_ctx)")
                    self._decode_text([_Unit(("t", tok), 1, 1)], want_logits=True)
            except BaseException:
                self._clear_kv()
                raise
            text = self._llm.detokenize(out).decode("utf-8", errors="replace")
        return Generation(text=text, n_prompt_tokens=n_prompt, n_completion_tokens=len(out),
                          seconds=time.perf_counter() - start)

    def logits(self, messages: list[Message], *, add_generation_prompt: bool = True) -> np.ndarray:
        """Next-token logits (n_vocab,) after the rendered chat, with the current steering vector (tests, eval)."""
        with self._lock, ExitStack() as stack:
            self._check_open()
            units = self._prompt_units(messages, add_generation_prompt, stack)
            self._evaluate(units, want_logits=True)
            ptr = self._lc.llama_get_logits_ith(self._ctx, -1)
            return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    scores_continuations = True  # qa.choice = "score" can rank answers with continuation_logprobs

    def continuation_logprobs(self, messages: list[Message], text: str) -> list[tuple[str, float]]:
        """(piece, log-probability) of each token of `text` as the start of the assistant's reply to `messages`,
        with the current steering vector. The prompt's KV cache is reused across calls (scoring several answers
        to one prompt decodes the prompt once)."""
        with self._lock, ExitStack() as stack:
            self._check_open()
            units = self._prompt_units(messages, True, stack)
            toks = [int(t) for t in self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)]
            if not toks:
                return []
            self._evaluate(units, want_logits=True)
            out: list[tuple[str, float]] = []
            for i, tok in enumerate(toks):
                if i:
                    self._decode_text([_Unit(("t", toks[i - 1]), 1, 1)], want_logits=True)
                ptr = self._lc.llama_get_logits_ith(self._ctx, -1)
                logits = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).astype(np.float64)
                top = logits.max()
                logprob = float(logits[tok] - top - np.log(np.exp(logits - top).sum()))
                out.append((self._llm.detokenize([tok]).decode("utf-8", errors="replace"), logprob))
            return out

    def prompt_tokens(self, messages: list[Message], *, add_generation_prompt: bool = True) -> list[int]:
        """Token ids of the rendered chat; each image token appears as -1."""
        with self._lock, ExitStack() as stack:
            self._check_open()
            units = self._prompt_units(messages, add_generation_prompt, stack)
        out: list[int] = []
        for u in units:
            out += [u.ident[1]] if u.ident[0] == "t" else [-1] * u.n_tokens
        return out

    def count_tokens(self, text: str) -> int:
        self._check_open()
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)) if text else 0

    def set_steering(self, vector: SteeringVector | None) -> None:
        """Apply, swap or clear (None) the steering vector without reloading; clears the KV cache."""
        lc = self._lc
        with self._lock:
            self._check_open()
            if _same_steering(self.steering, vector):
                return  # re-applying would only throw away the reusable KV prefix
            if vector is None:
                rc = lc.llama_set_adapter_cvec(self._ctx, None, 0, self.hidden_size, -1, -1)
            else:
                check_compatible(vector, hidden_size=self.hidden_size, n_layers=self.n_layers,
                                 base_model_hash=self.model_hash)
                n, layer = self.hidden_size, vector.layer
                # llama.cpp's buffer starts at layer 1: block L's vector lives at [n*(L-1), n*L)
                data = np.zeros(n * layer, dtype=np.float32)
                data[n * (layer - 1):] = vector.applied()
                rc = lc.llama_set_adapter_cvec(self._ctx, data.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                                               data.size, n, layer, layer)
            if rc != 0:
                raise AdapterError(f"llama.cpp refused the control vector (llama_set_adapter_cvec returned {rc})")
            self._clear_kv()
            self.steering = vector

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._image_cache.clear()
                self._kv = []
                self._stack.close()

    def __enter__(self) -> "LlamaCppBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ prompt -> units

    def _prompt_units(self, messages: list[Message], add_generation_prompt: bool, stack: ExitStack) -> list[_Unit]:
        """Tokenize the chat with mtmd. Chunks and bitmaps live until `stack` closes (image units point into them)."""
        mtmd = self._mtmd
        parts = render_chat(messages, add_generation_prompt)
        if self._mctx is None:
            return self._text_units(parts)
        keep: list[Any] = []  # ctypes objects that must outlive mtmd_tokenize_from_parts
        part_ptrs = []
        images: list[ImagePart] = []
        for p in parts:
            if p.image is None:
                raw = p.text.encode("utf-8")
                it = mtmd.mtmd_input_text()
                it.text, it.text_len, it.add_special, it.parse_special = raw, len(raw), False, p.special
                part = mtmd.mtmd_input_part()
                part.text, part.bitmap = ctypes.pointer(it), None
                keep += [raw, it]
            else:
                bm = self._bitmap(p.image, len(images), p.mergeable)
                stack.callback(mtmd.mtmd_bitmap_free, bm)
                images.append(p.image)
                part = mtmd.mtmd_input_part()
                part.text, part.bitmap = None, bm
            keep.append(part)
            part_ptrs.append(ctypes.pointer(part))
        chunks = mtmd.mtmd_input_chunks_init()
        stack.callback(mtmd.mtmd_input_chunks_free, chunks)
        arr = (ctypes.POINTER(mtmd.mtmd_input_part) * len(part_ptrs))(*part_ptrs)
        rc = mtmd.mtmd_tokenize_from_parts(self._mctx, chunks, arr, len(part_ptrs), False)
        if rc != 0:
            raise ModelError(f"mtmd could not tokenize the prompt (mtmd_tokenize_from_parts returned {rc})")

        # Which frames each image chunk holds: bitmap ids are their indices; a chunk's id is its first frame's.
        n = mtmd.mtmd_input_chunks_size(chunks)
        chunk_list = [mtmd.mtmd_input_chunks_get(chunks, i) for i in range(n)]
        firsts = [int(mtmd.mtmd_input_chunk_get_id(c).decode()) for c in chunk_list
                  if mtmd.mtmd_input_chunk_get_type(c) == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE]
        ends = firsts[1:] + [len(images)] if firsts else []
        bounds = dict(zip(firsts, ends, strict=True))  # first frame -> one past the chunk's last frame
        units: list[_Unit] = []
        for c in chunk_list:
            kind = mtmd.mtmd_input_chunk_get_type(c)
            if kind == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                count = ctypes.c_size_t()
                toks = mtmd.mtmd_input_chunk_get_tokens_text(c, ctypes.byref(count))
                units += [_Unit(("t", int(toks[j])), 1, 1) for j in range(count.value)]
            elif kind == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                first = int(mtmd.mtmd_input_chunk_get_id(c).decode())
                keys = tuple(images[j].key for j in range(first, bounds[first]))
                units.append(_Unit(("i",) + keys, int(mtmd.mtmd_input_chunk_get_n_tokens(c)),
                                   int(mtmd.mtmd_input_chunk_get_n_pos(c)), c))
            else:
                raise ModelError(f"unexpected mtmd chunk type {kind}")
        return units

    def _text_units(self, parts: list[PromptPart]) -> list[_Unit]:
        """Text-only backend: the same tokens mtmd would give (no BOS; special tokens only in template parts)."""
        units: list[_Unit] = []
        for p in parts:
            if p.image is not None:
                raise ModelError(f"model {self.model_name!r} was loaded without its mmproj: cannot take images "
                                 f"(frame {p.image.key!r})")
            toks = self._llm.tokenize(p.text.encode("utf-8"), add_bos=False, special=p.special)
            units += [_Unit(("t", int(t)), 1, 1) for t in toks]
        return units

    def _bitmap(self, img: ImagePart, index: int, mergeable: bool):
        px = img.pixels
        if not (isinstance(px, np.ndarray) and px.ndim == 3 and px.shape[2] == 3 and px.dtype == np.uint8):
            raise ValueError(f"image {img.key!r}: pixels must be an H x W x 3 uint8 RGB array, got "
                             f"{getattr(px, 'dtype', type(px))} {getattr(px, 'shape', '')}")
        px = np.ascontiguousarray(px)
        h, w = px.shape[:2]
        bm = self._mtmd.mtmd_bitmap_init(w, h, px.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)))  # copies
        if not bm:
            raise ModelError(f"image {img.key!r}: mtmd could not create a bitmap of {w}x{h}")
        self._mtmd.mtmd_bitmap_set_id(bm, str(index).encode())
        if mergeable:
            self._mtmd.mtmd_bitmap_set_mergeable(bm, True)
        return bm

    # ------------------------------------------------------------ evaluation with KV prefix reuse

    def _evaluate(self, units: list[_Unit], want_logits: bool) -> None:
        if not units or units[-1].ident[0] != "t":
            raise ValueError("a prompt must end with text (the chat template always does)")
        total = sum(u.n_tokens for u in units)
        if total > self.n_ctx:
            raise ModelError(f"prompt of {total} tokens exceeds the context of {self.n_ctx} (model.n_ctx)")
        keep = 0
        for old, new in zip(self._kv, units, strict=False):  # compare the common length
            if old.ident != new.ident:
                break
            keep += 1
        keep = min(keep, len(units) - 1)  # re-decode at least the last token: its logits are needed
        if keep < len(self._kv):
            pos = sum(u.n_pos for u in self._kv[:keep])
            mem = self._lc.llama_get_memory(self._ctx)
            if not self._lc.llama_memory_seq_rm(mem, 0, pos, -1):
                self._clear_kv()
                keep = 0
            else:
                self._kv = self._kv[:keep]
        self.stats["prompt_tokens_reused"] += sum(u.n_tokens for u in units[:keep])
        rest = units[keep:]
        try:
            i = 0
            while i < len(rest):
                if rest[i].ident[0] == "i":
                    self._decode_image(rest[i])
                    i += 1
                else:
                    j = i
                    while j < len(rest) and rest[j].ident[0] == "t":
                        j += 1
                    self._decode_text(rest[i:j], want_logits=want_logits and j == len(rest))
                    i = j
        except BaseException:
            self._clear_kv()  # the cache state is unknown after a failed decode
            raise
        self.stats["prompt_tokens_evaluated"] += sum(u.n_tokens for u in rest)

    def _decode_text(self, units: list[_Unit], want_logits: bool) -> None:
        b = self._batch
        pos = sum(u.n_pos for u in self._kv)
        for s in range(0, len(units), self.n_batch):
            part = units[s:s + self.n_batch]
            for k, u in enumerate(part):
                b.token[k] = u.ident[1]
                b.pos[k] = pos + k
                b.n_seq_id[k] = 1
                b.seq_id[k][0] = 0
                b.logits[k] = 0
            last_batch = s + self.n_batch >= len(units)
            b.logits[len(part) - 1] = 1 if (want_logits and last_batch) else 0
            b.n_tokens = len(part)
            rc = self._lc.llama_decode(self._ctx, b)
            if rc != 0:
                raise ModelError(f"llama_decode failed with code {rc} at position {pos}")
            pos += len(part)
            self._kv.extend(_Unit(u.ident, 1, 1) for u in part)

    def _decode_image(self, unit: _Unit) -> None:
        mtmd, lc = self._mtmd, self._lc
        embd = self._embedding(unit)
        pos = sum(u.n_pos for u in self._kv)
        new_pos = lc.llama_pos(0)
        rc = mtmd.mtmd_helper_decode_image_chunk(self._mctx, self._ctx, unit.chunk,
                                                 embd.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                                                 pos, 0, self.n_batch, ctypes.byref(new_pos),
                                                 mtmd.mtmd_helper_post_decode_callback(), None)
        if rc != 0:
            raise ModelError(f"decoding image chunk {unit.ident[1:]} failed with code {rc}")
        if new_pos.value - pos != unit.n_pos:
            raise ModelError(f"image chunk advanced {new_pos.value - pos} positions, expected {unit.n_pos}")
        self._kv.append(_Unit(unit.ident, unit.n_tokens, unit.n_pos))

    def _embedding(self, unit: _Unit) -> np.ndarray:
        """Encoded embeddings of an image chunk: from the LRU cache, or one vision-encoder pass."""
        key = unit.ident[1:] + (unit.n_tokens,)
        cached = self._image_cache.get(key)
        if cached is not None:
            self._image_cache.move_to_end(key)
            self.stats["image_cache_hits"] += 1
            return cached
        rc = self._mtmd.mtmd_encode_chunk(self._mctx, unit.chunk)
        if rc != 0:
            raise ModelError(f"vision encoder failed on frames {unit.ident[1:]} (code {rc})")
        self.stats["image_encodes"] += 1
        n = unit.n_tokens * self._n_embd_inp
        ptr = self._mtmd.mtmd_get_output_embd(self._mctx)
        embd = np.ctypeslib.as_array(ptr, shape=(n,)).copy()  # the mtmd buffer is overwritten by the next encode
        if self.image_cache_size > 0:
            self._image_cache[key] = embd
            while len(self._image_cache) > self.image_cache_size:
                self._image_cache.popitem(last=False)
        return embd

    # ------------------------------------------------------------ helpers

    def _make_sampler(self, sampling: Sampling, json_schema: dict[str, Any] | None):
        lc = self._lc
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        try:
            if json_schema is not None:
                gbnf = schema_to_gbnf(json_schema)
                grammar = lc.llama_sampler_init_grammar(self._vocab, gbnf.encode("utf-8"), b"root")
                if not grammar:
                    raise ValueError(f"llama.cpp rejected the grammar built from JSON schema {json_schema!r}")
                lc.llama_sampler_chain_add(chain, grammar)
            if sampling.temperature <= 0:
                lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
            else:
                if sampling.top_k > 0:
                    lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_k(sampling.top_k))
                if sampling.top_p < 1.0:
                    lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(sampling.top_p, 1))
                lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(sampling.temperature))
                seed = sampling.seed if sampling.seed is not None else self._rng.randrange(2**31)
                lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(seed))
        except BaseException:
            lc.llama_sampler_free(chain)
            raise
        return chain

    def _single_token(self, text: str) -> int | None:
        toks = self._llm.tokenize(text.encode(), add_bos=False, special=True)
        return toks[0] if len(toks) == 1 else None

    def _clear_kv(self) -> None:
        self._lc.llama_memory_clear(self._lc.llama_get_memory(self._ctx), True)
        self._kv = []

    def _check_open(self) -> None:
        if self._closed:
            raise ModelError(f"model {self.model_name!r}: backend already closed")

