"""The serving engine: continuous batching of generation requests on one model.

One thread owns the model and every MLX call. Each turn of its loop

1. takes newly submitted sequences and drops cancelled ones (a client that went away),
2. runs **one decode step** for every sequence of the batch at once: each feeds its last token,
   the model runs on ``(B, 1)`` ids over the batched caches (per-row RoPE offsets and masks),
   each row's logits go through that request's own logits processors and sampler, and finished
   rows leave the batch,
3. prefills newcomers for up to ``prefill_step_size`` prompt tokens in all (starting from the
   longest cached prefix found in the :class:`~mlx_zoo.serve.prefix_cache.PrefixCache`): **one
   chunk** of a long prompt, into its own single-sequence caches -- so a long prompt delays the
   running batch by one chunk at a time, never by the whole prompt -- or **several short prompts
   in one batched forward pass** (right-padded),
4. when a prompt is in, samples its **first token from the prefill's last logits**, hands it out
   at once and merges the sequence's caches into the batch
   (:meth:`BatchCache.add_row <mlx_zoo.batch_cache.BatchCache.add_row>` /
   :meth:`~mlx_zoo.batch_cache.BatchCache.extend`).

Steps are **pipelined** when no row needs host-side state to build its next logits (penalties,
structured output): step ``t + 1`` is queued (``mx.async_eval``, its input the lazy tokens of
step ``t``) before the tokens of step ``t`` are read, detokenised and handed out, so that work
overlaps the model's. A row that finished at step ``t`` is dropped from step ``t + 1``'s results.

Models whose caches cannot be batched (a plugin's own cache class) or whose forward pass does not
accept per-row offsets (found by a probe at start-up: the batched path must reproduce the
single-sequence logits) are served by the same loop in **per-sequence mode**: every sequence keeps
its own caches and the decode step runs the model once per sequence.

Results go back through each sequence's ``sink`` (a callable taking an event dict), called on the
engine thread.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx

from ..batch_cache import BatchCache, MaskMemo, share_memo
from ..blas import set_blas_threads
from ..cache import ChunkedKVCache, KVCache, QuantizedKVCache, RotatingKVCache, make_prompt_cache
from ..generate import (
    _StopStrings,
    model_context_length,
    model_head_dims,
    model_vocab_size,
    quantize_kv_caches,
    resolve_kv_group_size,
)
from ..layers import checked_token_ids
from ..sample import apply_min_p, apply_repetition_penalty, apply_top_k, apply_top_p
from .prefix_cache import PrefixCache, copy_cache

log = logging.getLogger("mlx_zoo.serve")

Event = dict[str, Any]

BATCHABLE = (KVCache, QuantizedKVCache, RotatingKVCache, ChunkedKVCache)

PROBE_TOLERANCE = {mx.float32: 1e-2, mx.bfloat16: 1e-1, mx.float16: 1e-1}
"""How far (max |difference| / max |logit|) batched logits may be from single-sequence ones in
:meth:`Engine._probe_batching`, by the logits' dtype. The probe catches forward passes that
ignore per-row offsets or masks, which change logits by their own order of magnitude; it must
not catch rounding: a batch of rows runs other matmul kernels, summing in another order, and in
bfloat16 (8 significant bits) that moves a random Qwen2-0.5B's logits by ~0.05 of their scale on
a CUDA GPU (measured on an H200, 2026-11-28), where float32 on the CPU stays under 1e-4."""
"""Single-sequence cache classes whose contents a :class:`~mlx_zoo.batch_cache.BatchCache` takes
over (exact classes: a plugin's own cache class makes the server fall back to per-sequence
decoding)."""


def batchable(cache: list) -> bool:
    """Whether every layer cache of a model's ``make_prompt_cache`` has a batched counterpart."""
    return all(type(c) in BATCHABLE for c in cache)


WARMUP_STEPS = 3
"""Decode steps the start-up warm-up runs at each batch size it builds up to (the first step
after a join feeds host ints, the next ones the previous step's tokens, through other ops)."""

WARMUP_TURNS = 1000
"""Loop turns the warm-up allows each of its stages (a stage that needs more is a bug: the
warm-up stops and says so)."""


def warmup_groups(max_concurrency: int) -> list[int]:
    """Sizes of the groups of dummy requests the warm-up submits one after another, so that the
    batch doubles: ``[1, 1, 2, 4, 8]`` for 16 (sizes 1, 2, 4, 8, 16), ``[1, 1, 2, 2]`` for 6
    (the last group fills up to ``max_concurrency``)."""
    groups: list[int] = []
    total = 0
    while total < max_concurrency:
        n = max(1, min(total, max_concurrency - total))
        groups.append(n)
        total += n
    return groups


class LoopSink:
    """A sink handing events to an ``asyncio.Queue`` of the event loop ``loop``: the engine
    delivers all events of one step for one loop with a single ``call_soon_threadsafe``."""

    def __init__(self, loop: Any, queue: Any):
        self.loop, self.queue = loop, queue

    def __call__(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)


def _deliver(items: list[tuple[Any, Event]]) -> None:
    for target, event in items:
        target.put_nowait(event)


