"""The serving engine in process: batched caches against the single-sequence ones, continuous
batching against mlx_zoo.generate (greedy: the same text for every request of a batch as alone),
per-sequence fallback, chunked prefill, the prefix cache, --kv-bits, cancellation."""

from __future__ import annotations

import json
import random
import shutil
import threading

import mlx.core as mx
import pytest

import mlx_zoo
from mlx_zoo.batch_cache import BatchCache, MaskMemo, share_memo
from mlx_zoo.cache import ChunkedKVCache, KVCache, QuantizedKVCache, RotatingKVCache

pytest.importorskip("starlette")

from mlx_zoo.serve.engine import Engine, SamplingParams, Seq, warmup_groups  # noqa: E402
from mlx_zoo.serve.prefix_cache import PrefixCache  # noqa: E402

TIMEOUT_S = 60
MESSAGES = ["hello there", "what is a plugin?", "write a function that adds two numbers", "x",
            "tell me about caches, keys and values in attention, at length please"]


# -- batched caches against single-sequence ones -----------------------------------------------


def _single(kind: str, size: int):
    return {"full": KVCache, "window": lambda: RotatingKVCache(size),
            "chunk": lambda: ChunkedKVCache(size)}[kind]()


@pytest.mark.parametrize("kind,size", [("full", None), ("window", 5), ("chunk", 4)])
def test_batch_cache_attention_matches_single(kind, size):
    """Rows of different lengths joining at different times attend exactly as each would alone,
    through the batch's per-row offsets and masks, also after a row leaves."""
    mx.random.seed(0)
    heads, dim = 2, 8
    lengths = [3, 9, 6]
    singles = [_single(kind, size) for _ in lengths]
    batch = BatchCache((), kind, size)
    for single, n in zip(singles, lengths, strict=True):  # prefill alone, then join the batch
        single.update_and_fetch(mx.random.normal((1, heads, n, dim)),
                                mx.random.normal((1, heads, n, dim)))
        batch.add_row(single)
    assert batch.offsets == lengths
    for step in range(12):
        if step == 5:  # the middle row finishes
            batch.filter([0, 2])
            singles = [singles[0], singles[2]]
        b = batch.batch_size
        q = mx.random.normal((b, heads, 1, dim))
        k, v = mx.random.normal((b, heads, 1, dim)), mx.random.normal((b, heads, 1, dim))
        assert batch.offset.tolist() == [s.offset for s in singles]
        mask = batch.make_mask(1)
        bk, bv = batch.update_and_fetch(k, v)
        out = mx.fast.scaled_dot_product_attention(q, bk, bv, scale=0.3, mask=mask)
        for i, single in enumerate(singles):
            smask = single.make_mask(1)
            sk, sv = single.update_and_fetch(k[i:i + 1], v[i:i + 1])
            ref = mx.fast.scaled_dot_product_attention(q[i:i + 1], sk, sv, scale=0.3, mask=smask)
            assert mx.allclose(out[i:i + 1], ref, atol=1e-5).item(), (kind, step, i)
        batch.drop_unseen()
    if kind != "full":  # keys nobody can see any more were dropped
        assert batch.idx <= max(s.offset - s.offset // size * size if kind == "chunk" else size
                                for s in singles) + 1


def test_batch_cache_quantized_storage():
    mx.random.seed(1)
    single = QuantizedKVCache(group_size=32, bits=8)
    single.update_and_fetch(mx.random.normal((1, 2, 5, 32)), mx.random.normal((1, 2, 5, 32)))
    batch = BatchCache((), "full", quantized=(32, 8))
    batch.add_row(single)
    batch.add_row(KVCache())  # an empty row (one-token prompt)
    mask = batch.make_mask(1)
    k, v = batch.update_and_fetch(mx.ones((2, 2, 1, 32)), mx.ones((2, 2, 1, 32)))
    assert k.shape == (2, 2, 6, 32) and batch.parts[0].dtype == mx.uint32
    assert mask[1, 0, 0].tolist() == [False] * 5 + [True] and all(mask[0, 0, 0].tolist())
    ref = single.state[0]
    assert mx.allclose(k[:1, :, :5], mx.dequantize(*ref, group_size=32, bits=8)).item()


