"""Gemma 3's text model (``gemma3_text``, e.g. Gemma 3 270M / 1B) and the text part of its
multimodal checkpoints (``gemma3``: ``text_config`` inside the wrapper config, the language
model's weights beside a vision tower, which is not loaded).

Gemma 2's decoder (:mod:`mlx_gemma.gemma2`) with: an RMSNorm (``1 + weight``) over each query and
key head before RoPE (QK-norm) in place of score soft-capping; five local layers per global one
(``sliding_window_pattern`` 6, or ``layer_types``); RoPE base ``rope_local_base_freq`` (10,000,
unscaled) on the local layers and ``rope_theta`` (1e6) with ``rope_scaling`` on the global ones.

Sources:
  * Gemma 3 Technical Report, https://arxiv.org/abs/2503.19786
  * model cards, e.g. https://huggingface.co/google/gemma-3-270m, https://huggingface.co/google/gemma-3-4b-it
  * transformers' ``models/gemma3/modeling_gemma3.py`` and ``configuration_gemma3.py`` (the
    reference the tests compare against, the defaults, and transformers >= 5's per-layer-type
    ``rope_parameters``: ``{"full_attention": {...}, "sliding_attention": {...}}``)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx

from mlx_zoo import ConfigError
from mlx_zoo.config import (
    QUANTIZATION_CONFIG_KEY,
    QUANTIZATION_KEY,
    PositiveFloat,
    PositiveInt,
    internal_field,
    normalize_config,
)

from .gemma2 import Gemma2Args, Gemma2Model

TEXT_CONFIG = "text_config"
VISION_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
                   "model.multi_modal_projector.")
LANGUAGE_MODEL_PREFIXES = {"language_model.model.": "model.", "model.language_model.": "model.",
                           "language_model.lm_head.": "lm_head."}
"""Where the wrapper's checkpoints keep the text model: published (transformers < 5) and as
transformers >= 5 saves it."""


@dataclass
class Gemma3TextArgs(Gemma2Args):
    """transformers' ``Gemma3TextConfig``: Gemma 2's fields with Gemma 3's defaults, the local
    RoPE base and the window pattern; both config dialects."""

    max_position_embeddings: PositiveInt = 131072
    rope_theta: PositiveFloat = 1_000_000.0  # the global layers'
    rope_local_base_freq: PositiveFloat = 10_000.0  # the local (sliding-window) layers'
    sliding_window_pattern: PositiveInt = 6  # default layer_types: every 6th layer global
    attn_logit_softcapping: PositiveFloat | None = None
    final_logit_softcapping: PositiveFloat | None = None
    use_bidirectional_attention: bool | None = False  # EmbeddingGemma's encoder: not served

    @property
    def global_every(self) -> int:
        return self.sliding_window_pattern

    @classmethod
    def from_dict(cls, config: dict[str, Any], path: Path | str | None = None):
        """transformers >= 5 writes one ``rope_parameters`` section per layer type: read as
        ``rope_theta`` / ``rope_scaling`` (global layers) and ``rope_local_base_freq``."""
        sections = config.get("rope_parameters")
        if isinstance(sections, dict):
            config = {k: v for k, v in config.items() if k != "rope_parameters"}
            config.update(normalize_config(
                {"rope_parameters": sections.get("full_attention") or {}}, path))
            local = sections.get("sliding_attention") or {}
            if "rope_theta" in local:
                config["rope_local_base_freq"] = local["rope_theta"]
        return super().from_dict(config, path)

    def validate(self, path: Any = None) -> None:
        super().validate(path)
        if self.use_bidirectional_attention:
            raise ConfigError(path, "true (EmbeddingGemma's bidirectional encoder); expected "
                              "false: only the causal decoder is served",
                              key="use_bidirectional_attention")


    def decoder_options(self) -> dict[str, Any]:
        """Gemma 2's, with QK-norm and the local layers' own RoPE; ``attn_logit_softcapping``
        is read but not applied (null in every published config; transformers' Gemma 3 leaves
        it out of its attention too)."""
        local_rope = {"base": self.rope_local_base_freq, "scaling": None}
        return {**super().decoder_options(), "qk_norm": True, "softcap": None,
                "per_layer": [{"sliding_window": w, "rope": local_rope if w else True}
                              for w in self.windows()]}


class Gemma3TextModel(Gemma2Model):
    """Gemma 3's text model: Gemma 2's built from :meth:`Gemma3TextArgs.decoder_options`."""


@dataclass
class Gemma3Args(Gemma3TextArgs):
    """``Gemma3Config``: the text model's settings from its ``text_config`` (errors name
    ``text_config.<key>``); the keys around it are kept and written back around it."""

    outer_config: dict[str, Any] | None = internal_field(default=None, repr=False)
    text_model_type: str | None = internal_field(default=None, repr=False)

    @classmethod
    def from_dict(cls, config: dict[str, Any], path: Path | str | None = None):
        text = config.get(TEXT_CONFIG)
        if not isinstance(text, dict):
            raise ConfigError(path, f"expected an object, got {type(text).__name__}",
                              key=TEXT_CONFIG)
        moved = [k for k in (QUANTIZATION_KEY, QUANTIZATION_CONFIG_KEY) if k in config]
        flat = {**text, **{k: config[k] for k in moved}, "model_type": config.get("model_type")}
        try:
            args = super().from_dict(flat, path)
        except ConfigError as error:
            raise error.with_key_prefix(TEXT_CONFIG) from error
        args.outer_config = copy.deepcopy({k: v for k, v in config.items()
                                           if k != TEXT_CONFIG and k not in moved})
        args.text_model_type = text.get("model_type")
        return args

    def to_dict(self) -> dict[str, Any]:
        flat = super().to_dict()
        moved = {k: flat.pop(k) for k in (QUANTIZATION_KEY, QUANTIZATION_CONFIG_KEY) if k in flat}
        model_type = flat.pop("model_type")
        if self.text_model_type is not None:
            flat["model_type"] = self.text_model_type
        return {**copy.deepcopy(self.outer_config or {}), "model_type": model_type,
                TEXT_CONFIG: flat, **moved}


class Gemma3Model(Gemma3TextModel):
    """The text model of a Gemma 3 multimodal checkpoint: the vision tower and projector are
    dropped, the language model's names mapped to the text model's."""

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        kept = {}
        for name, value in weights.items():
            if name.startswith(VISION_PREFIXES):
                continue
            for old, new in LANGUAGE_MODEL_PREFIXES.items():
                if name.startswith(old):
                    name = new + name.removeprefix(old)
                    break
            kept[name] = value
        return super().sanitize(kept)
