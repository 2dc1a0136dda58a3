"""``mlx-zoo serve``: an OpenAI-compatible HTTP server with continuous batching.

* :mod:`~mlx_zoo.serve.app` -- the Starlette application (endpoints, streaming, errors),
* :mod:`~mlx_zoo.serve.protocol` -- request checking and response shapes,
* :mod:`~mlx_zoo.serve.engine` -- the scheduler: chunked prefill, batched decode steps,
  per-request sampling,
* :mod:`mlx_zoo.batch_cache` (in the core: mlx-lm's ``BatchGenerator`` uses it too) -- batched
  KV caches (per-row offsets and masks),
* :mod:`~mlx_zoo.serve.prefix_cache` -- the LRU prefix cache,
* :mod:`~mlx_zoo.serve.structured` / :mod:`~mlx_zoo.serve.tools` /
  :mod:`~mlx_zoo.serve.reasoning` -- ``response_format``, tool calls and reasoning
  (``reasoning_content``); :mod:`~mlx_zoo.serve.family` -- the parsers plugins register per
  model_type.

Needs the ``serve`` extra (``pip install 'mlx-zoo[serve]'``: starlette, uvicorn). Wired into the
CLI through :func:`add_arguments` and :func:`run`; see docs/serve.md.
"""

from __future__ import annotations

import argparse

