"""Train the demo checkpoints the plugins ship (``<plugin>/demo/``), one tiny model each.

The training text: docstrings of Python's standard library
----------------------------------------------------------
``scripts/demo_corpus.txt`` holds the first paragraph of the docstrings of public functions,
classes and methods of 88 well-known standard-library modules (plain ASCII English, 40-600
characters, no doctests), one ``qualified.name<TAB>paragraph`` per line. Why this text:

* it ships on every machine that has Python, so no download is needed;
* it is under the PSF License Agreement (https://docs.python.org/3/license.html), which permits
  copying, modifying and redistributing it, with its copyright notice -- see
  ``core/src/mlx_zoo/demos/README.md``;
* it is plain technical English, so what a tiny model learns from it reads as English.

The extracted text is committed, because docstrings change between Python versions; ``python
scripts/train_demo.py extract`` rebuilds it from the running Python (the committed one is from
CPython 3.11).

What the script does (``python scripts/train_demo.py train qwen2`` ...)
-------------------------------------------------------------------------
1. Documents: every docstring as plain text, and every fourth one also as a chat turn in the
   demo's chat template (``What does json.dumps do?`` -> the docstring), separated by
   ``<|endoftext|>``.
2. A byte-level BPE tokenizer (the ``tokenizers`` library) with :data:`VOCAB_SIZE` tokens, the
   three special tokens of the ChatML-style template, saved as ``tokenizer.json`` with a
   ``tokenizer_config.json`` holding the chat template.
3. The model: built generically through mlx-zoo's plugin registry from :data:`CONFIGS`
   (``config_class.from_dict`` + ``model_class``), so the same loop trains every architecture.
4. Training: next-token cross-entropy on random windows of the shuffled document stream, AdamW
   with warm-up and cosine decay, on MLX's CPU backend (minutes). Enough epochs that the model
   knows the text by heart, which the tests use: greedy decoding from the first words of a
   docstring must reproduce it.
5. Saving with ``mlx_zoo.save`` plus the tokenizer files and ``generation_config.json``.

Speed: MLX's Linux CPU wheel links a slow reference BLAS. With a system OpenBLAS installed,
importing ``mlx_zoo`` before ``mlx.core`` (as this script does) binds MLX to it
(``mlx_zoo.blas``): float32 matmuls ~50x faster (measured 5 -> 280 GFLOP/s on 2 cores), and
training ~10 minutes per demo::

    apt-get install -y libopenblas0-pthread
    python scripts/train_demo.py train qwen2 hunyuan llama4
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import math
import random
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "scripts" / "demo_corpus.txt"
DEMOS = {  # where each demo lives: inside the plugin that ships it (its register_demos hook)
    "qwen2": REPO / "plugins" / "mlx-qwen2" / "src" / "mlx_qwen2" / "demo",
    "hunyuan": REPO / "plugins" / "mlx-hunyuan" / "src" / "mlx_hunyuan" / "demo",
    "llama4": REPO / "plugins" / "mlx-llama4" / "src" / "mlx_llama4" / "demo",
    "qwen3": REPO / "plugins" / "mlx-qwen3" / "src" / "mlx_qwen3" / "demo",
    "gemma3": REPO / "plugins" / "mlx-gemma" / "src" / "mlx_gemma" / "demo",
}

# -- 1. the corpus -----------------------------------------------------------------------------

CORPUS_MODULES = """
abc argparse base64 bisect builtins calendar cmd collections colorsys configparser contextlib
copy csv dataclasses datetime difflib email.message enum fileinput fnmatch fractions functools
getopt gettext glob gzip hashlib heapq hmac html http.client http.server imaplib inspect io
ipaddress json locale logging mailbox math mimetypes numbers operator optparse os os.path
pathlib pickle pkgutil platform poplib pprint queue random re sched secrets selectors shelve
shlex shutil smtplib socket socketserver sqlite3 statistics string struct subprocess tarfile
tempfile textwrap threading time timeit tokenize traceback types typing unittest urllib.parse
urllib.request uuid warnings weakref zipfile zlib
""".split()
MIN_CHARS, MAX_CHARS = 40, 600  # docstring paragraphs kept: long enough to say something


def first_paragraph(doc: str) -> str | None:
    """The docstring's first paragraph on one line, if it is plain English of a useful length."""
    para = re.sub(r"\s+", " ", doc.split("\n\n")[0]).strip()
    if not MIN_CHARS <= len(para) <= MAX_CHARS or not para.isascii() or ">>>" in para:
        return None
    return para if para[0].isupper() else None


