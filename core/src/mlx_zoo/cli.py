"""The ``mlx-zoo`` command: ``list``, ``info``, ``generate``, ``chat``, ``convert``, ``serve``,
``new-plugin``.

Each subcommand lives in its own function and imports what it needs only when it runs, so
``mlx-zoo list`` stays fast and never imports a plugin it does not check.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from .errors import MlxZooError


def cmd_list(args: argparse.Namespace) -> int:
    """Installed model types -> distribution and version; conflicts and broken plugins marked;
    then what the bridges serve (native or bridged, per model_type)."""
    from .registry import list_bridged, list_plugins

    rows = list_plugins(check=not args.no_check)
    bridged = list_bridged(check=not args.no_check)
    if not rows and not bridged:
        print("No mlx-zoo plugins installed. Try: pip install mlx-qwen2")
        return 0
    _print_table(("MODEL TYPE", "DISTRIBUTION", "VERSION", "MODULE", "STATUS"),
                 [(r.model_type, r.distribution, r.version, r.module, r.status) for r in rows])
    for r in rows:
        if r.error:
            print(f"\n{r.distribution} ({r.model_type}) is broken: {r.error}")
    conflicts = sorted({r.model_type for r in rows if r.status == "conflict"})
    if conflicts:
        print("\nConflicts: " + ", ".join(conflicts) + " are claimed by several distributions; "
              "choose with MLX_ZOO_PREFER=model_type=distribution.")
    _print_bridged(bridged)
    return 0


def _print_table(header: tuple[str, ...], rows: list[tuple]) -> None:
    table = [header, *rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=False)).rstrip())


def _print_bridged(rows: list) -> None:
    """``mlx-zoo list``'s bridge section (:func:`mlx_zoo.registry.list_bridged`): per bridge,
    the model types it serves (``bridged``, or ``broken`` with the reason below) and, on one
    line, those a native plugin serves (the bridge only when picked)."""
    for name in dict.fromkeys(r.distribution for r in rows):
        mine = [r for r in rows if r.distribution == name]
        first = mine[0]
        via = f" ({first.via})" if first.via else ""
        print(f"\nBridged by {name} {first.version}{via}, below native plugins "
              f"(--plugin {name} or MLX_ZOO_PREFER=TYPE={name} picks it):")
        if first.model_type == "*":  # not listed: unchecked, blocked or broken
            print(f"  {first.status}" + (f": {first.error}" if first.error else
                                         " (mlx-zoo list without --no-check lists its types)"))
            continue
        served = [(r.model_type, r.source, r.status) for r in mine if r.status != "native"]
        if served:
            _print_table(("BRIDGED TYPE", "FROM", "STATUS"), served)
        native = [f"{r.model_type} ({', '.join(r.native)})" for r in mine if r.status == "native"]
        if native:
            print("  served natively (the bridge only when picked): " + ", ".join(native))
        for r in mine:
            if r.error:
                print(f"\n{name} ({r.model_type}) is broken: {r.error}")


def cmd_info(args: argparse.Namespace) -> int:
    """Architecture, parameter count, dtype, quantization and cache layout of a checkpoint."""
    from .info import describe

    for line in describe(args.model, plugin=args.plugin):
        print(line)
    return 0


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None],
                          Callable[[argparse.Namespace], int]]] = {}


def _add_list(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-check", action="store_true",
                   help="read entry-point metadata only; do not import plugins to check them")


def _add_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model directory or Hugging Face repo id")
    p.add_argument("--plugin", help="distribution to use when several claim the model_type")


COMMANDS["list"] = ("list installed model types and their plugins", _add_list, cmd_list)
COMMANDS["info"] = ("describe a checkpoint", _add_info, cmd_info)


# -- generate / chat ---------------------------------------------------------------------------

DEFAULT_MODEL = None  # an installed plugin's demo checkpoint, qwen2 first (mlx_zoo.demos): offline
DEFAULT_PROMPT = "hello"
CHAT_HELP = ("Type a message and press Enter; 'r' resets the conversation, 'q' (or end of "
             "input) quits.")


def _add_sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="model directory, Hugging Face repo id, or demo:NAME (default: an "
                        "installed plugin's demo, demo:qwen2 first)")
    p.add_argument("--max-tokens", "-m", type=int, default=256, help="most tokens to generate")
    p.add_argument("--temp", type=float, default=0.0, help="sampling temperature (0: greedy)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass, in (0, 1]")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k likeliest (0: off)")
    p.add_argument("--min-p", type=float, default=0.0,
                   help="drop tokens below min-p x the top probability (0: off)")
    p.add_argument("--repetition-penalty", type=float, default=None,
                   help="penalise recently seen tokens (> 1 discourages repeats)")
    p.add_argument("--repetition-context-size", type=int, default=20,
                   help="tokens the repetition penalty looks back at")
    p.add_argument("--seed", type=int, default=None, help="random seed: reproducible sampling")
    p.add_argument("--kv-bits", type=int, default=None,
                   help="store the attention cache quantized to this many bits (default: off)")
    p.add_argument("--kv-group-size", type=int, default=None,
                   help="elements per scale of the quantized cache, 32, 64 or 128 (default: "
                        "the largest dividing the model's head dim)")
    p.add_argument("--quantized-kv-start", type=int, default=0,
                   help="positions held before the cache is quantized")
    p.add_argument("--system", default=None, help="system prompt (through the chat template)")
    p.add_argument("--plugin", help="distribution to use when several claim the model_type")


def _add_generate(p: argparse.ArgumentParser) -> None:
    _add_sampling(p)
    p.add_argument("--prompt", "-p", default=DEFAULT_PROMPT,
                   help="the prompt ('-' reads it from standard input)")
    p.add_argument("--chat-template", action=argparse.BooleanOptionalAction, default=None,
                   help="wrap the prompt in the tokenizer's chat template (default: when it "
                        "has one)")
    p.add_argument("--stop", action="append", default=None,
                   help="stop when this text is generated (repeatable)")
    p.add_argument("--prefill-step-size", type=int, default=2048,
                   help="prompt tokens processed at once")
    p.add_argument("--allow-long-context", action="store_true",
                   help="run even when the prompt plus --max-tokens exceeds the model's "
                        "max_position_embeddings (refused by default: quality degrades past it "
                        "and a huge prompt can prefill for a long time)")
    p.add_argument("--parallel", choices=("pipeline", "tensor", "auto"), default=None,
                   help="split the model over the processes started by mlx.launch (e.g. "
                        "'mlx.launch -n 2 --backend ring -- mlx-zoo generate --parallel auto "
                        "...'): pipeline (layers per rank), tensor (heads per rank), or auto "
                        "(pipeline: decode pays one transfer per token instead of two "
                        "all-reduces per layer; tensor where the layers cannot be split). Each "
                        "rank reads only its part; only rank 0 prints")


def _add_chat(p: argparse.ArgumentParser) -> None:
    _add_sampling(p)


def _load_for_generation(args: argparse.Namespace):
    """Model and tokenizer, once the sampling arguments are known to be valid (a bad argument is
    reported before anything is loaded)."""
    import mlx_zoo

    from .generate import check_generation_args, check_kv_args, check_seed

    check_generation_args(args.max_tokens, getattr(args, "prefill_step_size", 1))
    check_kv_args(args.kv_bits, args.kv_group_size, args.quantized_kv_start)
    check_seed(args.seed)
    mlx_zoo.make_sampler(args.temp, args.top_p, args.top_k, args.min_p)
    mlx_zoo.make_logits_processors(args.repetition_penalty, args.repetition_context_size)
    if args.model is None:
        from .demos import DEMO_PREFIX, default_demo

        demo = default_demo()
        if demo is None:
            raise mlx_zoo.ModelNotFoundError(
                "no --model given, and no installed plugin ships a demo checkpoint (install "
                "one, e.g. pip install mlx-qwen2, or pass --model)")
        args.model = DEMO_PREFIX + demo

    # "auto": dense float32 on MLX's Linux CPU backend when it fits and the fast BLAS serves
    # (mlx_zoo.loading, mlx_zoo.blas), else as stored;
    # fuse: q/k/v and gate/up as one matmul each, fewer kernels per token (mlx_zoo.fusion).
    parallel = getattr(args, "parallel", None)
    if parallel is not None:
        return _load_parallel(args, parallel)
    model, _ = mlx_zoo.load(args.model, plugin=args.plugin, dtype="auto", dequantize="auto",
                            fuse=True)
    return model, mlx_zoo.load_tokenizer(args.model)


def _load_parallel(args: argparse.Namespace, parallel: str):
    """``--parallel``: this rank's part of the model (mlx_zoo.pipeline.load_distributed); a
    pipeline broadcasts the sampled token, not the logits. Ranks other than 0 print nothing on
    standard output from here on."""
    import os

    import mlx.core as mx

    import mlx_zoo

    from .loading import load_distributed
    from .pipeline import check_parallel, choose_parallel
    from .sources import open_checkpoint

    group = mx.distributed.init()
    check_parallel("pipeline" if parallel == "auto" else parallel, group.size())
    layers = open_checkpoint(args.model).raw.get("num_hidden_layers")
    parallel = choose_parallel(parallel, layers, group.size())
    model, _ = load_distributed(args.model, parallel, group, plugin=args.plugin, dtype="auto",
                                dequantize="auto", fuse=True,
                                broadcast="token" if parallel == "pipeline" else "logits")
    if group.rank() != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the rest of this process)
    if parallel == "pipeline":
        args.sampler = model.sampler(mlx_zoo.make_sampler(args.temp, args.top_p, args.top_k,
                                                          args.min_p))
    return model, mlx_zoo.load_tokenizer(args.model)


def _sampling_kwargs(args: argparse.Namespace) -> dict:
    return dict(max_tokens=args.max_tokens, temp=args.temp, top_p=args.top_p, top_k=args.top_k,
                min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                repetition_context_size=args.repetition_context_size, seed=args.seed,
                kv_bits=args.kv_bits, kv_group_size=args.kv_group_size,
                quantized_kv_start=args.quantized_kv_start)


def _messages(system: str | None, turns: list[dict[str, str]]) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + turns


def _decode_input(data: bytes, what: str) -> str:
    """Bytes read from standard input as UTF-8, else a :class:`GenerationArgumentError` naming
    the first invalid byte (rather than a guess at what was meant)."""
    from .errors import GenerationArgumentError

    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise GenerationArgumentError(f"{what} is not valid UTF-8: byte {e.start} is "
                                      f"{data[e.start]:#04x} ({e.reason})") from None


def _check_context(model, n_tokens: int, args: argparse.Namespace) -> None:
    """Refuse, before the prefill starts, a prompt that with ``--max-tokens`` runs past the
    model's ``max_position_embeddings``, unless ``--allow-long-context``."""
    from .errors import GenerationArgumentError
    from .generate import model_context_length

    limit = model_context_length(model)
    if limit is None or args.allow_long_context or n_tokens + args.max_tokens <= limit:
        return
    raise GenerationArgumentError(
        f"{args.model}: the prompt ({n_tokens} tokens) plus --max-tokens {args.max_tokens} "
        f"exceeds the model's context length (max_position_embeddings {limit} in config.json); "
        "shorten the prompt, lower --max-tokens, or pass --allow-long-context")