def _rows(kind: str = "full", size: int | None = None, lengths=(3, 7)) -> BatchCache:
    batch = BatchCache((), kind, size)
    for n in lengths:
        single = _single(kind, size) if kind != "full" else KVCache()
        single.update_and_fetch(mx.zeros((1, 1, n, 8)), mx.zeros((1, 1, n, 8)))
        batch.add_row(single)
    return batch


def test_batch_cache_memo_is_the_batch_s_not_the_thread_s():
    """The layers of one batch share one MaskMemo: one offsets array and one mask per step for
    all of them, whichever thread asks (the memo is the caches', not per-thread module state); a
    batch of its own builds its own, equal; a step moves every layer's offsets on."""
    layers = [_rows(), _rows(), _rows()]
    memo = share_memo(layers)
    assert all(c.memo is memo for c in layers)
    offset, mask = layers[0].offset, layers[0].make_mask(1)
    assert layers[2].offset is offset and layers[1].make_mask(1) is mask
    seen = {}
    worker = threading.Thread(target=lambda: seen.update(offset=layers[1].offset,
                                                         mask=layers[2].make_mask(1)))
    worker.start()
    worker.join()
    assert seen["offset"] is offset and seen["mask"] is mask
    alone = _rows()
    assert alone.memo is not memo and alone.offset is not offset
    assert alone.offset.tolist() == offset.tolist() == [3, 7]
    assert mx.array_equal(alone.make_mask(1), mask).item()
    for c in layers:
        c.update_and_fetch(mx.zeros((2, 1, 1, 8)), mx.zeros((2, 1, 1, 8)))
    assert layers[1].offset.tolist() == [4, 8] and layers[0].offset is layers[2].offset
    other = _rows(lengths=(5, 2))  # same memo, other padding: its own entries
    other.memo = memo
    assert other.offset.tolist() == [5, 2] and layers[0].offset.tolist() == [4, 8]
    small = MaskMemo(size=2)
    for i in range(5):
        small.get(("k", i), lambda: mx.array(0))
    assert len(small) <= 2
    small.clear()
    assert len(small) == 0


def test_engine_batch_layers_share_the_engine_memo():
    """The serve engine's batch caches (joined one by one and as a prefilled group) use the
    engine's one memo; it is emptied when the engine's loop ends."""
    engine = started("demo:qwen2", max_concurrency=8)
    memos = []
    launch = engine._launch

    def recording():
        memos.append({id(c.memo) for c in engine._caches})
        return launch()

    engine._launch = recording
    try:
        assert_same_as_alone(engine, count=6, max_tokens=8)
        assert memos and all(m == {id(engine._memo)} for m in memos), memos
        assert len(engine._memo) > 0
    finally:
        engine.stop()
    assert len(engine._memo) == 0


def test_prefix_cache_lru_and_trim():
    cache = PrefixCache(max_bytes=10_000)
    c = KVCache()
    c.update_and_fetch(mx.ones((1, 1, 4, 8)), mx.ones((1, 1, 4, 8)))
    cache.insert([1, 2, 3, 4], [c])
    got, n = cache.lookup([1, 2, 9, 9, 9])
    assert n == 2 and got[0].offset == 2
    got[0].update_and_fetch(mx.zeros((1, 1, 1, 8)), mx.zeros((1, 1, 1, 8)))  # copies: entry kept
    again, n = cache.lookup([1, 2, 3, 4, 5])
    assert n == 4 and again[0].state[0][0, 0, 2, 0].item() == 1.0
    assert cache.lookup([7, 8])[0] is None
    big = KVCache()
    big.update_and_fetch(mx.ones((1, 1, 100, 8)), mx.ones((1, 1, 100, 8)))
    cache.insert(list(range(100)), [big])  # 6400 bytes: the LRU budget evicts the first entry
    cache.insert([5] * 30, [KVCache()])
    assert cache.nbytes <= 10_000


# -- the engine against mlx_zoo.generate ----------------------------------------------------------


