"""From a GGUF architecture to a plugin's model: config.json from the metadata, checkpoint names
from llama.cpp's tensor names, and llama.cpp's row permutation undone.

A plugin says how the GGUF architectures of its families map through the
``register_gguf_architectures`` hook, one :class:`GGUFArchitecture` per ``general.architecture``
value. For a Llama-like family that is one line: the defaults are llama.cpp's keys
(``{arch}.embedding_length``, ``{arch}.attention.head_count``, ...; :func:`decoder_config`) and
its tensor names (``blk.N.attn_q`` ...; :data:`DECODER_TENSORS`, from
``gguf.constants.TENSOR_NAMES``), mapped to Hugging Face's config keys and tensor names, which
the plugin's model already reads::

    @hookimpl
    def register_gguf_architectures():
        return {"qwen2": GGUFArchitecture("qwen2", "qwen2")}

**Permuted rows.** llama.cpp's converter reorders the rows of the query and key projections of
Llama-family models (``LlamaModel.permute`` in ``convert_hf_to_gguf.py``) so that its rotary
kernel rotates adjacent pairs: within each head, the rows ``[x_0 .. x_{d/2-1}, y_0 ..]``
(Hugging Face's rotate-half layout) become ``[x_0, y_0, x_1, y_1, ...]``. Loaded as is, every
query row would be wrong. :func:`unpermute_rows` undoes it on the packed rows, scales and biases
alike (quantization groups run along rows, so whole rows move); ``permuted`` names the
projections, and the key projection uses the key/value head count.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx

from ..errors import GGUFError
from .reader import GGUFFile

BLOCK = re.compile(r"^blk\.(\d+)\.(.+)$")

DECODER_TENSORS: Mapping[str, str] = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
    "blk.{i}.attn_norm": "model.layers.{i}.input_layernorm",
    "blk.{i}.attn_q": "model.layers.{i}.self_attn.q_proj",
    "blk.{i}.attn_k": "model.layers.{i}.self_attn.k_proj",
    "blk.{i}.attn_v": "model.layers.{i}.self_attn.v_proj",
    "blk.{i}.attn_output": "model.layers.{i}.self_attn.o_proj",
    "blk.{i}.attn_q_norm": "model.layers.{i}.self_attn.q_norm",
    "blk.{i}.attn_k_norm": "model.layers.{i}.self_attn.k_norm",
    "blk.{i}.ffn_norm": "model.layers.{i}.post_attention_layernorm",
    "blk.{i}.ffn_gate": "model.layers.{i}.mlp.gate_proj",
    "blk.{i}.ffn_up": "model.layers.{i}.mlp.up_proj",
    "blk.{i}.ffn_down": "model.layers.{i}.mlp.down_proj",
}
"""llama.cpp's names (``gguf.constants.TENSOR_NAMES``, ``{bid}`` written ``{i}``) of the parts a
Llama-like decoder has, and the Hugging Face names mlx-zoo's decoder reads."""


class Metadata:
    """Typed access to one GGUF file's metadata, errors naming the file and key. ``key("x")``
    is ``"{architecture}.x"``."""

    def __init__(self, gguf: GGUFFile):
        self.file, self.values, self.arch = gguf, gguf.metadata, gguf.architecture

    def key(self, name: str) -> str:
        return f"{self.arch}.{name}"

    def _get(self, name: str, kinds: tuple, what: str, default: Any, required: bool) -> Any:
        key = self.key(name)
        if key not in self.values:
            if required:
                raise GGUFError(self.file.path, f"missing ({what} expected)", key)
            return default
        value = self.values[key]
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise GGUFError(self.file.path, f"expected {what}, got {value!r}"[:300], key)
        return value

    def int(self, name: str, default: Any = None, *, required: bool = False) -> Any:
        value = self._get(name, (int,), "a positive integer", default, required)
        if value is not default and value <= 0:
            raise GGUFError(self.file.path, f"expected a positive integer, got {value}",
                            self.key(name))
        return value

    def float(self, name: str, default: Any = None) -> Any:
        value = self._get(name, (int, float), "a finite number", default, False)
        return value if value is default else float(value)

    def str(self, name: str, default: Any = None) -> Any:
        return self._get(name, (str,), "a string", default, False)


