"""The installed ``mlx-zoo`` console script, run as a new user would: ``mlx-zoo generate`` on the
shipped demo (no --model), ``mlx-zoo chat`` with piped input, and the errors a user sees."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlx_zoo.demos import available_demos

SCRIPT = Path(sys.executable).parent / "mlx-zoo"
CORPUS = Path(__file__).resolve().parents[2] / "scripts" / "demo_corpus.txt"
STATS = ("Prompt: ", "tokens-per-sec", "Generation: ", "Peak memory: ")


def mlx_zoo_cli(*args: str, stdin: str | None = None, cwd: Path | None = None):
    script = str(SCRIPT) if SCRIPT.exists() else shutil.which("mlx-zoo")
    assert script, "the mlx-zoo console script is not installed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # everything here must work offline
    return subprocess.run([script, *args], input=stdin, capture_output=True, text=True,
                          timeout=120, env=env, cwd=cwd)


def docstring(name: str) -> str:
    for line in CORPUS.read_text(encoding="utf-8").splitlines():
        key, _, doc = line.partition("\t")
        if key == name:
            return doc
    raise KeyError(name)


def test_generate_runs_the_demo_with_no_arguments(tmp_path):
    """The README's first command: no model, no prompt -- the qwen2 demo, offline, with the
    speed report at the end (run from an unrelated directory)."""
    proc = mlx_zoo_cli("generate", "--max-tokens", "24", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    text, _, report = out.partition("==========")
    assert len(text.strip()) > 10
    for marker in STATS:
        assert marker in report
    assert "Generation: " in report and "tokens" in report


def test_generate_chat_prompt_answers_with_the_learned_docstring():
    """Through the chat template (the default when the tokenizer has one), greedy: the demo
    answers a question it was trained on with the docstring, then stops on <|im_end|>."""
    name = "json.dumps"
    proc = mlx_zoo_cli("generate", "--model", "demo:qwen2", "--prompt",
                       f"What does {name} do?", "--max-tokens", "80")
    assert proc.returncode == 0, proc.stderr
    answer = proc.stdout.partition("\n==========")[0]
    assert answer.strip()[:25] == docstring(name)[:25]


def test_generate_plain_prompt_from_stdin_with_sampling_flags():
    """``--prompt -`` reads standard input (the prompt's token count proves it), plain text
    without the chat template; the same seed gives the same text."""
    import mlx_zoo

    prompt = "<|endoftext|>Return the"
    expected_tokens = len(mlx_zoo.load_tokenizer("demo:qwen2").encode(prompt))
    args = ("generate", "--no-chat-template", "--prompt", "-", "--temp", "0.7", "--top-p", "0.9",
            "--top-k", "50", "--min-p", "0.02", "--seed", "1", "--max-tokens", "16")
    runs = [mlx_zoo_cli(*args, stdin=prompt) for _ in range(2)]
    for proc in runs:
        assert proc.returncode == 0, proc.stderr
        assert f"Prompt: {expected_tokens} tokens" in proc.stdout
    texts = [proc.stdout.partition("==========")[0] for proc in runs]
    assert texts[0] == texts[1] and texts[0].strip()


@pytest.mark.parametrize("args, message", [
    (["--temp", "-1"], "temp must be >= 0"),
    (["--top-p", "0"], "top_p must be in (0, 1]"),
    (["--max-tokens", "0"], "max_tokens must be an integer >= 1"),
    (["--model", "demo:nonexistent"], "no such demo checkpoint"),
    (["--kv-bits", "7"], "kv_bits must be one of"),
])
def test_generate_reports_bad_arguments_without_a_traceback(args, message):
    proc = mlx_zoo_cli("generate", *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_chat_keeps_history_and_reads_piped_input():
    """Two questions, a reset, a third: each answered; end of input quits cleanly."""
    questions = ["What does json.dumps do?", "What does shutil.copy do?", "r",
                 "What does json.dumps do?"]
    proc = mlx_zoo_cli("chat", "--max-tokens", "60", stdin="\n".join(questions) + "\n")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert "(conversation reset)" in lines
    first = docstring("json.dumps")[:20]
    answers = [line for line in lines if line.startswith(first)]
    assert len(answers) == 2  # the same question, fresh after the reset, the same answer


def test_available_demos_are_listed_in_the_error():
    proc = mlx_zoo_cli("generate", "--model", "demo:nonexistent")
    for name in available_demos():
        assert f"demo:{name}" in proc.stderr