def run_engine(engine: Engine, prompts: list[list[int]], params: SamplingParams | list) -> list:
    """Submit all prompts at once; the events of each, once all are done (bounded in time)."""
    results: dict[int, list] = {}
    done = threading.Event()
    lock = threading.Lock()

    def sink_for(i):
        events = []

        def sink(event):
            events.append(event)
            if event["type"] in ("done", "error"):
                with lock:
                    results[i] = events
                    if len(results) == len(prompts):
                        done.set()
        return sink

    plist = params if isinstance(params, list) else [params] * len(prompts)
    engine.submit([Seq(p, sp, sink_for(i)) for i, (p, sp) in enumerate(zip(prompts, plist,
                                                                           strict=True))])
    assert done.wait(TIMEOUT_S), f"engine did not finish: {engine.stats()}"
    return [results[i] for i in range(len(prompts))]


def text_of(events: list) -> str:
    return "".join(e["text"] for e in events if e["type"] == "token")


def started(ref: str, **kwargs) -> Engine:
    engine = Engine(ref, **kwargs)
    engine.start()
    assert engine.ready.wait(TIMEOUT_S)
    assert engine.load_error is None, engine.load_error
    return engine


@pytest.fixture(scope="module")
def qwen2_engine():
    engine = started("demo:qwen2", max_concurrency=16, prefill_step_size=8)
    yield engine
    engine.stop()


def chat_prompts(tokenizer, count: int) -> list[list[int]]:
    return [tokenizer.encode_chat([{"role": "user",
                                    "content": MESSAGES[i % len(MESSAGES)] * (1 + i % 3)}])
            for i in range(count)]


def assert_same_as_alone(engine: Engine, count: int = 12, max_tokens: int = 24) -> None:
    prompts = chat_prompts(engine.tokenizer, count)
    results = run_engine(engine, prompts, SamplingParams(max_tokens=max_tokens))
    for prompt, events in zip(prompts, results, strict=True):
        assert events[-1]["type"] == "done", events[-1]
        alone = mlx_zoo.generate(engine.model, engine.tokenizer, prompt, max_tokens=max_tokens)
        assert text_of(events) == alone.text
        assert events[-1]["finish_reason"] == alone.finish_reason
        assert events[-1]["completion_tokens"] == len(alone.tokens)


def assert_batches_as_alone(ref: str, count: int = 12, max_tokens: int = 24, **options) -> None:
    """An engine started on ``ref`` decodes batched, and gives each request its text alone."""
    engine = started(ref, **options)
    try:
        assert engine.batching
        assert_same_as_alone(engine, count, max_tokens)
    finally:
        engine.stop()


def test_batched_greedy_equals_alone_qwen2(qwen2_engine):
    """12 requests decoded together (chunked prefill of 8 tokens) give each the text it gets
    alone through mlx_zoo.generate."""
    assert qwen2_engine.batching
    assert_same_as_alone(qwen2_engine)
    assert qwen2_engine.stats()["running"] == 0


def test_short_prompts_prefilled_together():
    """Prompts waiting together are prefilled in one batched forward pass (right-padded), their
    first tokens sampled from its last logits; each text equals the one it gets alone."""
    engine = started("demo:qwen2")
    sizes = []
    prefill_group = engine._prefill_group

    def counting(group):
        sizes.append(len(group))
        return prefill_group(group)

    engine._prefill_group = counting
    try:
        assert_same_as_alone(engine, count=8)
        assert sizes and max(sizes) > 1, sizes
    finally:
        engine.stop()


def test_batched_greedy_equals_alone_hunyuan():
    assert_batches_as_alone("demo:hunyuan", prefill_step_size=16, count=6)


def test_llama4_temperature_tuning_batched():
    """The llama4 demo's temperature-tuned NoPE layers take per-row offsets (one position per
    row for the temperature): the start-up probe finds the batched path exact and batches."""
    assert_batches_as_alone("demo:llama4", count=4, max_tokens=16)