def extract_corpus() -> list[tuple[str, str]]:
    """(qualified name, first paragraph) of public functions, classes and methods."""
    seen: set[str] = set()
    entries = []

    def add(name: str, obj) -> None:
        doc = inspect.getdoc(obj)
        para = first_paragraph(doc) if doc else None
        if para and para not in seen:
            seen.add(para)
            entries.append((name, para))

    for module_name in CORPUS_MODULES:
        module = importlib.import_module(module_name)
        for name, obj in sorted(vars(module).items()):
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(obj) or inspect.isbuiltin(obj) or inspect.isclass(obj):
                add(f"{module_name}.{name}", obj)
            if inspect.isclass(obj):
                for method_name, method in sorted(vars(obj).items()):
                    if not method_name.startswith("_") and (
                            inspect.isfunction(method) or inspect.ismethoddescriptor(method)):
                        add(f"{module_name}.{name}.{method_name}", method)
    return entries


def read_corpus() -> list[tuple[str, str]]:
    lines = CORPUS.read_text(encoding="utf-8").splitlines()
    return [tuple(line.split("\t", 1)) for line in lines if line]


# -- 2. documents and the tokenizer ------------------------------------------------------------

END_OF_TEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [END_OF_TEXT, IM_START, IM_END]
VOCAB_SIZE = 1024
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""ChatML (the format of Qwen's chat models): each message as ``<|im_start|>role\\ncontent
<|im_end|>``; the generation prompt opens the assistant's turn."""


def chat_turn(name: str, doc: str) -> str:
    question = f"What does {name} do?"
    return (f"{IM_START}user\n{question}{IM_END}\n{IM_START}assistant\n{doc}{IM_END}\n")


CHAT_EVERY = 4  # every 4th docstring is also a chat turn: the chat format, at a quarter the cost


def documents(corpus: list[tuple[str, str]]) -> list[str]:
    """Every docstring as plain text; every :data:`CHAT_EVERY`-th also as a chat turn."""
    chats = [chat_turn(name, doc) for name, doc in corpus[::CHAT_EVERY]]
    return [doc for _, doc in corpus] + chats


PRETOKENIZE_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                       r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
"""How text is split into words before BPE: Qwen2's pattern (contractions, letter runs with one
leading non-letter, single digits, punctuation runs, newlines, spaces). The demos use it because
transformers >= 5 loads every ``qwen2`` checkpoint's tokenizer as ``Qwen2Tokenizer``, which
rebuilds the pipeline with exactly this pattern, NFC normalisation and byte-level BPE, whatever
tokenizer.json says; with the same pipeline here, tokenizer.json and transformers agree."""


def train_tokenizer(docs: list[str]):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(docs, trainer=trainer)
    return tokenizer


def tokenizer_config() -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": END_OF_TEXT,
        "unk_token": None,
        "add_bos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 4096,
        "chat_template": CHAT_TEMPLATE,
    }


# -- 3. the models -----------------------------------------------------------------------------

COMMON = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 384,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 4096,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
}
CONFIGS: dict[str, dict] = {
    "qwen2": {**COMMON, "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]},
    # HunYuan's dense format: QK-norm, and its NTK-alpha RoPE (``"dynamic"`` with an ``alpha``:
    # base theta * alpha ** (d / (d - 2))), the RoPE variant the mlx-hunyuan plugin registers.
    "hunyuan": {**COMMON, "model_type": "hunyuan_v1_dense",
                "architectures": ["HunYuanDenseV1ForCausalLM"], "use_qk_norm": True,
                "rope_scaling": {"type": "dynamic", "alpha": 4.0, "factor": 1.0}},
    # Llama 4's text model: every 2nd layer is a global NoPE layer, the others use RoPE over
    # chunks of ``attention_chunk_size`` positions (Llama 4 itself: every 4th is global; with
    # only one of four layers seeing past a chunk, this tiny model forgets its text at chunk
    # boundaries); every 2nd layer is a mixture of experts (4 routed experts, top-1, plus a
    # shared expert), the others a dense MLP.
    "llama4": {**COMMON, "model_type": "llama4_text", "architectures": ["Llama4ForCausalLM"],
               "head_dim": 32, "intermediate_size": 128, "intermediate_size_mlp": 384,
               "num_local_experts": 4, "num_experts_per_tok": 1, "interleave_moe_layer_step": 2,
               "no_rope_layer_interval": 2, "attention_chunk_size": 32,
               "attn_temperature_tuning": True, "floor_scale": 8192, "attn_scale": 0.1},
    # Qwen3: QK-norm, no q/k/v bias (its config's head_dim defaults to 128: given here).
    "qwen3": {**COMMON, "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"],
              "head_dim": 32},
    # Gemma 3's text model: sandwich (1 + weight) RMSNorms, GeGLU, scaled embeddings, QK-norm,
    # local layers (a 32-position sliding window, RoPE base 10,000) with every 2nd global (Gemma 3
    # itself: every 6th; RoPE base 1e6).
    "gemma3": {**COMMON, "model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"],
               "head_dim": 32, "query_pre_attn_scalar": 32, "sliding_window": 32,
               "layer_types": ["sliding_attention", "full_attention"] * 2,
               "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0},
}
"""Demo name -> config.json (before the special token ids are added)."""


