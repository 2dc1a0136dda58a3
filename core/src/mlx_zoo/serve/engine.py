"""The serving engine: continuous batching of generation requests on one model.

One thread owns the model and every MLX call. Each turn of its loop

1. takes newly submitted sequences and drops cancelled ones (a client that went away),
2. runs **one chunk** of the prompt of the sequence being prefilled (``prefill_step_size``
   tokens, into its own single-sequence caches, starting from the longest cached prefix found in
   the :class:`~mlx_zoo.serve.prefix_cache.PrefixCache`), so a long prompt delays the running
   batch by one chunk at a time, never by the whole prompt,
3. when that prompt is in (all of it but its last token), merges the sequence's caches into the
   batch (:meth:`BatchKVCache.add_row <mlx_zoo.serve.batch_cache.BatchKVCache.add_row>`),
4. runs **one decode step** for every sequence of the batch at once: each feeds one token (a new
   sequence its last prompt token), the model runs on ``(B, 1)`` ids over the batched caches
   (per-row RoPE offsets and masks), each row's logits go through that request's own logits
   processors and sampler, and finished rows leave the batch.

Models whose caches cannot be batched (a plugin's own cache class) or whose forward pass does not
accept per-row offsets (found by a probe at start-up: the batched path must reproduce the
single-sequence logits) are served by the same loop in **per-sequence mode**: every sequence keeps
its own caches and the decode step runs the model once per sequence.

Results go back through each sequence's ``sink`` (a callable taking an event dict), called on the
engine thread.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx

from ..cache import make_prompt_cache
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
from .batch_cache import BatchKVCache, batchable
from .prefix_cache import PrefixCache

log = logging.getLogger("mlx_zoo.serve")

Event = dict[str, Any]


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
    def plain(self) -> bool:
        """Greedy with nothing changing the logits: can be decided for the whole batch at once."""
        p = self.params
        return (p.temperature == 0 and not p.logit_bias and not p.presence_penalty
                and not p.frequency_penalty and p.repetition_penalty in (None, 1.0)
                and self.processor is None)

    def emit(self, event: Event) -> None:
        event["index"] = self.index
        try:
            self.sink(event)
        except Exception:  # a sink whose consumer is gone must not stop the engine
            log.debug("sink of sequence %d failed", self.index, exc_info=True)

    # -- sampling ------------------------------------------------------------------------------

    def process(self, logits: mx.array) -> mx.array:
        """This request's logits processors on its ``(1, vocab)`` row."""
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
        if p.logit_bias:
            ids = mx.array(list(p.logit_bias), dtype=mx.uint32)
            bias = mx.array(list(p.logit_bias.values()), dtype=logits.dtype)
            logits = mx.array(logits)
            logits[:, ids] = logits[:, ids] + bias
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
                 loader: Callable[[], tuple[Any, Any]] | None = None):
        self.model_ref = model_ref
        self.max_concurrency = max_concurrency
        self.prefill_step_size = prefill_step_size
        self.kv_bits, self.kv_group_size = kv_bits, kv_group_size
        self.quantized_kv_start = quantized_kv_start
        self.prefix_cache = PrefixCache(prefix_cache_bytes)
        self.want_batching = batching
        self.batching = False
        self.loader = loader
        self.model = self.tokenizer = None
        self.vocab_size: int | None = None
        self.context_length: int | None = None
        self.load_error: BaseException | None = None
        self.ready = threading.Event()
        self._incoming: queue.Queue = queue.Queue()
        self._waiting: deque[Seq] = deque()
        self._prefilling: Seq | None = None
        self._batch: list[Seq] = []
        self._caches: list[BatchKVCache] | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="mlx-zoo-engine", daemon=True)
        self._token_text: dict[int, str] = {}
        self.steps = 0
        self.generated_tokens = 0

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
                "steps": self.steps, "generated_tokens": self.generated_tokens}

    def token_text(self, token: int) -> str:
        text = self._token_text.get(token)
        if text is None:
            text = self._token_text[token] = self.tokenizer.decode([token])
        return text

    # -- the engine thread ---------------------------------------------------------------------

    def _load(self) -> None:
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
            caches = None
            for p in prompts:
                cache = make_prompt_cache(self.model)
                with checked_token_ids():
                    self.model(mx.array(p[:-1])[None], cache=cache)
                if caches is None:
                    caches = [BatchKVCache.like(c) for c in cache]
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
        if not error <= 1e-2 * scale:
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
        self.ready.set()
        while not self._stopping:
            idle = not (self._batch or self._prefilling or self._waiting)
            self._take_incoming(block=idle)
            if self._stopping:
                break
            self._drop_cancelled()
            try:
                if self._prefilling is None:
                    self._start_prefill()
                if self._prefilling is not None:
                    self._prefill_chunk()
            except Exception as e:
                seq, self._prefilling = self._prefilling, None
                if seq is not None:
                    self._fail([seq], e)
            if self._batch:
                try:
                    self._decode_step()
                except Exception as e:
                    log.exception("decode step failed")
                    failed, self._batch, self._caches = self._batch, [], None
                    self._fail(failed, e)
        for seq in [*self._batch, *self._waiting] + ([self._prefilling] if self._prefilling
                                                     else []):
            seq.emit({"type": "error", "message": "the server is shutting down", "status": 503})

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

    def _start_prefill(self) -> None:
        if not self._waiting or len(self._batch) >= self.max_concurrency:
            return
        seq = self._waiting.popleft()
        seq.detokenizer = self.tokenizer.detokenizer()
        cache, start = (None, 0)
        if not seq.params.prompt_logprobs:  # scoring needs the logits of every prompt token
            cache, start = self.prefix_cache.lookup(seq.prompt)
        seq.caches = cache if cache is not None else make_prompt_cache(self.model)
        seq.prefilled = seq.cached_tokens = start
        self._prefilling = seq

    def _prefill_chunk(self) -> None:
        seq = self._prefilling
        last = len(seq.prompt) - 1  # the last prompt token is fed by the first decode step
        end = min(seq.prefilled + self.prefill_step_size, last)
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
            return
        self._prefilling = None
        if seq.prefilled > seq.cached_tokens:
            self.prefix_cache.insert(seq.prompt[:seq.prefilled], seq.caches)
        if seq.params.prompt_logprobs:
            seq.emit({"type": "prompt_logprobs", "entries": seq.prompt_logprobs})
        if seq.params.max_tokens == 0:
            self._finish(seq, "length")
            return
        seq.next_input = seq.prompt[-1]
        if self.batching:
            if self._caches is None:
                self._caches = [BatchKVCache.like(c, self.kv_bits, self.kv_group_size or 64)
                                for c in seq.caches]
            for b, c in zip(self._caches, seq.caches, strict=True):
                b.add_row(c)
            seq.caches = None
        self._batch.append(seq)

    def _score_prompt(self, seq: Seq, logits: mx.array, start: int, end: int) -> None:
        """Log-probabilities of prompt tokens ``start + 1 .. end`` given those before them."""
        logprobs = logits.astype(mx.float32)
        logprobs = logprobs - mx.logsumexp(logprobs, axis=-1, keepdims=True)
        targets = mx.array(seq.prompt[start + 1:end + 1], dtype=mx.uint32)
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
        seqs = self._batch
        inputs = mx.array([[s.next_input] for s in seqs], dtype=mx.uint32)
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
        logits = logits.astype(mx.float32)
        if all(s.plain for s in seqs):
            tokens = mx.argmax(logits, axis=-1)
            logprobs = None
            if any(s.params.logprobs for s in seqs):
                logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        else:
            rows_lp, rows_tok = [], []
            for i, s in enumerate(seqs):
                row = s.process(logits[i:i + 1])
                lp = row - mx.logsumexp(row, axis=-1, keepdims=True)
                rows_lp.append(lp)
                rows_tok.append(s.sample(lp))
            logprobs = mx.concatenate(rows_lp)
            tokens = mx.concatenate(rows_tok)
        width = self.vocab_size or logits.shape[-1]
        tokens = mx.clip(tokens, 0, width - 1)
        k = max((s.params.top_logprobs for s in seqs if s.params.logprobs), default=0)
        extra = []
        if logprobs is not None:
            chosen = mx.take_along_axis(logprobs, tokens[:, None], axis=-1)[:, 0]
            extra.append(chosen)
            if k:
                top_ids = mx.argpartition(-logprobs, kth=k - 1, axis=-1)[:, :k]
                top_vals = mx.take_along_axis(logprobs, top_ids, axis=-1)
                extra += [top_ids, top_vals]
        mx.eval(tokens, *extra)
        token_list = tokens.tolist()
        chosen_list = extra[0].tolist() if extra else None
        tops = (extra[1].tolist(), extra[2].tolist()) if len(extra) == 3 else None
        self.steps += 1
        now = time.perf_counter()
        done = []
        for i, (s, token) in enumerate(zip(seqs, token_list, strict=True)):
            if s.first_token_at is None:
                s.first_token_at = now
            info = None
            if s.params.logprobs and chosen_list is not None:
                top = []
                if tops is not None and s.params.top_logprobs:
                    top = sorted(zip(tops[0][i], tops[1][i], strict=True), key=lambda t: -t[1])
                    top = top[:s.params.top_logprobs]
                info = (chosen_list[i], top)
            if self._accept(s, token, info):
                done.append(i)
        self.generated_tokens += len(seqs)
        if done:
            self._remove(done, finished=True)
        if self.batching and self._caches is not None:
            for c in self._caches:
                if c.mode != "full":
                    c.drop_unseen(at_least=BatchKVCache.STEP)

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
        seq.emit({"type": "token", "token": token, "text": text, "logprob": info})
        seq.next_input = token
        if finish is not None:
            self._finish(seq, finish)
            return True
        return False

    def _finish(self, seq: Seq, reason: str) -> None:
        seq.finished = True
        seq.emit({"type": "done", "finish_reason": reason, "prompt_tokens": len(seq.prompt),
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
        if self.batching and self._caches is not None:
            for c in self._caches:
                c.keep_rows(keep)
            if not keep:
                self._caches = None

    def _remember(self, row: int, seq: Seq) -> None:
        if self.prefix_cache.max_bytes <= 0:
            return
        if self.batching:
            if self._caches is None:
                return
            cache = [c.extract_row(row) for c in self._caches]
            if any(c is None for c in cache):
                return
        else:
            cache = seq.caches
        held = cache[0].offset
        tokens = (seq.prompt + seq.generated)[:held]
        if len(tokens) == held and held > len(seq.prompt) - 1:
            mx.eval([c.state for c in cache])
            self.prefix_cache.insert(tokens, cache)