def cmd_generate(args: argparse.Namespace) -> int:
    """Generate from one prompt, streaming the text, then print speed and peak memory."""
    import warnings

    from .generate import ContextLengthWarning, print_stats, stream_generate
    from .tokenizer import check_text

    if args.prompt == "-":
        prompt = _decode_input(sys.stdin.buffer.read(), "the prompt read from standard input")
    else:
        prompt = args.prompt
    check_text(prompt)  # invalid UTF-8 in argv arrives as lone surrogates (surrogateescape)
    model, tokenizer = _load_for_generation(args)
    use_template = tokenizer.has_chat_template if args.chat_template is None else args.chat_template
    if use_template:
        tokens = tokenizer.apply_chat_template(
            _messages(args.system, [{"role": "user", "content": prompt}]),
            add_generation_prompt=True)
    else:  # plain text: the BOS is added unless the text starts with it
        tokens = tokenizer.encode_prompt(prompt)
    _check_context(model, len(tokens), args)
    last = None
    with warnings.catch_warnings():
        if args.allow_long_context:  # asked for: no need to warn about it
            warnings.simplefilter("ignore", ContextLengthWarning)
        for last in stream_generate(model, tokenizer, tokens, stop=args.stop,
                                    prefill_step_size=args.prefill_step_size,
                                    sampler=getattr(args, "sampler", None),
                                    **_sampling_kwargs(args)):
            print(last.text, end="", flush=True)
    print()
    print_stats(last)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    """An interactive conversation through the chat template; reads one message per line."""
    from .cache import make_prompt_cache
    from .generate import reuse_prompt_cache, stream_generate

    model, tokenizer = _load_for_generation(args)
    if not tokenizer.has_chat_template:
        from .errors import TokenizerError

        raise TokenizerError(f"{args.model}: the tokenizer has no chat template; use "
                             "'mlx-zoo generate --no-chat-template' for plain text")
    sampling = _sampling_kwargs(args)
    if args.seed is not None:  # seeded once: the turns draw on from there
        import mlx.core as mx

        mx.random.seed(sampling.pop("seed"))
    interactive = sys.stdin.isatty()
    print(CHAT_HELP, flush=True)
    turns: list[dict[str, str]] = []
    cache, cached_tokens = make_prompt_cache(model), []  # the conversation so far, kept
    while True:
        if interactive:
            print(">> ", end="", flush=True)
        line = _decode_input(sys.stdin.buffer.readline(), "the message")
        if not line or line.strip() == "q":
            return 0
        message = line.strip()
        if message == "r":
            turns, cache, cached_tokens = [], make_prompt_cache(model), []
            print("(conversation reset)", flush=True)
            continue
        if not message:
            continue
        turns.append({"role": "user", "content": message})
        tokens = tokenizer.apply_chat_template(_messages(args.system, turns),
                                               add_generation_prompt=True)
        cache, start = reuse_prompt_cache(model, cache, cached_tokens, tokens)
        reply, generated = [], []
        for response in stream_generate(model, tokenizer, tokens[start:], prompt_cache=cache,
                                        **sampling):
            print(response.text, end="", flush=True)
            reply.append(response.text)
            generated.append(response.token)
        print(flush=True)
        turns.append({"role": "assistant", "content": "".join(reply)})
        cached_tokens = (tokens + generated)[:cache[0].offset]