def build_model(config: dict):
    """The model of ``config`` and its config dataclass, built through the plugin registry like
    ``mlx_zoo.load`` does (the dataclass's ``to_dict`` is what ``mlx_zoo.save`` writes)."""
    from mlx_zoo import normalize_config, registry

    raw = normalize_config(config)
    arch = registry.resolve(raw["model_type"])
    args = arch.config_class.from_dict(raw)
    return arch.model_class(args), args


# -- 4. training -------------------------------------------------------------------------------

SEQ_LEN = 128  # docstrings are ~30 tokens, chat turns ~60: 128 spans several
BATCH = 16
PEAK_LR = 3e-3
WARMUP_STEPS = 100
WEIGHT_DECAY = 0.01
SEED = 0


def token_stream(tokenizer, docs: list[str], rng: random.Random, epochs: int) -> list[int]:
    """The documents, shuffled anew for each epoch, each preceded by <|endoftext|>."""
    encoded = [[tokenizer.token_to_id(END_OF_TEXT)] + tokenizer.encode(d).ids for d in docs]
    stream: list[int] = []
    for _ in range(epochs):
        order = list(range(len(encoded)))
        rng.shuffle(order)
        for i in order:
            stream.extend(encoded[i])
    return stream


@contextlib.contextmanager
def router_choices_without_gradients():
    """Expert choices are integer indices, which have no gradient; MoE layers written for
    inference (mlx-llama4's) pass ``mx.argpartition`` of the router logits straight to gathers,
    whose backward pass then fails ("Cannot calculate VJP with respect to indices"). While
    training, ``mx.argpartition`` returns its indices through ``mx.stop_gradient``."""
    import mlx.core as mx

    argpartition = mx.argpartition
    mx.argpartition = lambda *args, **kwargs: mx.stop_gradient(argpartition(*args, **kwargs))
    try:
        yield
    finally:
        mx.argpartition = argpartition


def train(model, stream: list[int], steps: int, rng: random.Random, log_every: int = 50) -> float:
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim

    data = mx.array(stream, dtype=mx.int32)
    schedule = optim.join_schedules(
        [optim.linear_schedule(PEAK_LR / WARMUP_STEPS, PEAK_LR, WARMUP_STEPS),
         optim.cosine_decay(PEAK_LR, steps - WARMUP_STEPS, PEAK_LR / 100)], [WARMUP_STEPS])
    optimizer = optim.AdamW(learning_rate=schedule, weight_decay=WEIGHT_DECAY)

    def loss_fn(model, batch):
        logits = model(batch[:, :-1])
        return nn.losses.cross_entropy(logits, batch[:, 1:], reduction="mean")

    state = [model.state, optimizer.state]
    loss_and_grad = nn.value_and_grad(model, loss_fn)

    def step(batch):
        loss, grads = loss_and_grad(model, batch)
        optimizer.update(model, grads)
        return loss

    step = mx.compile(step, inputs=state, outputs=state)
    model.train()
    start = time.perf_counter()
    loss = float("nan")
    for i in range(steps):
        offsets = [rng.randrange(len(stream) - SEQ_LEN - 1) for _ in range(BATCH)]
        batch = mx.stack([data[o:o + SEQ_LEN + 1] for o in offsets])
        loss = step(batch)
        mx.eval(state)
        if (i + 1) % log_every == 0 or i == 0:
            print(f"step {i + 1}/{steps}  loss {loss.item():.3f}  "
                  f"{time.perf_counter() - start:.0f}s", flush=True)
    model.eval()
    return loss.item()


