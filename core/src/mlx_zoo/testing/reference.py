"""References a plugin's logits are checked against: a transformers class, or any callable."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Reference = Callable[[dict, Mapping[str, Any], Any], Any]
"""``reference(config, weights, ids) -> logits``: config.json as a dict, the checkpoint's
weights (names -> numpy arrays), token ids ``(batch, length)`` (numpy); logits
``(batch, length, vocab)``."""


def transformers_model(class_name: str, config: Mapping[str, Any],
                       weights: Mapping[str, Any] | None = None):
    """transformers' ``class_name`` (e.g. ``"LlamaForCausalLM"``) built from ``config`` (a
    config.json dict, or a transformers config object) in float32 eval mode, with ``weights``
    loaded. Every weight must be used and every parameter given (a tied ``lm_head`` excepted)."""
    import numpy as np
    import torch
    import transformers

    cls = getattr(transformers, class_name)
    if isinstance(config, Mapping):
        fields = {k: v for k, v in config.items() if k not in ("model_type", "quantization")}
        config = cls.config_class(**fields)
    torch.manual_seed(0)
    model = cls(config).float().eval()
    if weights is not None:
        state = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in weights.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if getattr(config, "tie_word_embeddings", False):
            model.tie_weights()
            missing = [k for k in missing if k != "lm_head.weight"]
        if missing or unexpected:
            raise AssertionError(f"{class_name} does not take these weights: missing {missing}, "
                                 f"unexpected {unexpected}")
    return model


def torch_logits(model: Any, ids: Any):
    """Float32 numpy logits of a transformers causal LM for numpy token ids."""
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(ids).long()).logits.float().numpy()


def transformers_reference(class_name: str) -> Reference:
    """A :data:`Reference` computing logits with transformers' ``class_name``."""

    def reference(config: dict, weights: Mapping[str, Any], ids: Any):
        return torch_logits(transformers_model(class_name, config, weights), ids)

    reference.__name__ = f"transformers.{class_name}"
    return reference


def sharpen_torch_model(model: Any, *, std: float | None = None, seed: int = 0) -> Any:
    """:func:`~mlx_zoo.testing.sharpen_weights` for a torch model, in place: every parameter
    ~ N(0, ``std``) (default :data:`~mlx_zoo.testing.WEIGHT_STD`), 1-D ``norm`` weights
    ~ 1 + N(0, ``std`` / 4), drawn from a torch generator seeded by ``seed`` in parameter order.
    For references built in torch and saved as the checkpoint under test (``save_pretrained``):
    their attention is sharp, so a wrong RoPE or mask shows. Returns ``model``."""
    import torch

    from .helpers import WEIGHT_STD

    std = WEIGHT_STD if std is None else std
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
            parameter.copy_(1.0 + noise * std / 4 if "norm" in name and parameter.ndim == 1
                            else noise * std)
    return model


def stacked_experts_reference(class_name: str) -> Reference:
    """A :data:`Reference` computing logits with transformers' mixture-of-experts
    ``class_name`` from a checkpoint whose experts are stacked as the core's
    :class:`~mlx_zoo.decoder.SparseMoE` keeps them
    (``{prefix}.switch_mlp.{gate,up,down}_proj.weight``, ``(experts, out, in)``): they go
    into transformers' in-memory layout, ``{prefix}.experts.gate_up_proj`` (each expert's
    gate rows, then its up rows) and ``{prefix}.experts.down_proj``."""
    import numpy as np

    def reference(config: dict, weights: Mapping[str, Any], ids: Any):
        converted = {}
        for name, value in weights.items():
            prefix, found, proj = name.partition(".switch_mlp.")
            if not found:
                converted[name] = value
            elif proj == "down_proj.weight":
                converted[f"{prefix}.experts.down_proj"] = value
            elif proj == "gate_proj.weight":
                up = weights[f"{prefix}.switch_mlp.up_proj.weight"]
                converted[f"{prefix}.experts.gate_up_proj"] = np.concatenate([value, up], axis=1)
        return torch_logits(transformers_model(class_name, config, converted), ids)

    reference.__name__ = f"transformers.{class_name} (stacked experts)"
    return reference