def decoder_config(gguf: GGUFFile, model_type: str) -> dict[str, Any]:
    """config.json for a Llama-like decoder from llama.cpp's metadata keys: sizes, heads, norm
    epsilon, RoPE base and scaling (``rope.scaling.type`` linear or yarn), context length, a
    tied head where the file has no ``output`` tensor, vocabulary size from the embedding."""
    meta = Metadata(gguf)
    heads = meta.int("attention.head_count", required=True)
    hidden = meta.int("embedding_length", required=True)
    embed = gguf.tensors.get("token_embd.weight")
    if embed is None:
        raise GGUFError(gguf.path, "no token embedding tensor", "token_embd.weight")
    config = {
        "model_type": model_type,
        "hidden_size": hidden,
        "num_hidden_layers": meta.int("block_count", required=True),
        "intermediate_size": meta.int("feed_forward_length", required=True),
        "num_attention_heads": heads,
        "num_key_value_heads": meta.int("attention.head_count_kv", heads),
        "rms_norm_eps": meta.float("attention.layer_norm_rms_epsilon", 1e-5),
        "rope_theta": meta.float("rope.freq_base", 10000.0),
        "vocab_size": embed.shape[0],
        "tie_word_embeddings": "output.weight" not in gguf.tensors,
    }
    context = meta.int("context_length")
    if context is not None:
        config["max_position_embeddings"] = context
    # always written: families differ in the default they assume (Qwen3's is 128, not
    # hidden / heads), while llama.cpp's is hidden / heads where the file has no key_length
    config["head_dim"] = meta.int("attention.key_length", hidden // heads)
    scaling = _rope_scaling(meta)
    if ROPE_FREQS in gguf.tensors:
        scaling = llama3_scaling(gguf, config)
    if scaling:
        config["rope_scaling"] = scaling
    return config


ROPE_FREQS = "rope_freqs.weight"
LLAMA3_CANDIDATES = [(low, high, context) for context in (8192, 4096, 16384, 32768, 131072)
                     for low, high in ((1.0, 4.0), (1.0, 2.0), (2.0, 4.0), (1.0, 8.0))]
"""Llama 3 RoPE settings tried against a file's ``rope_freqs`` (Meta's own first: 1, 4, 8192)."""


def llama3_scaling(gguf: GGUFFile, config: dict[str, Any]) -> dict[str, Any]:
    """Llama 3.1's RoPE scaling (``rope_type`` llama3) from the ``rope_freqs`` tensor llama.cpp
    writes in its place: one divisor per frequency, ``factor`` for long wavelengths, 1 for
    short ones, a blend between (:class:`mlx_zoo.rope.Llama3RoPE`). The metadata keeps only the
    divisors, so the settings are recovered: ``factor`` is the largest divisor, the band edges
    and original context are the first of :data:`LLAMA3_CANDIDATES` that reproduce every
    divisor (to 1e-3); none doing so is an error naming the tensor."""
    from ..rope import Llama3RoPE, default_periods
    from .tensors import read_tensor

    freqs = read_tensor(gguf.tensors[ROPE_FREQS])
    dims = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    if not isinstance(freqs, mx.array) or freqs.shape != (dims // 2,):
        raise GGUFError(gguf.path, f"expected {dims // 2} float divisors (head_dim / 2)",
                        ROPE_FREQS)
    freqs = freqs.astype(mx.float32)
    base = config["rope_theta"]
    wanted = default_periods(dims, base) * freqs
    factor = float(mx.max(freqs).item())
    for low, high, context in LLAMA3_CANDIDATES:
        scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low,
                   "high_freq_factor": high, "original_max_position_embeddings": context}
        rope = Llama3RoPE(dims, base=base, scaling=scaling)
        if mx.allclose(rope.periods(), wanted, rtol=1e-3).item():
            return scaling
    raise GGUFError(gguf.path, "these per-frequency RoPE divisors match no Llama 3 scaling "
                    "(factor, low/high frequency factors, original context) mlx-zoo knows",
                    ROPE_FREQS)


def _rope_scaling(meta: Metadata) -> dict[str, Any] | None:
    kind = meta.str("rope.scaling.type", "none")
    if kind == "none":
        return None
    if kind not in ("linear", "yarn"):
        raise GGUFError(meta.file.path, f"RoPE scaling {kind!r} is not mapped (linear, yarn)",
                        meta.key("rope.scaling.type"))
    scaling: dict[str, Any] = {"rope_type": kind,
                               "factor": meta.float("rope.scaling.factor", 1.0)}
    original = meta.int("rope.scaling.original_context_length")
    if original is not None:
        scaling["original_max_position_embeddings"] = original
    return scaling


@dataclass(frozen=True)
class GGUFArchitecture:
    """How one GGUF architecture (``general.architecture``) loads as one of a plugin's
    model_types.

    ``config(gguf_file, model_type)`` returns the config.json dict (default
    :func:`decoder_config`); ``tensors`` maps llama.cpp's tensor stems (``blk.{i}.attn_q``) to
    the checkpoint names the model's ``sanitize`` / parameters read (default
    :data:`DECODER_TENSORS`); ``permuted`` maps the stems whose rows llama.cpp permuted to the
    config key holding their head count (:data:`LLAMA_PERMUTED` for the Llama family);
    ``ignored`` lists stems the config already consumed (``rope_freqs``, read by
    :func:`llama3_scaling`), dropped from the weights; ``shifted`` maps stems whose values
    llama.cpp's converter offset by a constant to that constant, subtracted on reading (Gemma's
    RMSNorm weights, stored as ``1 + w`` where the checkpoint holds ``w``: :data:`GEMMA_SHIFTED`).
    """

    architecture: str
    model_type: str
    config: Callable[[GGUFFile, str], dict[str, Any]] = decoder_config
    tensors: Mapping[str, str] = field(default_factory=lambda: dict(DECODER_TENSORS))
    permuted: Mapping[str, str] = field(default_factory=dict)
    ignored: tuple[str, ...] = ("rope_freqs",)
    shifted: Mapping[str, float] = field(default_factory=dict)


LLAMA_PERMUTED: Mapping[str, str] = {"blk.{i}.attn_q": "num_attention_heads",
                                     "blk.{i}.attn_k": "num_key_value_heads"}
"""The stems llama.cpp's ``LlamaModel`` permutes (query and key projections), each with the
config key of its head count."""


GEMMA_NORMS = ("output_norm", "blk.{i}.attn_norm", "blk.{i}.post_attention_norm",
               "blk.{i}.ffn_norm", "blk.{i}.post_ffw_norm", "blk.{i}.attn_q_norm",
               "blk.{i}.attn_k_norm")
GEMMA_SHIFTED: Mapping[str, float] = {stem: 1.0 for stem in GEMMA_NORMS}
"""The RMSNorm weights llama.cpp's ``GemmaModel``/``Gemma2Model``/``Gemma3Model`` store plus one
(``name.endswith("norm.weight")``: its kernel scales by the weight, Gemma's by ``1 + weight``)."""


def split_name(name: str) -> tuple[str, str, str | None]:
    """``blk.3.attn_q.weight`` -> (``blk.{i}.attn_q``, ``weight``, ``"3"``)."""
    stem, _, suffix = name.rpartition(".")
    match = BLOCK.match(stem)
    if match:
        return f"blk.{{i}}.{match.group(2)}", suffix, match.group(1)
    return stem, suffix, None


def unpermute_rows(array: mx.array, heads: int) -> mx.array:
    """Undo llama.cpp's ``permute``: within each of ``heads`` heads, rows ``[x0, y0, x1, y1,
    ...]`` back to ``[x0, x1, ..., y0, y1, ...]``. Any trailing dimensions move with their row
    (packed quantized words, scales, biases)."""
    rows = array.shape[0]
    if rows % (2 * heads):
        raise ValueError(f"{rows} rows do not split into {heads} heads of pairs")
    rest = array.shape[1:]
    split = array.reshape(heads, rows // heads // 2, 2, *rest)
    return mx.swapaxes(split, 1, 2).reshape(array.shape)