# -- 5. saving and checking --------------------------------------------------------------------


def save_demo(name: str, model, config, tokenizer, out: Path) -> None:
    import mlx_zoo

    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*"):
        if stale.is_file():
            stale.unlink()
    mlx_zoo.save(model, config, out)
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(), indent=2) + "\n")
    eos = [tokenizer.token_to_id(IM_END), tokenizer.token_to_id(END_OF_TEXT)]
    (out / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": eos, "pad_token_id": tokenizer.token_to_id(END_OF_TEXT),
         "do_sample": False}, indent=2) + "\n")


PROBE_WORDS = 6  # prompt: the first words of a docstring
PROBE_CHARS = 40  # expected: the next characters, reproduced exactly


def memorisation(model_dir: Path, corpus: list[tuple[str, str]], sample: int = 200) -> float:
    """Share of docstrings (a fixed sample) whose next characters greedy decoding reproduces
    from their first words -- what the demo tests check for one passage per architecture."""
    import mlx_zoo

    model, _ = mlx_zoo.load(model_dir)
    tokenizer = mlx_zoo.load_tokenizer(model_dir)
    rng = random.Random(SEED)
    picked = rng.sample(corpus, min(sample, len(corpus)))
    hits = 0
    for _, doc in picked:
        words = doc.split(" ")
        if len(words) <= PROBE_WORDS:
            continue
        prompt = END_OF_TEXT + " ".join(words[:PROBE_WORDS])
        expected = " " + " ".join(words[PROBE_WORDS:])
        expected = expected[:PROBE_CHARS]
        out = mlx_zoo.generate(model, tokenizer, prompt, max_tokens=PROBE_CHARS).text
        hits += out.startswith(expected)
    return hits / len(picked)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("extract", help=f"rebuild {CORPUS.name} from this Python's standard library")
    p = sub.add_parser("train", help="train demo checkpoints")
    p.add_argument("names", nargs="+", choices=sorted(CONFIGS))
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--out", type=Path, default=None,
                   help="parent directory of the demos (default: each in its plugin)")
    args = parser.parse_args(argv)

    if args.command == "extract":
        entries = extract_corpus()
        CORPUS.write_text("".join(f"{n}\t{d}\n" for n, d in entries), encoding="utf-8")
        print(f"{CORPUS}: {len(entries)} docstrings, {CORPUS.stat().st_size} bytes "
              f"(Python {sys.version.split()[0]})")
        return 0

    import mlx_zoo  # noqa: F401, I001 (first: binds MLX to a fast BLAS before mlx.core)
    import mlx.core as mx

    corpus = read_corpus()
    docs = documents(corpus)
    tokenizer = train_tokenizer(docs)
    for name in args.names:
        mx.random.seed(SEED)
        rng = random.Random(SEED)
        config = dict(CONFIGS[name])
        config.update(eos_token_id=tokenizer.token_to_id(IM_END),
                      pad_token_id=tokenizer.token_to_id(END_OF_TEXT))
        model, config = build_model(config)
        stream_tokens = sum(len(tokenizer.encode(d).ids) + 1 for d in docs)
        epochs = math.ceil(args.steps * BATCH * SEQ_LEN / stream_tokens) + 1
        stream = token_stream(tokenizer, docs, rng, epochs)
        print(f"{name}: {stream_tokens} tokens per epoch, {args.steps} steps of "
              f"{BATCH}x{SEQ_LEN} (~{args.steps * BATCH * SEQ_LEN / stream_tokens:.0f} epochs)")
        start = time.perf_counter()
        with router_choices_without_gradients():
            loss = train(model, stream, args.steps, rng)
        minutes = (time.perf_counter() - start) / 60
        out = args.out / name if args.out else DEMOS[name]
        save_demo(name, model, config, tokenizer, out)
        size = sum(f.stat().st_size for f in out.iterdir()) / 1e6
        print(f"{name}: final loss {loss:.3f}, {minutes:.1f} min, {size:.2f} MB in {out}")
        print(f"{name}: memorised {memorisation(out, corpus):.0%} of sampled docstrings")
    return 0


if __name__ == "__main__":
    sys.exit(main())