@dataclass
class SamplingParams:
    """What one request asks of generation (validated by the protocol layer)."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logit_bias: dict[int, float] = field(default_factory=dict)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float | None = None
    repetition_context_size: int = 20
    logprobs: bool = False
    top_logprobs: int = 0
    prompt_logprobs: bool = False  # echo + logprobs on completions: score the prompt
    processor_factory: Callable[[], Any] | None = None  # structured output (a fresh one per seq)


class Seq:
    """One generated choice: its prompt, its sampling state, where its events go."""

    def __init__(self, prompt: Sequence[int], params: SamplingParams, sink: Callable[[Event], None],
                 index: int = 0):
        self.prompt = list(prompt)
        self.params = params
        self.sink = sink
        self.index = index
        self.cancelled = False
        self.finished = False
        self.generated: list[int] = []
        self.caches: list | None = None
        self.prefilled = 0  # prompt tokens in self.caches
        self.cached_tokens = 0  # of them, taken from the prefix cache
        self.next_input: int | None = None
        self.counts: dict[int, int] = {}
        self.processor = params.processor_factory() if params.processor_factory else None
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        self.key = mx.random.key((seed + index) % 2**64) if params.temperature > 0 else None
        self.prompt_logprobs: list[Any] = [None]
        self.detokenizer = None
        self.stops = _StopStrings(params.stop) if params.stop else None
        self.submitted = time.perf_counter()
        self.first_token_at: float | None = None

    @property
    def host_state(self) -> bool:
        """Whether the logits of its next step depend on state kept on the host (penalties over
        the generated tokens, a structured-output matcher): its steps cannot be pipelined."""
        p = self.params
        return (bool(p.presence_penalty or p.frequency_penalty)
                or p.repetition_penalty not in (None, 1.0) or self.processor is not None)

    def emit(self, event: Event) -> None:
        event["index"] = self.index
        try:
            self.sink(event)
        except Exception:  # a sink whose consumer is gone must not stop the engine
            log.debug("sink of sequence %d failed", self.index, exc_info=True)

    # -- sampling ------------------------------------------------------------------------------

    def process(self, logits: mx.array) -> mx.array:
        """This request's host-state logits processors on its ``(1, vocab)`` row (``logit_bias``
        is added for the whole batch at once)."""
        p = self.params
        if p.repetition_penalty not in (None, 1.0):
            context = (self.prompt + self.generated)[-p.repetition_context_size:]
            logits = apply_repetition_penalty(logits, mx.array(context, dtype=mx.uint32),
                                              p.repetition_penalty)
        if (p.presence_penalty or p.frequency_penalty) and self.counts:
            ids = mx.array(list(self.counts), dtype=mx.uint32)
            counts = mx.array(list(self.counts.values()), dtype=logits.dtype)
            penalty = p.presence_penalty + p.frequency_penalty * counts
            logits = mx.array(logits)
            logits[:, ids] = logits[:, ids] - penalty
        if self.processor is not None:
            logits = self.processor.process(logits)
        return logits

    def sample(self, logprobs: mx.array) -> mx.array:
        p = self.params
        if p.temperature == 0 or self.key is None:
            return mx.argmax(logprobs, axis=-1)
        scaled = logprobs * (1.0 / p.temperature)
        scaled = scaled - mx.logsumexp(scaled, axis=-1, keepdims=True)
        if p.top_k > 0:
            scaled = apply_top_k(scaled, p.top_k)
        if p.top_p < 1.0:
            scaled = apply_top_p(scaled, p.top_p)
        if p.min_p > 0.0:
            scaled = apply_min_p(scaled, p.min_p)
        self.key, sub = mx.random.split(self.key)
        return mx.random.categorical(scaled, axis=-1, key=sub)


class Engine:
    """Loads the model on its own thread and serves :class:`Seq` s submitted to it."""

    def __init__(self, model_ref: str, *, max_concurrency: int = 16,
                 prefill_step_size: int = 512, kv_bits: int | None = None,
                 kv_group_size: int | None = None, quantized_kv_start: int = 0,
                 prefix_cache_bytes: int = 1 << 30, batching: bool = True,
                 loader: Callable[[], tuple[Any, Any]] | None = None,
                 blas_threads: int = 0, warmup: bool = False):
        self.model_ref = model_ref
        self.max_concurrency = max_concurrency
        self.prefill_step_size = prefill_step_size
        self.kv_bits, self.kv_group_size = kv_bits, kv_group_size
        self.quantized_kv_start = quantized_kv_start
        self.prefix_cache = PrefixCache(prefix_cache_bytes)
        self.want_batching = batching
        self.batching = False
        self.loader = loader
        self.blas_threads = blas_threads
        self.warmup = warmup
        self.warmup_s: float | None = None  # how long the start-up warm-up took
        self.warmup_sizes: list[int] = []  # the batch sizes its decode steps ran at
        self.model = self.tokenizer = None
        self.vocab_size: int | None = None
        self.context_length: int | None = None
        self.load_error: BaseException | None = None
        self.ready = threading.Event()
        self._incoming: queue.Queue = queue.Queue()
        self._waiting: deque[Seq] = deque()
        self._prefilling: Seq | None = None
        self._batch: list[Seq] = []
        self._caches: list[BatchCache] | None = None
        self._memo = MaskMemo()  # the masks/offsets the batch's layer caches share
        self._pending: _Step | None = None  # the step queued but not yet handed out
        self._outbox: list[tuple[Seq, Event]] = []
        self._bias: tuple[tuple[Seq, ...], mx.array | None] = ((), None)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="mlx-zoo-engine", daemon=True)
        self._token_text: dict[int, str] = {}
        self.steps = 0
        self.generated_tokens = 0
        self.recent_ttft: deque[float] = deque(maxlen=256)  # submit -> first token, seconds

    # -- public, any thread --------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._incoming.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def submit(self, sequences: list[Seq]) -> None:
        for s in sequences:
            self._incoming.put(s)

    def cancel(self, sequences: list[Seq]) -> None:
        for s in sequences:
            s.cancelled = True
        self._incoming.put(None)  # wake the loop

    def stats(self) -> dict[str, Any]:
        return {"running": len(self._batch), "prefilling": int(self._prefilling is not None),
                "waiting": len(self._waiting) + self._incoming.qsize(),
                "max_concurrency": self.max_concurrency,
                "batching": "batched" if self.batching else "per-sequence",
                "prefix_cache": {"entries": len(self.prefix_cache),
                                 "bytes": self.prefix_cache.nbytes,
                                 "hits": self.prefix_cache.hits,
                                 "misses": self.prefix_cache.misses},
                "steps": self.steps, "generated_tokens": self.generated_tokens,
                "recent_ttft_ms": [round(t * 1000, 2) for t in list(self.recent_ttft)]}

    def token_text(self, token: int) -> str:
        text = self._token_text.get(token)
        if text is None:
            text = self._token_text[token] = self.tokenizer.decode([token])
        return text

    # -- the engine thread ---------------------------------------------------------------------

    def _load(self) -> None:
        if self.blas_threads and not os.environ.get("OPENBLAS_NUM_THREADS"):  # theirs stands
            set_blas_threads(self.blas_threads)
        if self.loader is not None:
            self.model, self.tokenizer = self.loader()
        else:
            import mlx_zoo

            self.model, _ = mlx_zoo.load(self.model_ref, dtype="auto", dequantize="auto",
                                         fuse=True)
            self.tokenizer = mlx_zoo.load_tokenizer(self.model_ref)
        self.vocab_size = model_vocab_size(self.model)
        self.context_length = model_context_length(self.model)
        if self.kv_bits is not None:
            dims = model_head_dims(self.model)
            if dims is not None:
                self.kv_group_size = resolve_kv_group_size(self.kv_group_size, dims)
        self.batching = self.want_batching and self._probe_batching()
        log.info("model %s loaded; decoding %s", self.model_ref,
                 "batched" if self.batching else "per sequence")

    def _probe_batching(self) -> bool:
        """Whether the batched path reproduces single-sequence logits on this model (caches it
        can batch, a forward pass that takes per-row offsets)."""
        if not batchable(make_prompt_cache(self.model)):
            log.warning("a layer cache has no batched counterpart: per-sequence decoding")
            return False
        vocab = self.vocab_size or 2
        prompts = [[(7 * i + 3) % vocab for i in range(n)] for n in (3, 6)]
        try:
            solo = []
            for p in prompts:
                cache = make_prompt_cache(self.model)
                with checked_token_ids():
                    solo.append(self.model(mx.array(p)[None], cache=cache)[0, -1])
            caches, memo = None, MaskMemo()
            for p in prompts:
                cache = make_prompt_cache(self.model)
                with checked_token_ids():
                    self.model(mx.array(p[:-1])[None], cache=cache)
                if caches is None:
                    caches = [BatchCache.like(c, memo=memo) for c in cache]
                for b, c in zip(caches, cache, strict=True):
                    b.add_row(c)
            with checked_token_ids():
                batched = self.model(mx.array([[p[-1]] for p in prompts]), cache=caches)[:, -1]
            expected = mx.stack(solo)
            scale = mx.abs(expected).max().item() + 1e-6
            error = mx.abs(batched.astype(mx.float32) - expected.astype(mx.float32)).max().item()
        except Exception as e:  # a forward pass that needs an int offset, an unknown layout
            log.warning("batched decoding unavailable (%s: %s): per-sequence decoding",
                        type(e).__name__, e)
            return False
        if not error <= PROBE_TOLERANCE.get(expected.dtype, 1e-2) * scale:
            log.warning("batched logits differ from single-sequence ones (%.3g): per-sequence "
                        "decoding", error)
            return False
        return True

    def _run(self) -> None:
        try:
            self._load()
        except BaseException as e:  # reported by the server at start-up
            self.load_error = e
            self.ready.set()
            return
        if self.warmup:
            self._warm_up()
        self.ready.set()
        while not self._stopping:
            idle = not (self._batch or self._prefilling or self._waiting or self._pending)
            self._take_incoming(block=idle)
            if self._stopping:
                break
            self._turn()
        for seq in [*self._batch, *self._waiting] + ([self._prefilling] if self._prefilling
                                                     else []):
            seq.emit({"type": "error", "message": "the server is shutting down", "status": 503})
        self._batch, self._caches, self._pending, self._bias = [], None, None, ((), None)
        self._memo.clear()  # MLX arrays of this thread must not outlive it (see MaskMemo.clear)

    def _turn(self) -> None:
        """One turn of the loop, after taking new requests: drop the cancelled, run one decode
        step, prefill newcomers, hand the events out."""
        self._drop_cancelled()
        if self._batch or self._pending:
            try:
                self._decode_step()
            except Exception as e:
                log.exception("decode step failed")
                failed, self._batch, self._caches = self._batch, [], None
                self._pending = None
                self._fail(failed, e)
        self._prefill()  # after the step is queued: newcomers arriving meanwhile join it
        self._flush()

    # -- warm-up -------------------------------------------------------------------------------

    def _warm_up(self) -> None:
        """Before the engine says it is ready: run dummy requests through the loop itself, the
        batch growing 1, 2, 4, ... up to ``max_concurrency`` (:func:`warmup_groups`), then
        shrinking, and discard everything they leave. MLX's CUDA backend compiles a kernel
        (NVRTC, seconds) the first time an operation meets a new dtype or layout -- a batch of
        2 rows after 1, padding, a sampler -- not per batch size or cache length; without this,
        the first requests that take a new path pay for it (first tokens 6-14 s late on an
        H200 with an empty ``MLX_PTX_CACHE_DIR``; docs/serve.md).

        Nothing of it stays: the prefix cache it fills is a scratch one (the server's is put back
        untouched), the batch, its caches, the masks memo and the step counters are as before,
        and the dummy requests carry their own seeds (the ``random`` module is not drawn from).
        A failure is logged, not raised: requests are served all the same."""
        log.info("warm-up: dummy requests, the batch growing to %d (on a GPU, kernels not in "
                 "MLX's disk cache, MLX_PTX_CACHE_DIR, are compiled now: up to a minute)",
                 self.max_concurrency)
        start = time.perf_counter()
        kept = (self.prefix_cache, self.steps, self.generated_tokens, list(self.recent_ttft))
        self.prefix_cache = PrefixCache(kept[0].max_bytes, kept[0].max_entries)
        errors: list[str] = []
        try:
            self._warm_up_run(errors)
        except Exception:
            log.warning("warm-up failed (requests are served all the same)", exc_info=True)
        finally:
            self._waiting.clear()  # only dummies: requests wait in self._incoming meanwhile
            self._prefilling, self._batch, self._caches, self._pending = None, [], None, None
            self._outbox, self._bias = [], ((), None)
            self._memo.clear()
            self.prefix_cache, self.steps, self.generated_tokens, ttft = kept
            self.recent_ttft.clear()
            self.recent_ttft.extend(ttft)
        self.warmup_s = time.perf_counter() - start
        if errors:
            log.warning("warm-up: %d dummy requests failed, the first: %s", len(errors),
                        errors[0])
        log.info("warm-up: decode steps at batch sizes %s in %.2f s",
                 ", ".join(map(str, sorted(set(self.warmup_sizes)))) or "none", self.warmup_s)

    def _warm_up_run(self, errors: list[str]) -> None:
        """The warm-up's requests: groups of :func:`warmup_groups` join one after another (a
        lone prompt prefilled alone and added as a row, then groups of short prompts of
        different lengths prefilled together and extended into the batch, some finding a
        prefix in the prefix cache), each size running :data:`WARMUP_STEPS` decode steps
        (pipelined); then the rows finish a few steps apart (the batch is filtered, finished
        rows extracted for the prefix cache); last, a request with penalties (steps that are not
        pipelined) beside a scoring one (echo + logprobs). Rows greedy, one in four sampled
        (temperature, top-k/p, min-p), one in four with logprobs; the end of sequence banned
        through ``logit_bias`` so that none stops early."""
        vocab = self.vocab_size or 2
        eos = set(self.tokenizer.eos_token_ids)
        # 64 ids spread over the vocabulary by an arbitrary stride (which ids does not matter:
        # the kernels met depend on shapes and dtypes), never an end of sequence
        ids = [t for t in ((17 + 31 * j) % vocab for j in range(64)) if t not in eos] or [0]
        ban = {t: -1e9 for t in eos if 0 <= t < vocab}
        kinds = {1: {"temperature": 0.7, "top_k": 20, "top_p": 0.9, "min_p": 0.05},
                 2: {"logprobs": True, "top_logprobs": 2}}

        def sink(event: Event) -> None:
            if event["type"] == "error":
                errors.append(event["message"])

        def dummy(i: int, max_tokens: int, **params: Any) -> Seq:
            # prompts of 5, 8, 11, 14 tokens; those of even rows share their starts (prefix-cache
            # hits), odd rows start on their own token (misses)
            start = 0 if i % 2 == 0 else i
            prompt = [ids[(start + j) % len(ids)] for j in range(4 + 3 * (i % 4))]
            prompt.append(ids[7 * i % len(ids)])  # a last token of each row's own
            params = {**kinds.get(i % 4, {}), **params}
            return Seq(prompt, SamplingParams(max_tokens=max_tokens, seed=i, logit_bias=ban,
                                              **params), sink, index=i)

        def run(until: Callable[[], bool], turns: int) -> bool:
            for _ in range(turns):
                if until() or self._stopping:
                    return True
                if self._batch:
                    self.warmup_sizes.append(len(self._batch))
                self._turn()
            return until()

        seqs: list[Seq] = []
        in_batch = lambda: all(s.finished or s.first_token_at is not None for s in seqs)
        for n in warmup_groups(self.max_concurrency):
            group = [dummy(len(seqs) + k, 1 << 20) for k in range(n)]
            seqs += group
            self._waiting.extend(group)
            if not run(in_batch, WARMUP_TURNS):
                raise RuntimeError("warm-up: a group did not join the batch")
            steps = self.steps + WARMUP_STEPS
            run(lambda s=steps: self.steps >= s, WARMUP_STEPS + 1)
        for k, s in enumerate(s for s in seqs if not s.finished):  # they leave a step apart
            s.params.max_tokens = len(s.generated) + 1 + k % 4
        idle = lambda: not (self._batch or self._pending or self._waiting or self._prefilling)
        if not run(idle, WARMUP_TURNS):
            raise RuntimeError("warm-up: the batch did not finish")
        last = [dummy(len(seqs), 3, temperature=0.0, presence_penalty=0.5,
                      frequency_penalty=0.1, repetition_penalty=1.1),
                dummy(len(seqs) + 1, 0, temperature=0.0, logprobs=True, top_logprobs=2,
                      prompt_logprobs=True)]
        self._waiting.extend(last)
        if not run(idle, WARMUP_TURNS):
            raise RuntimeError("warm-up: the last requests did not finish")

    def _fail(self, sequences: list[Seq], error: Exception) -> None:
        from ..errors import MlxZooError

        status = 400 if isinstance(error, MlxZooError) else 500
        for seq in sequences:
            seq.finished = True
            seq.emit({"type": "error", "message": f"{type(error).__name__}: {error}",
                      "status": status})

    def _take_incoming(self, block: bool) -> None:
        try:
            item = self._incoming.get(timeout=0.5) if block else self._incoming.get_nowait()
        except queue.Empty:
            return
        while True:
            if item is not None:
                self._waiting.append(item)
            try:
                item = self._incoming.get_nowait()
            except queue.Empty:
                return

    def _drop_cancelled(self) -> None:
        self._waiting = deque(s for s in self._waiting if not s.cancelled)
        if self._prefilling is not None and self._prefilling.cancelled:
            self._prefilling = None
        if any(s.cancelled for s in self._batch):
            self._remove([i for i, s in enumerate(self._batch) if s.cancelled])

    # -- prefill -------------------------------------------------------------------------------

    def _prefill(self) -> None:
        """Prefill newcomers for up to ``prefill_step_size`` prompt tokens in all: a chunk of a
        long prompt, or several short prompts -- in one batched forward pass when the model
        batches -- which then join the batch together."""
        budget = self.prefill_step_size
        if self._prefilling is None and self._groupable():
            group = self._take_group(budget)
            try:
                if len(group) > 1:
                    budget -= self._prefill_group(group)
                elif group:  # alone: chunked; one that did not fit beside it waits
                    if self._prefilling is not None:
                        self._waiting.appendleft(self._prefilling)
                    self._prefilling = group[0]
            except Exception as e:
                self._fail(group, e)
        while budget > 0:
            try:
                if self._prefilling is None:
                    self._start_prefill()
                if self._prefilling is None:
                    return
                budget -= self._prefill_chunk(budget)
            except Exception as e:
                seq, self._prefilling = self._prefilling, None
                if seq is not None:
                    self._fail([seq], e)

    def _start_prefill(self) -> None:
        if not self._waiting or len(self._batch) >= self.max_concurrency:
            return
        self._prefilling = self._begin(self._waiting.popleft())

    def _begin(self, seq: Seq) -> Seq:
        """A sequence's detokenizer and caches (from the longest cached prefix)."""
        seq.detokenizer = self.tokenizer.detokenizer()
        cache, start = (None, 0)
        if not seq.params.prompt_logprobs:  # scoring needs the logits of every prompt token
            cache, start = self.prefix_cache.lookup(seq.prompt)
        seq.caches = cache if cache is not None else make_prompt_cache(self.model)
        seq.prefilled = seq.cached_tokens = start
        return seq

    def _groupable(self) -> bool:
        """Whether waiting prompts can be prefilled together (batched model, plain caches)."""
        return (self.batching and self.kv_bits is None and len(self._waiting) > 1
                and len(self._batch) + 1 < self.max_concurrency)

    def _take_group(self, budget: int) -> list[Seq]:
        """Waiting sequences (from the front) whose prompts fit ``budget`` tokens together; a
        first one that does not fit alone comes back alone (chunked prefill)."""
        group: list[Seq] = []
        total = 0
        while (self._waiting and len(self._batch) + len(group) < self.max_concurrency
               and not self._waiting[0].params.prompt_logprobs):
            seq = self._begin(self._waiting.popleft())
            rest = len(seq.prompt) - seq.prefilled
            if group and total + rest > budget:
                self._prefilling = seq  # next: on its own
                break
            group.append(seq)
            total += rest
            if total > budget:
                break
        if not group and self._waiting and self._prefilling is None:
            group.append(self._begin(self._waiting.popleft()))  # a scoring request
        return group

    def _prefill_group(self, group: list[Seq]) -> int:
        """Prefill several prompts in one forward pass (right-padded to the longest, the padding
        rolled to the front after: :meth:`BatchCache.finalize`) and add them to the batch."""
        lengths = [len(s.prompt) - s.prefilled for s in group]
        caches = [BatchCache.merge(list(layer))
                  for layer in zip(*(s.caches for s in group), strict=True)]
        share_memo(caches, self._memo)
        width = max(lengths)  # every row has >= 1 token (a prefix-cache hit leaves one)
        ids = [s.prompt[s.prefilled:s.prefilled + n] + [0] * (width - n)
               for s, n in zip(group, lengths, strict=True)]
        for c in caches:
            c.prepare(right_padding=[width - n for n in lengths])
        with checked_token_ids():
            logits = self.model(mx.array(ids, dtype=mx.uint32), cache=caches)
        for c in caches:
            c.finalize()
        last = logits[mx.arange(len(group)), mx.array(lengths) - 1]  # each row's last token
        mx.eval(last, [c.state for c in caches])
        for row, (s, n) in enumerate(zip(group, lengths, strict=True)):
            s.prefilled += n
            s.caches = None
            if s.prefilled > s.cached_tokens and self.prefix_cache.max_bytes > 0:
                self.prefix_cache.insert(s.prompt[:s.prefilled],
                                         [c.extract(row) for c in caches])
        joining = [s for s in group if s.params.max_tokens > 0]
        for s in group:
            if s.params.max_tokens == 0:
                self._finish(s, "length")
        keep = [row for row, s in enumerate(group) if s.params.max_tokens > 0]
        if joining:
            if len(keep) < len(group):
                for c in caches:
                    c.filter(keep)
            if self._caches is None:
                self._caches = caches
            else:
                for mine, theirs in zip(self._caches, caches, strict=True):
                    mine.extend(theirs)
            self._batch += joining
            self._first_tokens(joining, last[mx.array(keep)] if len(keep) < len(group) else last)
        return sum(lengths)

    def _first_tokens(self, seqs: list[Seq], logits: mx.array) -> None:
        """Sample and hand out the first token of sequences just prefilled (in the batch now)
        from their prompts' last logits ``(len(seqs), vocab)``: no wait for a decode step."""
        tokens, extra = self._sample(seqs, logits.astype(mx.float32))
        self._collect(_Step(seqs, tokens, extra), latest=True)

    def _prefill_chunk(self, budget: int) -> int:
        """Up to ``budget`` more prompt tokens of the sequence being prefilled; the tokens run."""
        seq = self._prefilling
        last = len(seq.prompt)  # all of it: the last token's logits give the first new token
        end = min(seq.prefilled + budget, last)
        ran = max(end - seq.prefilled, 0)
        if end > seq.prefilled:
            quantize_kv_caches(seq.caches, self.kv_bits, self.kv_group_size,
                               self.quantized_kv_start)
            chunk = mx.array(seq.prompt[seq.prefilled:end], dtype=mx.uint32)[None]
            with checked_token_ids():
                logits = self.model(chunk, cache=seq.caches)
            if seq.params.prompt_logprobs:
                self._score_prompt(seq, logits[0], seq.prefilled, end)
            mx.eval([c.state for c in seq.caches])
            seq.prefilled = end
        if seq.prefilled < last:
            return ran
        self._prefilling = None
        if seq.prefilled > seq.cached_tokens:
            # batched, the batch's cache copies seq.caches' rows below; per sequence, decoding
            # goes on writing to seq.caches, so the prefix cache gets its own copy
            remembered = seq.caches if self.batching else copy_cache(seq.caches)
            if remembered is not seq.caches:
                mx.eval([c.state for c in remembered])
            self.prefix_cache.insert(seq.prompt[:seq.prefilled], remembered)
        if seq.params.prompt_logprobs:
            seq.emit({"type": "prompt_logprobs", "entries": seq.prompt_logprobs})
        if seq.params.max_tokens == 0:
            self._finish(seq, "length")
            return ran
        if self.batching:
            if self._caches is None:
                self._caches = [BatchCache.like(c, self.kv_bits, self.kv_group_size or 64,
                                                memo=self._memo) for c in seq.caches]
            for b, c in zip(self._caches, seq.caches, strict=True):
                b.add_row(c)
            seq.caches = None
        self._batch.append(seq)
        self._first_tokens([seq], logits[:, -1, :])
        return ran

    def _score_prompt(self, seq: Seq, logits: mx.array, start: int, end: int) -> None:
        """Log-probabilities of prompt tokens ``start + 1 .. end`` given those before them."""
        if end - start < 2 and end >= len(seq.prompt):
            return  # only the last prompt token: it predicts no prompt token
        targets = mx.array(seq.prompt[start + 1:end + 1], dtype=mx.uint32)
        logprobs = logits[:targets.size].astype(mx.float32)  # the last token predicts no prompt
        logprobs = logprobs - mx.logsumexp(logprobs, axis=-1, keepdims=True)
        chosen = mx.take_along_axis(logprobs, targets[:, None], axis=-1)[:, 0]
        k = seq.params.top_logprobs
        top_ids = top_vals = None
        if k:
            top_ids = mx.argpartition(-logprobs, kth=k - 1, axis=-1)[:, :k]
            top_vals = mx.take_along_axis(logprobs, top_ids, axis=-1)
        mx.eval(chosen, *(x for x in (top_ids, top_vals) if x is not None))
        chosen = chosen.tolist()
        tops = ([list(zip(i, v, strict=True)) for i, v in zip(top_ids.tolist(), top_vals.tolist(),
                                                               strict=True)]
                if k else [[] for _ in chosen])
        for token, lp, top in zip(seq.prompt[start + 1:end + 1], chosen, tops, strict=True):
            seq.prompt_logprobs.append((token, lp, sorted(top, key=lambda t: -t[1])))

    # -- decode --------------------------------------------------------------------------------

    def _decode_step(self) -> None:
        """Queue the next step of the batch and hand out the previous one (pipelined), or -- when
        a row's next logits need the host to see this step's tokens first, or a row is new (its
        first token goes out at once) -- run one step and hand it out."""
        if self._batch and not any(s.host_state or s.first_token_at is None
                                   for s in self._batch):
            step = self._launch()
            if self._pending is not None:
                self._collect(self._pending, latest=False)
            self._pending = step
            return
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._collect(pending, latest=True)
        if self._batch:
            self._collect(self._launch(), latest=True)

    def _inputs(self, seqs: list[Seq]) -> mx.array:
        """The ``(B, 1)`` token ids the batch feeds: a host int per row, or -- rows whose last
        step is still queued -- that step's (lazy) token."""
        if all(s.next_input is not None for s in seqs):
            return mx.array([[s.next_input] for s in seqs], dtype=mx.uint32)
        prev = self._pending
        row_of = {id(s): i for i, s in enumerate(prev.seqs)}
        queued = [row_of[id(s)] if s.next_input is None else 0 for s in seqs]
        if queued == list(range(len(prev.seqs))) and len(seqs) == len(prev.seqs):
            return prev.tokens[:, None]
        from_step = prev.tokens[mx.array(queued, dtype=mx.int32)]
        if all(s.next_input is None for s in seqs):
            return from_step[:, None]
        host = mx.array([s.next_input or 0 for s in seqs], dtype=mx.uint32)
        use_host = mx.array([s.next_input is not None for s in seqs])
        return mx.where(use_host, host, from_step)[:, None]

    def _launch(self) -> _Step:
        """Build one decode step of the whole batch and queue it (``mx.async_eval``)."""
        seqs = list(self._batch)
        inputs = self._inputs(seqs)
        with checked_token_ids():
            if self.batching:
                logits = self.model(inputs, cache=self._caches)[:, -1, :]
            else:
                rows = []
                for i, s in enumerate(seqs):
                    quantize_kv_caches(s.caches, self.kv_bits, self.kv_group_size,
                                       self.quantized_kv_start)
                    rows.append(self.model(inputs[i:i + 1], cache=s.caches)[:, -1, :])
                logits = mx.concatenate(rows)
        tokens, extra = self._sample(seqs, logits.astype(mx.float32))
        mx.async_eval(tokens, *extra)
        for s in seqs:
            s.next_input = None  # the next input is this step's token
        if self.batching and self._caches is not None:
            for c in self._caches:
                if c.mode != "full":
                    c.drop_unseen(at_least=BatchCache.STEP)
        return _Step(seqs, tokens, extra)

    def _logit_bias(self, seqs: list[Seq], vocab: int) -> mx.array | None:
        """The ``(B, vocab)`` additive ``logit_bias`` of the batch (built when its rows change:
        remembered by the rows' Seq objects themselves, held, not by their ``id()``, which a
        later request's Seq may take over once a finished one is freed)."""
        key = tuple(seqs)
        if len(key) == len(self._bias[0]) and all(
                a is b for a, b in zip(key, self._bias[0], strict=True)):
            return self._bias[1]
        rows, ids, values = [], [], []
        for i, s in enumerate(seqs):
            for token, value in s.params.logit_bias.items():
                if 0 <= token < vocab:
                    rows.append(i)
                    ids.append(token)
                    values.append(value)
        bias = None
        if rows:
            bias = mx.zeros((len(seqs), vocab), dtype=mx.float32)
            bias[mx.array(rows), mx.array(ids)] = mx.array(values, dtype=mx.float32)
        self._bias = (key, bias)
        return bias

    def _sample(self, seqs: list[Seq], logits: mx.array) -> tuple[mx.array, list[mx.array]]:
        """Each row's next token (and the log-probabilities asked for) from ``(B, vocab)``
        logits: batched ops, with per-row work only for rows that have their own processors or
        a sampler's random key."""
        bias = self._logit_bias(seqs, logits.shape[-1])
        if bias is not None:
            logits = logits + bias
        if any(s.host_state for s in seqs):
            logits = mx.concatenate([s.process(logits[i:i + 1]) if s.host_state
                                     else logits[i:i + 1] for i, s in enumerate(seqs)])
        sampled = any(s.key is not None for s in seqs)
        want = any(s.params.logprobs for s in seqs)
        logprobs = None
        if sampled or want:
            logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        tokens = mx.argmax(logits, axis=-1)
        if sampled:
            tokens = mx.concatenate([s.sample(logprobs[i:i + 1]).astype(tokens.dtype)
                                     if s.key is not None else tokens[i:i + 1]
                                     for i, s in enumerate(seqs)])
        width = self.vocab_size or logits.shape[-1]
        tokens = mx.clip(tokens, 0, width - 1).astype(mx.uint32)
        extra: list[mx.array] = []
        if want:
            k = max((s.params.top_logprobs for s in seqs if s.params.logprobs), default=0)
            extra.append(mx.take_along_axis(logprobs, tokens[:, None].astype(mx.int32),
                                            axis=-1)[:, 0])
            if k:
                top_ids = mx.argpartition(-logprobs, kth=k - 1, axis=-1)[:, :k]
                extra += [top_ids, mx.take_along_axis(logprobs, top_ids, axis=-1)]
        return tokens, extra

    def _collect(self, step: _Step, latest: bool) -> None:
        """Read a step's tokens (one host sync for the batch) and hand them out; ``latest``: no
        later step is queued, so each token is its row's next input."""
        token_list = step.tokens.tolist()
        chosen_list = step.extra[0].tolist() if step.extra else None
        tops = (step.extra[1].tolist(), step.extra[2].tolist()) if len(step.extra) == 3 else None
        self.steps += 1
        now = time.perf_counter()
        done = []
        for i, (s, token) in enumerate(zip(step.seqs, token_list, strict=True)):
            if s.finished or s.cancelled:  # left after this step was queued
                continue
            if s.first_token_at is None:
                s.first_token_at = now
                self.recent_ttft.append(now - s.submitted)
            info = None
            if s.params.logprobs and chosen_list is not None:
                top = []
                if tops is not None and s.params.top_logprobs:
                    top = sorted(zip(tops[0][i], tops[1][i], strict=True), key=lambda t: -t[1])
                    top = top[:s.params.top_logprobs]
                info = (chosen_list[i], top)
            self.generated_tokens += 1
            if self._accept(s, token, info):
                done.append(s)
            elif latest:
                s.next_input = token
        if done:
            row_of = {id(s): i for i, s in enumerate(self._batch)}
            self._remove([row_of[id(s)] for s in done if id(s) in row_of], finished=True)
        self._flush()

    def _post(self, seq: Seq, event: Event) -> None:
        self._outbox.append((seq, event))

    def _flush(self) -> None:
        """Hand out the events of this step: one ``call_soon_threadsafe`` per event loop of
        :class:`LoopSink` s, other sinks called directly."""
        if not self._outbox:
            return
        outbox, self._outbox = self._outbox, []
        loops: dict[Any, list] = {}
        for seq, event in outbox:
            sink = seq.sink
            if isinstance(sink, LoopSink):
                event["index"] = seq.index
                loops.setdefault(sink.loop, []).append((sink.queue, event))
            else:
                seq.emit(event)
        for loop, items in loops.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the loop is closed: nobody is listening
                log.debug("event loop closed; %d events dropped", len(items))

    def _accept(self, seq: Seq, token: int, info: Any) -> bool:
        """Hand out ``token``; True when the sequence is finished."""
        seq.generated.append(token)
        seq.counts[token] = seq.counts.get(token, 0) + 1
        if seq.processor is not None:
            seq.processor.accept(token)
        p = seq.params
        finish = None
        if token in self.tokenizer.eos_token_ids:
            text, finish = seq.detokenizer.finalize(), "stop"
            info = None  # the end-of-sequence token is not part of the answer
        else:
            text = seq.detokenizer.add_token(token)
            out_of_room = (self.context_length is not None
                           and len(seq.prompt) + len(seq.generated) >= self.context_length)
            if len(seq.generated) >= p.max_tokens or out_of_room:
                text, finish = text + seq.detokenizer.finalize(), "length"
            elif seq.processor is not None and seq.processor.is_finished():
                text, finish = text + seq.detokenizer.finalize(), "stop"
        if seq.stops is not None:
            text, reached = seq.stops.feed(text)
            if reached:
                finish = "stop"
            elif finish is not None:
                text += seq.stops.flush()
        self._post(seq, {"type": "token", "token": token, "text": text, "logprob": info})
        if finish is not None:
            self._finish(seq, finish)
            return True
        return False

    def _finish(self, seq: Seq, reason: str) -> None:
        seq.finished = True
        self._post(seq, {"type": "done", "finish_reason": reason, "prompt_tokens": len(seq.prompt),
                  "completion_tokens": len(seq.generated), "cached_tokens": seq.cached_tokens})

    def _remove(self, rows: list[int], finished: bool = False) -> None:
        """Take rows out of the batch (finished or cancelled); finished conversations of a
        full-attention model go to the prefix cache."""
        gone = set(rows)
        for i in rows:
            s = self._batch[i]
            if finished and not s.cancelled:
                self._remember(i, s)
        keep = [i for i in range(len(self._batch)) if i not in gone]
        self._batch = [self._batch[i] for i in keep]
        if not self._batch:
            self._bias = ((), None)  # holds no finished request
        if self.batching and self._caches is not None:
            for c in self._caches:
                c.filter(keep)
            if not keep:
                self._caches = None

    def _remember(self, row: int, seq: Seq) -> None:
        if self.prefix_cache.max_bytes <= 0:
            return
        if self.batching:
            if self._caches is None:
                return
            if any(c.mode != "full" or c.quantized is not None for c in self._caches):
                return
            cache = [c.extract(row) for c in self._caches]
        else:
            cache = seq.caches
        held = cache[0].offset
        tokens = (seq.prompt + seq.generated)[:held]
        if len(tokens) == held and held > len(seq.prompt) - 1:
            mx.eval([c.state for c in cache])
            self.prefix_cache.insert(tokens, cache)


@dataclass
class _Step:
    """A queued decode step: the rows it ran (in batch order then), its tokens and the
    log-probability arrays asked for (chosen, then top ids and values)."""

    seqs: list[Seq]
    tokens: mx.array
    extra: list[mx.array]