COMMANDS["generate"] = ("generate text from a prompt", _add_generate, cmd_generate)
COMMANDS["chat"] = ("chat with a model (one message per input line)", _add_chat, cmd_chat)

# convert: mlx-lm's `convert` verb and flags (mlx_zoo.convert imports MLX only when it runs)
from .convert import COMMAND as _CONVERT  # noqa: E402 (after the commands it is listed with)

COMMANDS["convert"] = _CONVERT

# new-plugin: a tested, buildable plugin distribution from the template (mlx_zoo.newplugin)
from .newplugin import COMMAND as _NEW_PLUGIN  # noqa: E402

COMMANDS["new-plugin"] = _NEW_PLUGIN


def _add_serve(p: argparse.ArgumentParser) -> None:
    from .serve import add_arguments  # imports nothing heavy: the server loads on run

    add_arguments(p)


def cmd_serve(args: argparse.Namespace) -> int:
    """An OpenAI-compatible HTTP server with continuous batching (needs mlx-zoo[serve])."""
    from .serve import run

    return run(args)


COMMANDS["serve"] = ("serve a model over an OpenAI-compatible HTTP API", _add_serve, cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlx-zoo", description="A plugin-based model zoo for MLX")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except MlxZooError as e:
        print(f"mlx-zoo: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
