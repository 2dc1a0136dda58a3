"""Interop with mlx-lm's generation stack: the batch cache its ``BatchGenerator`` drives.

mlx-lm's ``batch_generate``, ``BatchGenerator`` and ``mlx_lm.server`` make one cache list per
sequence with the model's ``make_cache`` (mlx-zoo's caches), then call, for each layer,
``caches[0].merge([...])`` and, on the result, ``prepare``, ``finalize``, ``filter``, ``extend``
and ``extract`` (mlx-lm's protocol, ``mlx_lm.models.cache``). mlx-zoo's
:class:`~mlx_zoo.KVCache`, :class:`~mlx_zoo.RotatingKVCache` and :class:`~mlx_zoo.ChunkedKVCache`
merge into a :class:`BatchCache`: the one batched cache of mlx-zoo
(:mod:`mlx_zoo.batch_cache`), which ``mlx-zoo serve`` batches with too. Quantized caches have no
``merge`` (mlx-lm's server serves them one request at a time).
"""

from __future__ import annotations

from .batch_cache import BatchCache

__all__ = ["BatchCache"]
