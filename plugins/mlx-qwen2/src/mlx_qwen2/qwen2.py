"""Qwen2 / Qwen2.5: a decoder-only transformer with grouped-query attention (q/k/v carry a
bias), SwiGLU MLPs, RMSNorm before each block, and rotary position embeddings.

Sources:
  * Qwen2 Technical Report, https://arxiv.org/abs/2407.10671
  * Qwen2.5 Technical Report, https://arxiv.org/abs/2412.15115
  * model cards, e.g. https://huggingface.co/Qwen/Qwen2.5-0.5B and
    https://huggingface.co/Qwen/Qwen2.5-7B-Instruct (long-context yarn ``rope_scaling``)
  * transformers' ``models/qwen2/modeling_qwen2.py`` (the reference the tests compare against)

Data flow: token ids -> embedding -> N x [x + attn(norm(x)); x + mlp(norm(x))] -> norm -> logits
(through ``lm_head``, or the transposed embedding when ``tie_word_embeddings``). The layers are
the core's Llama-like decoder (:mod:`mlx_zoo.decoder`); what is Qwen2's own is stated here: the
bias on q/k/v (not on the output projection) and the defaults of transformers' ``Qwen2Config``.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlx_zoo.config import PositiveInt
from mlx_zoo.decoder import DecoderArgs, DecoderLM


@dataclass
class ModelArgs(DecoderArgs):
    """Qwen2's config.json: the fields of :class:`~mlx_zoo.decoder.DecoderArgs`, with
    ``Qwen2Config``'s defaults for the keys a file leaves out (as transformers reads it: the
    published checkpoints state ``rope_theta`` -- 1e6 -- and ``tie_word_embeddings``, but a file
    without them is untied with theta 10,000, so an ``lm_head.weight`` is never dropped).
    ``use_sliding_window`` (false in every published checkpoint) is not read: attention is
    always full."""

    max_position_embeddings: PositiveInt = 32768


class Model(DecoderLM):
    """Qwen2 language model: the shared decoder with biased q/k/v projections."""

    def __init__(self, args: ModelArgs):
        super().__init__(args, qkv_bias=True)
