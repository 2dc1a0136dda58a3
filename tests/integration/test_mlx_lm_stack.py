"""mlx-zoo models as drop-ins in mlx-lm's generation stack.

Each of mlx-lm's entry points is driven with each demo model (qwen2, hunyuan, llama4) and its
greedy text compared with mlx-zoo's own :func:`mlx_zoo.generate`:

* ``mlx_lm.generate`` / ``mlx_lm.stream_generate`` (the model's own caches through
  ``make_prompt_cache``, mlx-lm's ``KVCache`` handed in as ``prompt_cache``, ``kv_bits``);
* ``mlx_lm.batch_generate`` (its ``BatchGenerator``): prompts of different lengths, right-padded
  prefill, rows joining and leaving (``merge``/``prepare``/``finalize``/``extend``/``filter``/
  ``extract`` on :class:`mlx_zoo.compat.BatchCache`), and with mlx-lm's own ``BatchKVCache``
  (per-row offsets as an ``mx.array``);
* ``mlx_lm.server``, in a subprocess on 127.0.0.1. Its ``ModelProvider`` loads models with
  ``mlx_lm.utils.load``, which picks mlx-lm's own architecture for a ``model_type`` and has no
  hook for another loader. So the wrapper script below subclasses ``ModelProvider`` (``load``
  returns the mlx-zoo model and a ``TokenizerWrapper`` of its tokenizer) and, to make
  ``mlx_lm.server.main`` (which builds ``ModelProvider(args)`` from its own argument parser)
  use it, **replaces the name ``mlx_lm.server.ModelProvider``** in that process -- no code of
  mlx-lm is changed. Requests are sent one at a time and concurrently (batched: all three demo
  layouts are batchable), within a bounded wait; the server is terminated at the end.

All three architectures work with every entry point: llama4's chunked local attention batches
as a ``"chunk"``-mode :class:`~mlx_zoo.compat.BatchCache` (a per-row chunk mask over the
right-aligned rows); the one prompt longer than two chunks checks it across chunk boundaries.
"""

from __future__ import annotations

import json
import sys
import textwrap
import threading
import urllib.error
import urllib.request

import mlx.core as mx
import pytest

import mlx_zoo

mlx_lm = pytest.importorskip("mlx_lm")
from mlx_lm.models import cache as lm_cache  # noqa: E402
from mlx_lm.tokenizer_utils import TokenizerWrapper  # noqa: E402

from mlx_zoo.compat import BatchCache  # noqa: E402

ARCHS = ["qwen2", "hunyuan", "llama4"]
MAX_TOKENS = 24
PROMPTS = [
    "Hello world, tell me",
    "Hi",
    "A much longer prompt that goes on and on about buffers, handlers, loggers and the "
    "strange ways of the standard library, so that it spans more than two attention chunks "
    "of the llama4 demo",
]
LLAMA4_CHUNK = 32  # the demo's attention_chunk_size


@pytest.fixture(scope="module", params=ARCHS)
def demo(request):
    name = request.param
    model, _ = mlx_zoo.load(f"demo:{name}")
    tokenizer = mlx_zoo.load_tokenizer(f"demo:{name}")
    wrapper = TokenizerWrapper(tokenizer.hf, eos_token_ids=tokenizer.eos_token_ids)
    expected = [mlx_zoo.generate(model, tokenizer, p, max_tokens=MAX_TOKENS).text
                for p in PROMPTS]
    return name, model, tokenizer, wrapper, expected


def test_prompts_cross_llama4_chunks(demo):
    _, _, tokenizer, _, _ = demo
    lengths = [len(tokenizer.encode(p)) for p in PROMPTS]
    assert len(set(lengths)) == len(lengths)  # different lengths: right padding in the batch
    assert max(lengths) > 2 * LLAMA4_CHUNK


def test_generate(demo):
    _, model, _, wrapper, expected = demo
    for prompt, text in zip(PROMPTS, expected, strict=True):
        assert mlx_lm.generate(model, wrapper, prompt, max_tokens=MAX_TOKENS) == text


def test_stream_generate(demo):
    _, model, _, wrapper, expected = demo
    pieces = list(mlx_lm.stream_generate(model, wrapper, PROMPTS[2], max_tokens=MAX_TOKENS))
    assert "".join(r.text for r in pieces) == expected[2]


def test_generate_with_mlx_lm_caches(demo):
    """mlx-lm's own KVCache (make_mask with its required options), and kv_bits (our caches'
    ``to_quantized``); llama4's chunked layers need the chunked cache of its make_cache."""
    name, model, _, wrapper, expected = demo
    if name != "llama4":
        cache = [lm_cache.KVCache() for _ in model.make_cache()]
        assert mlx_lm.generate(model, wrapper, PROMPTS[0], max_tokens=MAX_TOKENS,
                               prompt_cache=cache) == expected[0]
    quantized = mlx_lm.generate(model, wrapper, PROMPTS[0], max_tokens=4, kv_bits=8,
                                kv_group_size=32, quantized_kv_start=0)
    assert isinstance(quantized, str)


@pytest.mark.parametrize("options", [
    {},  # one prefill batch, one decode batch
    {"prefill_step_size": 5, "prefill_batch_size": 1, "completion_batch_size": 2},  # rows join
], ids=["one-batch", "joining"])
def test_batch_generate(demo, options):
    _, model, _, wrapper, expected = demo
    prompts = [wrapper.encode(p) for p in PROMPTS]
    out = mlx_lm.batch_generate(model, wrapper, prompts, max_tokens=MAX_TOKENS, **options)
    assert out.texts == expected