from .reasoning import CHOICES as REASONING_PARSERS

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``mlx-zoo serve`` flags."""
    parser.add_argument("--model", default="demo:qwen2",
                        help="model directory, Hugging Face repo id or demo:NAME "
                             "(default: %(default)s)")
    parser.add_argument("--served-model-name", default=None,
                        help="the model id clients send and /v1/models lists (default: --model)")
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to bind "
                        "(default: %(default)s; 0.0.0.0 exposes it to the network)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="port (default: %(default)s)")
    parser.add_argument("--max-concurrency", type=int, default=16,
                        help="sequences decoded together at most; more wait (default: "
                             "%(default)s)")
    parser.add_argument("--prefill-step-size", type=int, default=512,
                        help="prompt tokens run at once: the longest a new prompt holds up the "
                             "running batch (default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=512,
                        help="tokens generated when a request does not say (default: "
                             "%(default)s)")
    parser.add_argument("--temp", type=float, default=0.0,
                        help="temperature when a request does not say (default: %(default)s)")
    parser.add_argument("--top-p", type=float, default=1.0, help="default top_p")
    parser.add_argument("--top-k", type=int, default=0, help="default top_k (0: off)")
    parser.add_argument("--min-p", type=float, default=0.0, help="default min_p (0: off)")
    parser.add_argument("--kv-bits", type=int, default=None,
                        help="store the attention caches quantized to this many bits")
    parser.add_argument("--kv-group-size", type=int, default=None,
                        help="elements per scale of the quantized cache (default: the largest "
                             "of 128/64/32 dividing the head dim)")
    parser.add_argument("--quantized-kv-start", type=int, default=0,
                        help="prompt positions held before a prefill cache is quantized")
    parser.add_argument("--prefix-cache-gb", type=float, default=1.0,
                        help="memory for the prefix cache, in GB (0: off; default: "
                             "%(default)s)")
    parser.add_argument("--blas-threads", type=int, default=1,
                        help="threads of the fast CPU BLAS (Linux; 0: leave as is; "
                             "OPENBLAS_NUM_THREADS wins; default: %(default)s)")
    parser.add_argument("--reasoning-parser", default="auto", choices=list(REASONING_PARSERS),
                        help="where a chat answer's reasoning (<think>...</think>) goes: auto "
                             "(default), the model family's parser, else <think>; think (or "
                             "vLLM's names qwen3, deepseek_r1): <think> whatever the family; "
                             "none: it stays in content. Returned as reasoning_content")
    parser.add_argument("--no-batching", action="store_true",
                        help="decode each sequence on its own (for comparison or debugging)")
    parser.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                        help="before serving, run dummy requests through the batch as it grows "
                             "1, 2, 4, ... up to --max-concurrency, so that MLX's GPU backend "
                             "compiles its kernels then, not during the first requests "
                             "(--no-warmup: skip it; default: %(default)s)")
    parser.add_argument("--log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug"])


def _check(args: argparse.Namespace) -> None:
    from ..errors import GenerationArgumentError
    from ..generate import check_kv_args
    from ..sample import check_sampling_args

    check_kv_args(args.kv_bits, args.kv_group_size, args.quantized_kv_start)
    check_sampling_args(args.temp, args.top_p, args.top_k, args.min_p)
    for name in ("max_concurrency", "prefill_step_size", "max_tokens"):
        value = getattr(args, name)
        if value < 1:
            raise GenerationArgumentError(f"--{name.replace('_', '-')} must be >= 1, "
                                          f"got {value}")
    if not 0 <= args.port < 65536:
        raise GenerationArgumentError(f"--port must be in [0, 65535], got {args.port}")
    if args.blas_threads < 0:
        raise GenerationArgumentError(f"--blas-threads must be >= 0, got {args.blas_threads}")
    if not 0 <= args.prefix_cache_gb < float("inf"):  # NaN fails this too
        raise GenerationArgumentError(f"--prefix-cache-gb must be a number >= 0, got "
                                      f"{args.prefix_cache_gb}")


def build(args: argparse.Namespace):
    """The engine (started, model loaded) and the ASGI application for ``args``."""
    import logging

    from .app import Server, create_app
    from .engine import Engine

    _check(args)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine = Engine(args.model, max_concurrency=args.max_concurrency,
                    prefill_step_size=args.prefill_step_size, kv_bits=args.kv_bits,
                    kv_group_size=args.kv_group_size,
                    quantized_kv_start=args.quantized_kv_start,
                    prefix_cache_bytes=int(args.prefix_cache_gb * 1e9),
                    batching=not args.no_batching, blas_threads=args.blas_threads,
                    warmup=args.warmup)
    engine.start()
    engine.ready.wait()
    if engine.load_error is not None:
        error = engine.load_error
        raise error
    defaults = {"max_tokens": args.max_tokens, "temperature": args.temp, "top_p": args.top_p,
                "top_k": args.top_k, "min_p": args.min_p}
    name = args.served_model_name or args.model
    server = Server(engine, name, defaults, aliases=(args.model,),
                    reasoning=args.reasoning_parser)
    return engine, create_app(server)


def run(args: argparse.Namespace) -> int:
    """``mlx-zoo serve``: load the model, then serve until interrupted."""
    try:
        import uvicorn
    except ImportError:
        from ..errors import MlxZooError

        raise MlxZooError("mlx-zoo serve needs the serve extra: pip install "
                          "'mlx-zoo[serve]' (starlette, uvicorn)") from None
    _check(args)
    sock = _listen(args.host, args.port)  # before the model loads: a busy port fails at once
    try:
        engine, app = build(args)
        try:
            config = uvicorn.Config(app, host=args.host, port=args.port,
                                    log_level=args.log_level, timeout_graceful_shutdown=5)
            uvicorn.Server(config).run(sockets=[sock])
        finally:
            engine.stop()
    finally:
        sock.close()
    return 0


def _listen(host: str, port: int):
    """A socket listening on ``host:port``; an ``MlxZooError`` naming both when that fails
    (the port in use, an address not of this machine)."""
    import socket

    from ..errors import MlxZooError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise MlxZooError(f"--host {host}: cannot resolve it ({e})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise MlxZooError(f"cannot listen on --host {host} --port {port}: "
                          f"{e.strerror or e} (another server on that port? --port picks "
                          f"another)") from None
    return sock


def main(argv: list[str] | None = None) -> int:
    """``python -m mlx_zoo.serve``: the same as ``mlx-zoo serve``."""
    import sys

    from ..errors import MlxZooError

    parser = argparse.ArgumentParser(prog="mlx-zoo serve",
                                     description="an OpenAI-compatible server")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except MlxZooError as e:
        print(f"mlx-zoo: error: {e}", file=sys.stderr)
        return 2
