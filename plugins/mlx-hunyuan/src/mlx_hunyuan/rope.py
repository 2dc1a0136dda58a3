"""HunYuan's NTK-alpha RoPE, added to the core's RoPE registry under :data:`NTK_ALPHA`.

HunYuan checkpoints stretch their context with "NTK-aware" scaling of the RoPE base by a fixed
``alpha`` (bloc97, https://www.reddit.com/r/LocalLLaMA/comments/14lz7j5/, the fixed-alpha form
before the "dynamic" one). With ``d`` the rotary dimension (head_dim) and ``theta`` the config's
``rope_theta``:

    theta' = theta * alpha ** (d / (d - 2))
    inv_freq_i = 1 / theta' ** (2i / d),   i = 0 .. d/2 - 1

The exponent ``d / (d - 2)`` makes the *lowest* frequency (i = d/2 - 1) exactly ``alpha`` times
slower while the highest (i = 0) is unchanged: high frequencies keep resolving nearby tokens,
low ones stretch over the longer context. Unlike dynamic NTK (the core's ``"dynamic"`` variant,
``theta' = theta * (factor * n / L - (factor - 1)) ** (d / (d - 2))`` once the sequence length
``n`` exceeds ``L``), the base does not depend on the sequence length: the frequencies are fixed.

Sources: Tencent's modeling code (``HunYuanDynamicNTKAlphaRotaryEmbedding`` in
https://huggingface.co/tencent/Hunyuan-A13B-Instruct and Tencent-Hunyuan-Large's
``models/modeling_hunyuan.py``) and transformers' ``compute_ntk_alpha_rope_parameters``
(models/hunyuan_v1_dense).

**How a config selects it.** HunYuan configs label this scaling ``{"type": "dynamic", "alpha":
1000.0, "factor": 1.0, ...}`` -- the same ``"dynamic"`` key as transformers' factor-based dynamic
NTK. Tencent's code and transformers both pick NTK-alpha when ``alpha`` is set (truthy) and fall
back to factor-based dynamic NTK otherwise; :func:`rope_type_for` makes the same choice and the
models pass its answer to :func:`mlx_zoo.get_rope` as ``rope_type``. config.json itself is left as
published (transformers and mlx-lm read the saved file back), and the registry key is the one
transformers gives this variant internally, ``"ntk_alpha"``, so a config that already says
``"rope_type": "ntk_alpha"`` works too.
"""

from __future__ import annotations

from typing import ClassVar

import mlx.core as mx

from mlx_zoo import PositiveFloat, RoPE, RopeScaling

__all__ = ["DYNAMIC", "NTK_ALPHA", "NTKAlphaRoPE", "rope_type_for"]

NTK_ALPHA = "ntk_alpha"
"""Registry key of :class:`NTKAlphaRoPE` (transformers' internal name for it)."""

DYNAMIC = "dynamic"
"""The ``rope_type`` HunYuan configs write for both NTK-alpha and factor-based dynamic NTK."""


class NTKAlphaRoPE(RoPE):
    """RoPE with the base stretched by a fixed ``alpha``: ``theta * alpha ** (d / (d - 2))``
    (see the module docstring). Reads ``rope_scaling["alpha"]``; ``factor`` is ignored, as in
    Tencent's code and transformers. ``alpha`` must be positive and finite (a negative one would
    give a negative base: NaN frequencies), the rotary dimension at least 4 (the exponent)."""

    required: ClassVar[tuple[str, ...]] = ("alpha",)
    parameter_types: ClassVar[dict[str, object]] = {"alpha": PositiveFloat}
    min_dims: ClassVar[int] = 4  # the exponent d / (d - 2)

    def periods(self) -> mx.array:
        alpha = float(self.require("alpha"))
        stretched_base = self.base * alpha ** (self.dims / (self.dims - 2))
        return stretched_base ** (mx.arange(0, self.dims, 2, dtype=mx.float32) / self.dims)


def rope_type_for(scaling: RopeScaling | None) -> str | None:
    """The registry key for a HunYuan ``rope_scaling``: :data:`NTK_ALPHA` where a ``"dynamic"``
    scaling carries an ``alpha``; otherwise ``None`` (the scaling's own ``rope_type`` applies:
    plain, ``linear``, or factor-based ``dynamic``).

    Any ``alpha`` but null selects NTK-alpha, whose check then refuses ``alpha <= 0``. (Tencent's
    code and transformers test it for truth, so that ``alpha: 0`` silently falls back to
    factor-based dynamic NTK -- a different model; here it is a :class:`~mlx_zoo.ConfigError`.)"""
    if scaling and scaling.get("rope_type") == DYNAMIC and scaling.get("alpha") is not None:
        return NTK_ALPHA
    return None