def test_llama4_chunked_attention_batched(tmp_path):
    """Without temperature tuning the llama4 model takes per-row offsets: its chunked layers
    (chunk 32, crossed by the prompts) run batched, equal to decoding alone."""
    model_dir = tmp_path / "llama4"
    shutil.copytree(mlx_zoo.resolve_model_dir("demo:llama4"), model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["attn_temperature_tuning"] = False
    (model_dir / "config.json").write_text(json.dumps(config))
    assert_batches_as_alone(str(model_dir), prefill_step_size=16, count=6, max_tokens=40)


def test_warmup_groups_double_the_batch():
    for concurrency, groups in ((1, [1]), (2, [1, 1]), (6, [1, 1, 2, 2]), (16, [1, 1, 2, 4, 8])):
        assert warmup_groups(concurrency) == groups
    for concurrency in range(1, 40):
        groups = warmup_groups(concurrency)
        assert sum(groups) == concurrency and all(g >= 1 for g in groups)


def _state(engine: Engine, steps: bool = True) -> dict:
    """What an engine holds that a request can see: counters, its batch, the prefix cache's
    entries (token ids and every array of their caches). ``steps=False`` leaves out the step
    count (after requests: the step queued after a last token is still counted when the
    client has its answer)."""
    entries = [(key, [[a.tolist() for a in c.state] for c in cache])
               for key, (cache, _) in engine.prefix_cache._entries.items()]
    stats = engine.stats()
    stats["recent_ttft_ms"] = len(stats["recent_ttft_ms"])  # times differ
    if not steps:
        del stats["steps"]
    return {"stats": stats, "entries": entries, "batch": list(engine._batch),
            "caches": engine._caches, "memo": len(engine._memo),
            "bias": (len(engine._bias[0]), engine._bias[1] is None)}


def test_warmup_leaves_no_trace():
    """The start-up warm-up runs decode steps at every doubling of the batch up to
    --max-concurrency (and back down), and leaves nothing behind: after it, an engine's state,
    the first requests' events (greedy with logprobs, then seeded sampling, then an unseeded
    sampled one drawing from ``random``) and the prefix cache's contents are those of an engine
    started without it."""
    engines, states, events = [], [], []
    try:
        for warmup in (False, True):
            random.seed(1234)
            engine = started("demo:qwen2", max_concurrency=8, warmup=warmup)
            engines.append(engine)
            assert engine.batching
            states.append(_state(engine))
            prompts = chat_prompts(engine.tokenizer, 3)
            got = [run_engine(engine, [prompts[0]], SamplingParams(max_tokens=12, logprobs=True,
                                                                    top_logprobs=2))[0],
                   run_engine(engine, [prompts[1]], SamplingParams(max_tokens=12, temperature=1.0,
                                                                    seed=3))[0],
                   run_engine(engine, [prompts[2]], SamplingParams(max_tokens=12,
                                                                    temperature=1.0))[0]]
            events.append(got)
            states.append(_state(engine, steps=False))
        plain, warm = engines
        assert plain.warmup_s is None and not plain.warmup_sizes
        assert warm.warmup_s > 0 and {1, 2, 4, 8} <= set(warm.warmup_sizes), warm.warmup_sizes
        assert states[0] == states[2]  # just started
        assert states[0]["stats"]["steps"] == 0 and not states[0]["entries"]
        assert events[0] == events[1]
        assert states[1] == states[3]
        assert states[1]["entries"]  # the requests' prompts and answers are there
    finally:
        for engine in engines:
            engine.stop()


def test_warmup_flag_reaches_the_engine(monkeypatch):
    """``mlx-zoo serve`` warms up unless --no-warmup."""
    import argparse

    import mlx_zoo.serve.engine as engine_module
    from mlx_zoo.serve import add_arguments, build

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    seen = []

    class Stop(Exception):
        pass

    class Recording:
        def __init__(self, model_ref, **kwargs):
            seen.append(kwargs["warmup"])

        def start(self):
            raise Stop

    monkeypatch.setattr(engine_module, "Engine", Recording)
    for argv, expected in (([], True), (["--no-warmup"], False), (["--warmup"], True)):
        with pytest.raises(Stop):
            build(parser.parse_args(argv))
        assert seen[-1] is expected


def test_warmup_covers_the_per_sequence_and_kv_bits_engines():
    """Without batching and with --kv-bits the warm-up runs too (one sequence at a time through
    the per-sequence decode; prompts prefilled one at a time), and requests answer as alone."""
    for options in ({"batching": False}, {"kv_bits": 8}):
        engine = started("demo:qwen2", max_concurrency=4, warmup=True, **options)
        try:
            assert engine.warmup_s > 0 and max(engine.warmup_sizes) == 4
            assert engine.stats()["steps"] == 0 and len(engine.prefix_cache) == 0
            if not options.get("kv_bits"):
                assert_same_as_alone(engine, count=4, max_tokens=8)
        finally:
            engine.stop()


def test_prefix_cache_reuse(qwen2_engine):
    prompt = chat_prompts(qwen2_engine.tokenizer, 3)[2]
    first = run_engine(qwen2_engine, [prompt], SamplingParams(max_tokens=8))[0]
    second = run_engine(qwen2_engine, [prompt], SamplingParams(max_tokens=8))[0]
    assert second[-1]["cached_tokens"] == len(prompt) - 1
    assert text_of(first) == text_of(second)


def test_prefix_cache_reuse_per_sequence():
    """Without batching, decoding goes on writing to a sequence's caches after its prompt went
    to the prefix cache: a request that extends that prompt, arriving while the first still
    decodes, must find the prompt alone there (its own copy) and answer as it does alone."""
    engine = started("demo:qwen2", batching=False, max_concurrency=4)
    try:
        assert not engine.batching
        prompt = chat_prompts(engine.tokenizer, 3)[1]
        longer = prompt + engine.tokenizer.encode(" and then some more words",
                                                  add_special_tokens=False)
        events = {0: [], 1: []}
        done = {0: threading.Event(), 1: threading.Event()}

        def sink(i):
            def receive(event):
                events[i].append(event)
                if event["type"] == "token" and i == 0 and len(events[0]) == 4:
                    # the first request is decoding now: the second arrives
                    engine.submit([Seq(longer, SamplingParams(max_tokens=12), sink(1))])
                if event["type"] in ("done", "error"):
                    done[i].set()
            return receive

        found = []  # (positions the cache found holds, prompt tokens it stands for)
        lookup = engine.prefix_cache.lookup

        def recording_lookup(tokens):
            cache, start = lookup(tokens)
            if cache is not None:
                found.append((cache[0].offset, start))
            return cache, start

        engine.prefix_cache.lookup = recording_lookup
        engine.submit([Seq(prompt, SamplingParams(max_tokens=48), sink(0))])
        assert done[0].wait(TIMEOUT_S) and done[1].wait(TIMEOUT_S), engine.stats()
        assert events[1][-1]["cached_tokens"] == len(prompt)
        assert found == [(len(prompt), len(prompt))]
        for ids, got, n in ((prompt, events[0], 48), (longer, events[1], 12)):
            alone = mlx_zoo.generate(engine.model, engine.tokenizer, ids, max_tokens=n)
            assert text_of(got) == alone.text
    finally:
        engine.stop()


@pytest.mark.parametrize("shift, batched", [(0.05, True), (0.5, False)])
def test_batching_probe_tolerates_rounding_not_errors(shift, batched):
    """The start-up check that batched logits equal single-sequence ones: a bfloat16 model whose
    batched logits differ by 0.05 of their scale (bfloat16 rounding of other matmul kernels: an
    H200 gave 0.049) is served batched; one differing by half their scale (what a forward pass
    ignoring per-row offsets does) is served per sequence. Greedy batched text still equals
    each request's alone in the first case."""
    model, _ = mlx_zoo.load("demo:qwen2", dtype=mx.bfloat16)
    tokenizer = mlx_zoo.load_tokenizer("demo:qwen2")
    plain = type(model)

    def call(self, inputs, cache=None):
        logits = plain.__call__(self, inputs, cache=cache)
        if inputs.shape[0] > 1:  # a batch: off by ``shift`` of the logits' scale
            logits = logits + shift * mx.abs(logits).max()
        return logits

    model.__class__ = type("Shifted", (plain,), {"__call__": call})
    engine = started("demo:qwen2", loader=lambda: (model, tokenizer))
    try:
        assert engine.batching is batched
        if batched:  # a constant shift leaves every argmax where it was
            assert_same_as_alone(engine, count=4, max_tokens=8)
    finally:
        engine.stop()


def test_sampling_per_request_seeded(qwen2_engine):
    """Seeded sampling is reproducible whatever else runs in the batch; greedy rows next to
    sampled ones are unaffected."""
    prompts = chat_prompts(qwen2_engine.tokenizer, 3)
    sampled = SamplingParams(max_tokens=16, temperature=1.0, top_k=20, seed=7)
    greedy = SamplingParams(max_tokens=16)
    a = run_engine(qwen2_engine, prompts, [sampled, greedy, sampled])
    b = run_engine(qwen2_engine, prompts[:1], sampled)
    assert text_of(a[0]) == text_of(b[0])
    alone = mlx_zoo.generate(qwen2_engine.model, qwen2_engine.tokenizer, prompts[1],
                             max_tokens=16)
    assert text_of(a[1]) == alone.text


def test_logit_bias_and_stop(qwen2_engine):
    prompt = chat_prompts(qwen2_engine.tokenizer, 1)[0]
    alone = mlx_zoo.generate(qwen2_engine.model, qwen2_engine.tokenizer, prompt, max_tokens=12)
    banned = alone.tokens[0]
    events = run_engine(qwen2_engine, [prompt],
                        SamplingParams(max_tokens=12, logit_bias={banned: -100.0}))[0]
    assert events[0]["token"] != banned
    stop = alone.text[5:9]
    events = run_engine(qwen2_engine, [prompt], SamplingParams(max_tokens=12, stop=[stop]))[0]
    assert text_of(events) == alone.text[:alone.text.index(stop)]
    assert events[-1]["finish_reason"] == "stop"


def test_logit_bias_not_inherited_by_a_later_request(qwen2_engine):
    """The batch's logit_bias rows are remembered while its rows stay the same: a request after
    one with a bias gets no bias, also when its Seq object is where the finished one was (the
    same id(): remembered by id(), the bias went on to the new request)."""
    prompt = chat_prompts(qwen2_engine.tokenizer, 2)[1]
    first = mlx_zoo.generate(qwen2_engine.model, qwen2_engine.tokenizer, prompt,
                             max_tokens=1).tokens[0]

    def answer(seq: Seq, events: list, done: threading.Event) -> int:
        qwen2_engine.submit([seq])
        assert done.wait(TIMEOUT_S)
        for _ in range(200):  # the engine done with it (no step queued)
            if qwen2_engine._pending is None and not qwen2_engine._batch:
                break
            threading.Event().wait(0.005)
        return events[0]["token"]

    reused = 0
    for _ in range(10):
        events, done = [], threading.Event()
        sink = lambda e, events=events, done=done: (events.append(e),
                                                     e["type"] == "done" and done.set())
        biased = Seq(prompt, SamplingParams(max_tokens=1, logit_bias={first: -100.0}), sink)
        assert answer(biased, events, done) != first
        gone = id(biased)
        events, done = [], threading.Event()
        sink = lambda e, events=events, done=done: (events.append(e),
                                                     e["type"] == "done" and done.set())
        params = SamplingParams(max_tokens=1)
        del biased  # freed, unless the engine holds it: the next Seq may take its place
        plain = Seq(prompt, params, sink)
        reused += id(plain) == gone
        assert answer(plain, events, done) == first, reused
        del plain


def test_prompt_logprobs_match_full_forward(qwen2_engine):
    ids = qwen2_engine.tokenizer.encode("def add(a, b): return a + b")
    events = run_engine(qwen2_engine, [ids], SamplingParams(max_tokens=0, logprobs=True,
                                                            prompt_logprobs=True,
                                                            top_logprobs=2))[0]
    entries = next(e for e in events if e["type"] == "prompt_logprobs")["entries"]
    assert entries[0] is None and len(entries) == len(ids)
    logits = qwen2_engine.model(mx.array(ids)[None])[0].astype(mx.float32)
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    for t, (token, value, top) in enumerate(entries[1:], start=1):
        assert token == ids[t]
        assert abs(value - logprobs[t - 1, ids[t]].item()) < 1e-3
        assert len(top) == 2 and top[0][1] >= top[1][1]
    assert events[-1]["completion_tokens"] == 0


def test_kv_bits_engine():
    engine = started("demo:qwen2", kv_bits=8)
    try:
        prompts = chat_prompts(engine.tokenizer, 4)
        results = run_engine(engine, prompts, SamplingParams(max_tokens=16))
        assert all(r[-1]["type"] == "done" for r in results)
        assert engine.batching and engine._caches is None  # all left; batch caches freed
        alone = mlx_zoo.generate(engine.model, engine.tokenizer, prompts[0], max_tokens=16,
                                 kv_bits=8)
        assert text_of(results[0])[:10] == alone.text[:10]  # 8-bit: the same start
    finally:
        engine.stop()


def test_cancel_frees_slot(qwen2_engine):
    prompt = chat_prompts(qwen2_engine.tokenizer, 1)[0]
    seen = threading.Event()
    seq = Seq(prompt, SamplingParams(max_tokens=100_000 // 100), lambda e: seen.set())
    qwen2_engine.submit([seq])
    assert seen.wait(TIMEOUT_S)
    qwen2_engine.cancel([seq])
    for _ in range(200):
        if qwen2_engine.stats()["running"] == 0:
            break
        threading.Event().wait(0.05)
    assert qwen2_engine.stats()["running"] == 0


# -- structured output and tool calls ---------------------------------------------------------


def test_json_schema_enforced(qwen2_engine):
    """Greedy and sampled answers under a JSON schema parse and validate (the demo model left to
    itself writes prose)."""
    pytest.importorskip("llguidance")
    from mlx_zoo.serve.protocol import APIError
    from mlx_zoo.serve.structured import processor_factory

    age = {"type": "integer", "minimum": 0, "maximum": 150}  # unbounded: the demo rambles
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                               "age": age},
              "required": ["name", "age"], "additionalProperties": False}
    make = processor_factory({"type": "json_schema", "json_schema": {"schema": schema}},
                             qwen2_engine.tokenizer, qwen2_engine.vocab_size)
    anything = processor_factory({"type": "json_object"}, qwen2_engine.tokenizer,
                                 qwen2_engine.vocab_size)
    prompts = chat_prompts(qwen2_engine.tokenizer, 3)
    results = run_engine(qwen2_engine, prompts, [
        SamplingParams(max_tokens=200, processor_factory=make),
        SamplingParams(max_tokens=200, processor_factory=anything),
        SamplingParams(max_tokens=200, temperature=1.0, seed=1, processor_factory=make)])
    for events in (results[0], results[2]):
        value = json.loads(text_of(events))
        assert set(value) == {"name", "age"} and isinstance(value["age"], int)
        assert events[-1]["finish_reason"] == "stop"
    assert text_of(results[1]).startswith("{")  # json_object: the demo may ramble in a string
    if results[1][-1]["finish_reason"] == "stop":
        assert isinstance(json.loads(text_of(results[1])), dict)
    with pytest.raises(APIError):
        processor_factory({"type": "json_schema", "json_schema": {"schema": {"type": "nonsense"}}},
                          qwen2_engine.tokenizer, qwen2_engine.vocab_size)
    with pytest.raises(APIError):
        processor_factory({"type": "grammar"}, qwen2_engine.tokenizer, qwen2_engine.vocab_size)


def test_tool_call_parser_streaming():
    from mlx_zoo.serve.tools import DEFAULT_PARSER

    stream = DEFAULT_PARSER.stream()
    text = ('Let me look. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}'
            '\n</tool_call>')
    shown = "".join(stream.feed(text[i:i + 3]) for i in range(0, len(text), 3))
    rest, calls = stream.finish()
    assert shown == "Let me look. " and rest == ""
    assert calls[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert calls[0]["type"] == "function" and calls[0]["id"].startswith("call_")
    plain = DEFAULT_PARSER.stream()
    assert plain.feed("a <tool") == "a " and plain.feed("box>") == "<toolbox>"
    assert plain.finish() == ("", [])
