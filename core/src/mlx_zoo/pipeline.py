"""Pipeline parallelism: a model's layers split into contiguous stages, one per rank of a
distributed group, with one activation transfer per stage boundary per forward pass -- and the
checks of ``load(..., parallel=...)``, which lets each rank read only its own part of a checkpoint
(:func:`mlx_zoo.loading.load_distributed`).

Layout (``N`` ranks)::

    rank 0        embed_tokens -> layers[0:a]     --send h-->
    rank 1        recv h       -> layers[a:b]     --send h-->   ...
    rank N-1      recv h       -> layers[z:L] -> norm -> head (lm_head, or the tied embedding)

* **Balancing**: stages are contiguous and chosen to minimise the largest rank's bytes, counting
  the embedding on rank 0 and the final norm and head on rank N-1 (:func:`plan_stages`, an exact
  dynamic programme over the allowed boundaries).
* **Tied embeddings**: the head *is* the embedding matrix; rank N-1 keeps its own copy of it (as
  its head, ``as_linear``), rank 0 keeps it as the embedding. Costs one ``vocab x hidden`` matrix
  more than an ideal split; the balancer counts it.
* **Transfer**: ``mx.distributed.send`` / ``recv`` (the ring, MPI and JACCL backends): a
  point-to-point ``(B, L, hidden)`` activation, rather than an ``all_sum`` that every rank would
  join (measured on the ring backend: docs/benchmarks.md, "Parallel"). MLX's NCCL backend
  (CUDA) has no send/recv (MLX 0.32: ``[nccl] Send not supported in NCCL backend``), so on a
  CUDA device each stage boundary is an ``all_sum`` instead (``transfer="all_sum"``, the
  default there): the sending rank adds its activation, every other rank zeros, and every rank
  joins every boundary in order (a rank's later boundaries depend on its earlier ones, so the
  collectives line up); ``MLX_ZOO_PIPELINE_TRANSFER=send|all_sum`` overrides the choice.
* **Output on every rank**: the decode loop of :func:`mlx_zoo.generate` calls ``model(ids,
  cache)`` on every rank and samples from the result, and every rank must feed the *same* next
  token. With ``broadcast="logits"`` (default: a drop-in model) rank N-1's logits are broadcast
  with one ``all_sum`` (the other ranks add zeros), so every rank samples from the same logits;
  MLX's random state is made equal across ranks when the pipeline is built, so temperature
  sampling stays in step too. With ``broadcast="token"`` no logits travel: ranks other than the
  last return zeros, and the sampler wrapped by :meth:`PipelineLM.sampler` broadcasts the id
  rank N-1 drew (one ``all_sum`` of one int32) -- what ``mlx-zoo generate --parallel pipeline``
  uses. Logprobs are then real on rank N-1 only.
* **Caches**: each rank's ``make_cache`` covers its own layers only. A rank's caches are tied
  (``mx.depends``) to its outgoing send, so evaluating them -- all the prefill of
  :func:`mlx_zoo.generate_step` evaluates -- also performs the send the next rank waits for.

Which models: any :class:`~mlx_zoo.CausalLM` whose backbone (``model.model``) has
``embed_tokens``, ``layers`` and ``norm`` and runs ``norm(layers(embed_tokens(inputs)))``: the
backbone's own forward runs on each rank with its layer list cut to the rank's slice and the
missing ends replaced by the identity, so its masks, offsets and cache handling are its own. A
backbone with per-layer bookkeeping besides ``layers`` (cache slots, per-layer mask kinds)
implements :class:`~mlx_zoo.hookspecs.PipelineStages`; without it such a backbone is refused
with a :class:`~mlx_zoo.ShardingError` rather than run wrongly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .errors import ShardingError
from .hookspecs import PipelineStages
from .layers import guard_token_ids

PARALLEL_MODES = ("pipeline", "tensor")
BROADCAST_MODES = ("logits", "token")
TRANSFER_MODES = ("send", "all_sum")
TRANSFER_ENV = "MLX_ZOO_PIPELINE_TRANSFER"
"""``send`` or ``all_sum``: how stage boundaries move activations (default:
:func:`default_transfer`)."""


def default_transfer() -> str:
    """``all_sum`` on a CUDA device (MLX's NCCL backend has no send/recv), else ``send``;
    :data:`TRANSFER_ENV` overrides."""
    import os

    chosen = os.environ.get(TRANSFER_ENV)
    if chosen:
        if chosen not in TRANSFER_MODES:
            raise ValueError(f"{TRANSFER_ENV} must be one of {TRANSFER_MODES}, got {chosen!r}")
        return chosen
    on_cuda = mx.default_device() == mx.gpu and mx.cuda.is_available()
    return "all_sum" if on_cuda else "send"


def _nbytes(module: Any) -> int:
    """Bytes of a module's parameters (shapes only: lazy arrays are not evaluated)."""
    if module is None:
        return 0
    return sum(v.nbytes for _, v in tree_flatten(module.parameters()))


def plan_stages(layer_bytes: Sequence[int], ranks: int, *, first_extra: int = 0,
                last_extra: int = 0, boundaries: Sequence[int] | None = None
                ) -> list[tuple[int, int]]:
    """Split ``len(layer_bytes)`` layers into ``ranks`` contiguous, non-empty stages
    ``[(start, stop), ...]`` minimising the largest stage's bytes, stage 0 also holding
    ``first_extra`` bytes (the embedding) and the last ``last_extra`` (norm and head).
    ``boundaries``: the layer indices a stage may start at (default: any). Ties go to the
    split with the earliest boundaries. :class:`ShardingError` when it cannot be done."""
    n = len(layer_bytes)
    allowed = sorted({b for b in (range(1, n) if boundaries is None else boundaries)
                      if 0 < b < n})
    if ranks < 1:
        raise ShardingError(f"a pipeline needs at least 1 stage, got {ranks}")
    if ranks > len(allowed) + 1:
        what = "layers" if boundaries is None else "places where the layers may be split"
        raise ShardingError(
            f"cannot split {n} layers into {ranks} pipeline stages: the model has "
            f"{len(allowed) + 1} {'layers' if what == 'layers' else 'possible stages'} "
            f"(use at most {len(allowed) + 1} processes, or --parallel tensor)")
    prefix = [0]
    for b in layer_bytes:
        prefix.append(prefix[-1] + int(b))
    cuts = [0, *allowed, n]  # candidate stage starts/ends

    def cost(i: int, j: int, stage: int) -> int:
        c = prefix[cuts[j]] - prefix[cuts[i]]
        return c + (first_extra if stage == 0 else 0) + (last_extra if stage == ranks - 1 else 0)

    # best[s][j]: the smallest max-stage bytes of s + 1 stages covering cuts[0]..cuts[j]
    inf = float("inf")
    best = [[inf] * len(cuts) for _ in range(ranks)]
    back = [[0] * len(cuts) for _ in range(ranks)]
    for j in range(1, len(cuts)):
        best[0][j] = cost(0, j, 0)
    for s in range(1, ranks):
        for j in range(s + 1, len(cuts)):
            for i in range(s, j):
                value = max(best[s - 1][i], cost(i, j, s))
                if value < best[s][j]:
                    best[s][j], back[s][j] = value, i
    stages, j = [], len(cuts) - 1
    for s in range(ranks - 1, 0, -1):
        i = back[s][j]
        stages.append((cuts[i], cuts[j]))
        j = i
    stages.append((0, cuts[j]))
    return stages[::-1]


class _Identity(nn.Module):
    """Stands in for the ends of the backbone a rank does not hold."""

    def __call__(self, x: mx.array) -> mx.array:
        return x


def _per_layer_lists(owner: Any, n: int) -> list[str]:
    """Names of ``owner``'s attributes, besides ``layers``, that look like per-layer lists."""
    found = []
    items = dict(vars(owner))
    if isinstance(owner, dict):
        items.update(owner)
    for name, value in items.items():
        if name != "layers" and isinstance(value, (list, tuple)) and len(value) == n:
            found.append(name)
    return found


def _check_pipelinable(model: nn.Module) -> None:
    backbone = model.get("model") if isinstance(model, dict) else None
    missing = [a for a in ("embed_tokens", "layers", "norm")
               if backbone is None or a not in backbone and not hasattr(backbone, a)]
    if missing:
        raise ShardingError(
            f"{type(model).__name__} cannot run as a pipeline: its backbone (model.model) lacks "
            f"{', '.join(missing)} (needed: embed_tokens, layers, norm)")
    if not isinstance(model, PipelineStages):
        extra = (_per_layer_lists(backbone, len(backbone.layers))
                 + _per_layer_lists(model, len(backbone.layers)))
        if extra:
            raise ShardingError(
                f"{type(model).__name__} keeps per-layer state besides its layers "
                f"({', '.join(sorted(set(extra)))}): it cannot be cut into pipeline stages "
                "generically; the plugin must implement mlx_zoo.hookspecs.PipelineStages")


def stage_plan(model: nn.Module, ranks: int) -> list[tuple[int, int]]:
    """:func:`plan_stages` for ``model``: bytes per layer, the embedding on the first stage, the
    final norm and the head (the embedding again when tied) on the last."""
    _check_pipelinable(model)
    backbone = model.model
    layers = backbone.layers
    embed = _nbytes(backbone.embed_tokens)
    head = _nbytes(model["lm_head"]) if "lm_head" in model else embed
    boundaries = model.pipeline_boundaries() if isinstance(model, PipelineStages) else None
    return plan_stages([_nbytes(layer) for layer in layers], ranks, first_extra=embed,
                       last_extra=head + _nbytes(backbone.norm), boundaries=boundaries)


def _activation_dtype(embed: nn.Module) -> mx.Dtype:
    """The dtype of the hidden states: the embedding's (the scales' when it is quantized)."""
    return (embed["scales"] if "scales" in embed else embed["weight"]).dtype


SHARE_CPU_ENV = "MLX_ZOO_SHARE_CPUS"
"""``0`` turns :func:`share_host_cpus` off (it runs when a parallel model is loaded)."""


def _local_ranks(group: mx.distributed.Group) -> tuple[int, int] | None:
    """``(index among the ranks on this host, ranks on this host)`` from the ring backend's
    ``MLX_HOSTFILE`` (a JSON list of ``ip:port`` lists per rank, as ``mlx.launch`` writes it);
    None when there is no such file or it does not list this rank."""
    import json
    import os

    try:
        with open(os.environ["MLX_HOSTFILE"]) as f:
            hosts = [{entry.rsplit(":", 1)[0] for entry in rank} for rank in json.load(f)]
    except (KeyError, OSError, ValueError, TypeError, AttributeError):
        return None
    rank = group.rank()
    if len(hosts) != group.size() or not hosts[rank]:
        return None
    mine = hosts[rank]
    local = [r for r, ips in enumerate(hosts) if ips & mine]
    return local.index(rank), len(local)


def share_host_cpus(group: mx.distributed.Group) -> dict | None:
    """Give each of the ranks that share a host's CPU its own cores, on MLX's CPU device: the
    fast BLAS gets ``cores // local ranks`` threads (unless ``OPENBLAS_NUM_THREADS`` is set)
    and every thread of this process is pinned to this rank's cores (unless the affinity was
    already narrowed). Without it, each rank's BLAS starts a thread per core and MLX's ring
    backend busy-polls its sockets while a rank waits, so ranks on one host oversubscribe the
    cores: on 2 cores, 2 ranks decoded 4-20x slower than with this (docs/benchmarks.md,
    "Parallel"). Returns what it did (None: nothing). :data:`SHARE_CPU_ENV` ``=0`` skips it."""
    import os

    from .blas import set_blas_threads

    if os.environ.get(SHARE_CPU_ENV) == "0" or mx.default_device() != mx.cpu:
        return None
    local = _local_ranks(group)
    if local is None or local[1] < 2:
        return None
    index, count = local
    cores = sorted(os.sched_getaffinity(0))
    done: dict = {"local_rank": index, "local_ranks": count}
    per = max(1, len(cores) // count)
    if "OPENBLAS_NUM_THREADS" not in os.environ and set_blas_threads(per):
        done["blas_threads"] = per
    if len(cores) == os.cpu_count() and len(cores) >= count:
        start = (index * len(cores)) // count
        mine = set(cores[start:start + per])
        for tid in os.listdir("/proc/self/task"):  # every thread: BLAS pool, ring sockets
            try:
                os.sched_setaffinity(int(tid), mine)
            except OSError:
                pass
        done["cores"] = sorted(mine)
    return done


def same_random_state(group: mx.distributed.Group) -> None:
    """Seed MLX's random state on every rank with rank 0's draw: ranks that sample from the
    same logits then draw the same token."""
    mine = mx.random.randint(0, 2**31 - 1, (1,), dtype=mx.int32)
    seed = mx.distributed.all_sum(mine if group.rank() == 0 else mx.zeros_like(mine), group=group)
    mx.random.seed(int(seed.item()))


class PipelineLM(nn.Module):
    """A :class:`~mlx_zoo.CausalLM` run as one stage of a pipeline over ``group`` (built by
    :func:`pipeline`). Called like the model -- ``model(ids, cache)`` gives ``(B, L, vocab)``
    logits on every rank (see the module docstring for ``broadcast``); ``make_cache`` gives the
    caches of this rank's layers; ``args``, ``model_type``, ``vocab_size`` are the model's."""

    def __init__(self, model: nn.Module, group: mx.distributed.Group,
                 stages: list[tuple[int, int]], broadcast: str = "logits",
                 transfer: str | None = None):
        super().__init__()
        if broadcast not in BROADCAST_MODES:
            raise ValueError(f"broadcast must be one of {BROADCAST_MODES}, got {broadcast!r}")
        transfer = transfer or default_transfer()
        if transfer not in TRANSFER_MODES:
            raise ValueError(f"transfer must be one of {TRANSFER_MODES}, got {transfer!r}")
        rank, size = group.rank(), group.size()
        self.group, self.rank, self.size = group, rank, size
        self.stages, self.broadcast, self.transfer = list(stages), broadcast, transfer
        self.args, self.model_type = model.args, getattr(model, "model_type", None)
        backbone = model.model
        embed = backbone.embed_tokens
        self._vocab = int(embed["weight"].shape[0]) if "weight" in embed else model.args.vocab_size
        self._hidden = int(model.args.hidden_size)
        self._dtype = _activation_dtype(embed)
        start, stop = stages[rank]
        if isinstance(model, PipelineStages):
            model.keep_layers(start, stop)
        else:
            backbone.layers = backbone.layers[start:stop]
        self.first_layer = start
        is_last = rank == size - 1
        if is_last:
            head = model["lm_head"] if "lm_head" in model else embed
            self.head_is_embedding = "lm_head" not in model
            self.head = head
        if "lm_head" in model:
            model.pop("lm_head")
        if rank != 0:
            backbone.embed_tokens = _Identity()
        if not is_last:
            backbone.norm = _Identity()
        self.lm = model
        same_random_state(group)

    # -- what generation reads -----------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._vocab

    @property
    def layers(self) -> list:
        """This rank's layers."""
        return self.lm.model.layers

    @property
    def is_last(self) -> bool:
        return self.rank == self.size - 1

    def make_cache(self) -> list:
        """The caches of this rank's layers (the model's own ``make_cache`` over its slice)."""
        from .cache import make_prompt_cache

        return make_prompt_cache(self.lm)

    # -- the forward pass ----------------------------------------------------------------------

    def __call__(self, inputs: mx.array, cache: list | None = None) -> mx.array:
        inputs, invalid = guard_token_ids(inputs, self._vocab)
        batch, length = inputs.shape[:2]
        group, rank = self.group, self.rank
        if self.transfer == "all_sum":
            return self._finish(*self._forward_all_sum(inputs, cache), invalid)
        if rank == 0:
            x = inputs
        else:
            x = mx.distributed.recv((batch, length, self._hidden), self._dtype, rank - 1,
                                    group=group)
        h = self.lm.model(x, cache)
        sent = None
        if not self.is_last:
            sent = mx.distributed.send(h.astype(self._dtype), rank + 1, group=group)
            _tie_caches(cache, sent)
        return self._finish(h, sent, invalid)

    def _forward_all_sum(self, inputs: mx.array, cache: list | None
                         ) -> tuple[mx.array | None, mx.array | None]:
        """Every stage boundary ``b`` (rank ``b`` to ``b + 1``) as one ``all_sum`` that every
        rank joins, in order: rank ``b`` adds its activation, the others zeros (each depending
        on the rank's previous boundary, so no rank reorders them). Returns ``(h, last)``: this
        rank's stage output and, on the ranks before the last, the last boundary's result,
        which the rank's logits and caches are tied to (evaluating either joins every
        boundary; the last rank's output depends on them all through its input)."""
        batch, length = inputs.shape[:2]
        shape = (batch, length, self._hidden)
        x = inputs if self.rank == 0 else None
        h, prev = None, None
        for boundary in range(self.size - 1):
            if boundary == self.rank:  # this rank's stage, then its activation goes out
                h = self.lm.model(x, cache)
                prev = mx.distributed.all_sum(h.astype(self._dtype), group=self.group)
                continue
            zeros = mx.zeros(shape, self._dtype)
            if prev is not None:
                zeros = mx.depends(zeros, prev)
            prev = mx.distributed.all_sum(zeros, group=self.group)
            if boundary == self.rank - 1:
                x = prev
        if self.is_last:
            return self.lm.model(x, cache), None
        _tie_caches(cache, prev)
        return h, prev

    def _finish(self, h: mx.array, sent: mx.array | None, invalid: mx.array | None
                ) -> mx.array:
        """Logits from this rank's stage output ``h`` (zeros, depending on ``sent``, on the
        ranks before the last), broadcast as :attr:`broadcast` says."""
        batch, length = h.shape[:2]
        shape = (batch, length, self._vocab)
        group = self.group
        if not self.is_last:
            logits = mx.depends(mx.zeros(shape, self._dtype), sent)
        elif self.head_is_embedding:
            logits = self.head.as_linear(h)
        else:
            logits = self.head(h)
        if self.is_last and hasattr(self.lm, "finish_logits"):  # a scale, a soft-cap (Gemma 2)
            logits = self.lm.finish_logits(logits)
        if self.broadcast == "logits":
            logits = mx.distributed.all_sum(logits, group=group)
        if invalid is not None:
            logits = mx.where(mx.expand_dims(invalid, -1), mx.array(mx.nan, logits.dtype), logits)
        return logits

    def sampler(self, sampler: Callable[[mx.array], mx.array]) -> Callable[[mx.array], mx.array]:
        """``sampler`` for ``broadcast="token"``: the last rank draws with it; its id is
        broadcast (``all_sum`` of one int32, the others adding zero), so every rank feeds the
        same next token. The result depends on the logprobs on every rank, so evaluating it
        also runs this rank's stage."""

        def draw(logprobs: mx.array) -> mx.array:
            if self.is_last:
                token = sampler(logprobs).astype(mx.int32)
            else:
                token = mx.depends(mx.zeros((logprobs.shape[0],), mx.int32), logprobs)
            return mx.distributed.all_sum(token, group=self.group)

        return draw


def _tie_caches(cache: list | None, sent: mx.array) -> None:
    """Make this rank's caches depend on its outgoing send: a caller that evaluates only the
    caches (a prefill) then also sends the activations the next rank is waiting for."""
    if not cache:
        return
    for c in reversed(cache):
        keys = getattr(c, "keys", None)
        if isinstance(keys, mx.array):
            c.keys = mx.depends(keys, sent)
            return
        if isinstance(keys, (list, tuple)) and keys and isinstance(keys[0], mx.array):
            c.keys = type(keys)([mx.depends(keys[0], sent), *keys[1:]])
            return
    raise ShardingError("pipeline: none of this rank's caches holds its keys in a 'keys' array; "
                        "cannot order the stage's send after the caches")


def pipeline(model: nn.Module, group: mx.distributed.Group | None = None, *,
             broadcast: str = "logits", transfer: str | None = None) -> PipelineLM:
    """Split ``model`` (a :class:`~mlx_zoo.CausalLM`) into pipeline stages over ``group``
    (default: ``mx.distributed.init()``) and return this rank's stage: the layers, caches and
    ends of the other ranks are dropped (on a lazily loaded model they are never read).
    ``transfer``: ``"send"`` or ``"all_sum"`` per stage boundary (default
    :func:`default_transfer`). :class:`ShardingError` for more ranks than stages, or a model
    that cannot be staged."""
    group = group or mx.distributed.init()
    stages = stage_plan(model, group.size())
    return PipelineLM(model, group, stages, broadcast=broadcast, transfer=transfer)


# -- loading each rank's part ----------------------------------------------------------------


def check_parallel(parallel: str, size: int, config: Any = None, model_dir: Any = None
                   ) -> None:
    """Refuse, before any weight is read, what cannot work: a mode other than ``pipeline`` /
    ``tensor``, a group of one process, more ranks than layers (pipeline), head counts that do
    not divide (tensor). ``config`` is the plugin's config dataclass (or None: mode and size
    only)."""
    if parallel not in PARALLEL_MODES:
        raise ShardingError(f"parallel must be one of {', '.join(PARALLEL_MODES)}, got "
                            f"{parallel!r}")
    if size < 2:
        raise ShardingError(
            f"parallel={parallel!r} needs a distributed group of 2 or more processes, but this "
            "process is alone (run it under mlx.launch -n 2 ..., or drop --parallel)")
    if config is None:
        return
    where = f"{model_dir}: " if model_dir is not None else ""
    if parallel == "pipeline":
        layers = getattr(config, "num_hidden_layers", None)
        if isinstance(layers, int) and size > layers:
            raise ShardingError(f"{where}cannot split {layers} layers into {size} pipeline "
                                f"stages: use at most {layers} processes")
    else:
        for name in ("num_attention_heads", "num_key_value_heads"):
            heads = getattr(config, name, None)
            if isinstance(heads, int) and heads % size:
                raise ShardingError(
                    f"{where}{name} = {heads} heads cannot be split over {size} processes for "
                    f"tensor parallelism: expected a multiple of {size} (try --parallel "
                    "pipeline)")


AUTO_RULE = ("pipeline for decoding: one activation transfer per stage boundary per token, where "
             "tensor parallelism pays two all-reduces per layer per token (slower than one "
             "device at batch 1 on both the ring backend and NCCL: docs/benchmarks.md, "
             "'Parallel'); tensor where the layers cannot be split over the ranks")


def choose_parallel(parallel: str, num_layers: int | None, size: int) -> str:
    """``"pipeline"`` / ``"tensor"`` as given; ``"auto"`` by :data:`AUTO_RULE`, from the
    config's ``num_hidden_layers`` alone (no weight read). A group of one process is refused
    (:class:`ShardingError`)."""
    if parallel != "auto":
        return parallel
    check_parallel("pipeline", size)
    if isinstance(num_layers, int) and size > num_layers:
        return "tensor"
    return "pipeline"