def test_batch_generate_with_mlx_lm_batch_cache(demo):
    """mlx-lm's KVCache merges into mlx-lm's BatchKVCache: offsets an mx.array per row."""
    name, model, _, wrapper, expected = demo
    if name == "llama4":
        pytest.skip("llama4's chunked layers take the ChunkedKVCache of its make_cache")
    layers = len(model.make_cache())
    caches = [[lm_cache.KVCache() for _ in range(layers)] for _ in PROMPTS]
    out = mlx_lm.batch_generate(model, wrapper, [wrapper.encode(p) for p in PROMPTS],
                                max_tokens=MAX_TOKENS, prompt_caches=caches)
    assert out.texts == expected


def _last_logits(model, ids, cache):
    return model(mx.array(ids)[None], cache=cache)[0, -1]


def test_batch_cache_operations(demo):
    """merge (caches with history), filter, extend and extract against one sequence at a time:
    the next-token logits agree."""
    _, model, tokenizer, _, _ = demo
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    singles = []
    for ids in prompts:
        cache = mlx_zoo.make_prompt_cache(model)
        model(mx.array(ids[:-1])[None], cache=cache)
        singles.append(cache)
    batch = [singles[0][i].merge([c[i] for c in singles]) for i in range(len(singles[0]))]
    assert all(isinstance(c, BatchCache) for c in batch)
    last = mx.array([[ids[-1]] for ids in prompts])
    batched = model(last, cache=batch)[:, -1]
    for row, (ids, cache) in enumerate(zip(prompts, singles, strict=True)):
        single = _last_logits(model, ids[-1:], cache)
        assert mx.allclose(batched[row], single, atol=1e-4).item(), row
    # rows leave and join; then each row extracted continues on its own
    for c in batch:
        c.filter([2, 0])
    more = [singles[1][i].merge([singles[1][i]]) for i in range(len(batch))]
    for c, m in zip(batch, more, strict=True):
        c.extend(m)
    step = mx.array([[7], [8], [9]])
    batched = model(step, cache=batch)[:, -1]
    for row, source in enumerate([2, 0, 1]):
        single = _last_logits(model, [int(step[row, 0])], singles[source])
        assert mx.allclose(batched[row], single, atol=1e-4).item(), row
    for row, source in enumerate([2, 0, 1]):
        extracted = [c.extract(row) for c in batch]
        assert [type(c) for c in extracted] == [type(c) for c in singles[source]]
        assert mx.allclose(_last_logits(model, [11], extracted),
                           _last_logits(model, [11], singles[source]), atol=1e-4).item()


# -- mlx_lm.server ---------------------------------------------------------------------------

WRAPPER = textwrap.dedent('''
    """mlx_lm.server serving an mlx-zoo model (see tests/integration/test_mlx_lm_stack.py)."""
    import mlx_zoo
    import mlx_lm.server as server
    from mlx_lm.models.cache import make_prompt_cache
    from mlx_lm.tokenizer_utils import TokenizerWrapper


    class ZooModelProvider(server.ModelProvider):
        """Loads --model with mlx_zoo.load (mlx_lm.utils.load would pick mlx-lm's own
        architecture); the rest of the provider's contract as mlx-lm's _load fills it."""

        def load(self, model_path, adapter_path=None, draft_model_path=None):
            if self.model is None:
                ref = self.cli_args.model
                model, _ = mlx_zoo.load(ref)
                tokenizer = mlx_zoo.load_tokenizer(ref)
                self.model = model
                self.tokenizer = TokenizerWrapper(tokenizer.hf,
                                                  eos_token_ids=tokenizer.eos_token_ids)
                self.processor = None
                self.draft_model = None
                self.model_key = (ref, None, None)
                self.is_batchable = all(hasattr(c, "merge") for c in make_prompt_cache(model))
            return self.model, self.tokenizer


    server.ModelProvider = ZooModelProvider  # the name main() builds its provider with
    server.main()
''')


def _post(port: int, body: dict, timeout: float = 120) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(demo, tmp_path_factory, local_server):
    name = demo[0]
    script = tmp_path_factory.mktemp("server") / "zoo_server.py"
    script.write_text(WRAPPER)
    command = [sys.executable, str(script), "--model", f"demo:{name}", "--host", "127.0.0.1",
               "--port", "{port}", "--log-level", "WARNING"]
    with local_server(command, "/v1/models", 120, env={"PYTHONUNBUFFERED": "1"}) as url:
        yield int(url.rsplit(":", 1)[1])


def _completion(port: int, prompt: str, name: str) -> str:
    body = {"model": "default_model", "prompt": prompt, "max_tokens": MAX_TOKENS,
            "temperature": 0.0}
    return _post(port, body)["choices"][0]["text"]


def test_server_one_request_at_a_time(demo, server):
    name, _, _, _, expected = demo
    for prompt, text in zip(PROMPTS, expected, strict=True):
        assert _completion(server, prompt, name) == text


def test_server_concurrent_requests(demo, server):
    """Requests arriving together are decoded in one batch (continuous batching)."""
    name, _, _, _, expected = demo
    results: dict[int, str] = {}

    def ask(i):
        results[i] = _completion(server, PROMPTS[i], name)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert [results.get(i) for i in range(len(PROMPTS))] == expected
