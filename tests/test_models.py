"""Tests for tiny tokenizers/models, the load/save path and the bundled demo data."""

from __future__ import annotations

import json
import random
import re
import unicodedata
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from novalign.data.demo import ASSETS_DIR, COUNTRIES, make_demo_conversations
from novalign.models.load import ModelDirError, load_model, load_tokenizer, resolve_dtype, save_pretrained_dir
from novalign.models.tiny import default_training_texts, init_tiny_model, tiny_config, train_tokenizer

COMBOS = [("llama", "chatml"), ("llama", "llama3"), ("qwen2", "chatml"), ("qwen2", "llama3")]

CONVO = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2 + 3 * 4?"},
    {"role": "assistant", "content": "3 * 4 = 12, 2 + 12 = 14. The answer is 14."},
    {"role": "tool", "content": "{\"ok\": true}"},
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "You're welcome."},
]

EXPECTED = {
    "chatml": (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2 + 3 * 4?<|im_end|>\n"
        "<|im_start|>assistant\n3 * 4 = 12, 2 + 12 = 14. The answer is 14.<|im_end|>\n"
        "<|im_start|>tool\n{\"ok\": true}<|im_end|>\n"
        "<|im_start|>user\nThanks!<|im_end|>\n"
        "<|im_start|>assistant\nYou're welcome.<|im_end|>\n"
    ),
    "llama3": (
        "<|begin_of_text|>"
        "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2 + 3 * 4?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n3 * 4 = 12, 2 + 12 = 14. The answer is 14.<|eot_id|>"
        "<|start_header_id|>tool<|end_header_id|>\n\n{\"ok\": true}<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nThanks!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nYou're welcome.<|eot_id|>"
    ),
}
GEN_PROMPT = {"chatml": "<|im_start|>assistant\n", "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n"}
EOT = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>"}


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return list(default_training_texts())


@pytest.fixture(scope="module")
def tokenizers(texts: list[str]) -> dict[tuple[str, str], object]:
    """In-memory tokenizers keyed by (pretokenizer, template)."""
    return {
        (pre, tpl): train_tokenizer(texts, template=tpl, pretokenizer=pre)
        for pre in ("bytelevel", "qwen2")
        for tpl in ("chatml", "llama3")
    }


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {(a, t): init_tiny_model(root / f"{a}-{t}", arch=a, template=t) for a, t in COMBOS}


def _random_unicode(rng: random.Random, n: int) -> str:
    ranges = [(0x20, 0x7E), (0x00, 0x1F), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x4E00, 0x4FFF),
              (0x0300, 0x036F), (0x1F300, 0x1F6FF), (0x2000, 0x206F), (0xAC00, 0xAD00)]
    out = []
    for _ in range(n):
        lo, hi = rng.choice(ranges)
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


# --------------------------------------------------------------------------- tokenizer


@pytest.mark.parametrize("pre", ["bytelevel", "qwen2"])
def test_tokenizer_round_trips_unicode(tokenizers: dict, pre: str) -> None:
    tok = tokenizers[(pre, "chatml")]
    rng = random.Random(0)
    samples = [
        "", " ", "  leading and trailing  ", "tabs\tand\nnew\r\nlines\n\n\n",
        "naïve café — “quotes” ½ ©", "中文字符和日本語のテキスト", "emoji 🙂🚀👩‍👩‍👧 flags 🇯🇵",
        "e\u0301 combining vs \u00e9 precomposed", "zero\u200bwidth\ufeffbom", "x = {'a': [1, 2.5e-3]} // ok?",
        "<|im_start|> not at start <|im_end|> <|endoftext|>", "12345678901234567890 + 3 * 7",
    ] + [_random_unicode(rng, rng.randint(1, 60)) for _ in range(100)]
    for text in samples:
        expected = unicodedata.normalize("NFC", text) if pre == "qwen2" else text
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == expected


def test_tokenizer_special_tokens(tokenizers: dict) -> None:
    chatml = tokenizers[("bytelevel", "chatml")]
    assert (chatml.eos_token, chatml.pad_token, chatml.bos_token) == ("<|im_end|>", "<|endoftext|>", None)
    assert len(chatml) == 2048
    assert chatml.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    assert chatml("hi there")["input_ids"] == chatml("hi there", add_special_tokens=False)["input_ids"]

    llama3 = tokenizers[("bytelevel", "llama3")]
    assert (llama3.eos_token, llama3.bos_token) == ("<|eot_id|>", "<|begin_of_text|>")
    assert llama3.pad_token == "<|finetune_right_pad_id|>"
    # Like the real Llama 3 tokenizer, plain encoding prepends BOS; chat rendering must not double it.
    assert llama3("hi")["input_ids"][0] == llama3.bos_token_id
    ids = llama3.apply_chat_template(CONVO[:2], tokenize=True, return_dict=False)
    assert ids.count(llama3.bos_token_id) == 1 and ids[0] == llama3.bos_token_id


def test_tokenizer_training_is_deterministic(texts: list[str], tokenizers: dict) -> None:
    again = train_tokenizer(texts, template="chatml")
    assert again.backend_tokenizer.to_str() == tokenizers[("bytelevel", "chatml")].backend_tokenizer.to_str()


def test_tokenizer_rejects_bad_args(texts: list[str]) -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(texts, vocab_size=100)
    with pytest.raises(ValueError, match="template"):
        train_tokenizer(texts, template="alpaca")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- chat templates


@pytest.mark.parametrize("template", ["chatml", "llama3"])
def test_chat_template_renders_expected_string(tokenizers: dict, template: str) -> None:
    tok = tokenizers[("bytelevel", template)]
    assert tok.apply_chat_template(CONVO, tokenize=False) == EXPECTED[template]
    prompt = tok.apply_chat_template(CONVO[:5], tokenize=False, add_generation_prompt=True)
    assert prompt == EXPECTED[template][: len(prompt)]
    assert prompt.endswith(GEN_PROMPT[template])
    assert EXPECTED[template].startswith(prompt)


@pytest.mark.parametrize("template", ["chatml", "llama3"])
def test_chat_template_is_prefix_stable(tokenizers: dict, template: str) -> None:
    tok = tokenizers[("bytelevel", template)]
    convos = [CONVO] + [r["messages"] for r in make_demo_conversations(40, seed=3) if len(r["messages"]) > 2]
    for messages in convos:
        full = tok.apply_chat_template(messages, tokenize=False)
        for i in range(1, len(messages) + 1):
            assert full.startswith(tok.apply_chat_template(messages[:i], tokenize=False))
            if i < len(messages) and messages[i]["role"] == "assistant":
                prompt = tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
                assert full.startswith(prompt)


@pytest.mark.parametrize("template", ["chatml", "llama3"])
def test_chat_template_assistant_mask_and_bad_role(tokenizers: dict, template: str) -> None:
    tok = tokenizers[("bytelevel", template)]
    enc = tok.apply_chat_template(CONVO, return_dict=True, return_assistant_tokens_mask=True)
    kept = [i for i, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    assert tok.decode(kept) == f"{CONVO[2]['content']}{EOT[template]}{CONVO[5]['content']}{EOT[template]}"
    with pytest.raises(Exception, match="Unsupported chat role"):
        tok.apply_chat_template([{"role": "narrator", "content": "x"}], tokenize=False)


# --------------------------------------------------------------------------- tiny models


@pytest.mark.parametrize(("arch", "template"), COMBOS)
def test_init_tiny_model_loads_unchanged(tiny_dirs: dict, tokenizers: dict, arch: str, template: str) -> None:
    path = tiny_dirs[(arch, template)]
    tok = AutoTokenizer.from_pretrained(path)
    ref = tokenizers[("qwen2" if arch == "qwen2" else "bytelevel", template)]
    assert len(tok) == len(ref) == 2048
    assert tok.chat_template == ref.chat_template
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (
        ref.bos_token, ref.eos_token, ref.pad_token, None)
    for text in ["Hello, world!  What is 17 + 25 * 3?\n", "Ünïcödé 中文 🙂", EXPECTED[template]]:
        assert tok(text)["input_ids"] == ref(text)["input_ids"]
    assert tok.apply_chat_template(CONVO, tokenize=False) == EXPECTED[template]

    model = AutoModelForCausalLM.from_pretrained(path)
    cfg = model.config
    assert cfg.model_type == arch and cfg.vocab_size == len(tok) and not cfg.tie_word_embeddings
    assert cfg.eos_token_id == tok.eos_token_id and cfg.pad_token_id == tok.pad_token_id
    assert cfg.bos_token_id == tok.bos_token_id
    assert tok.eos_token_id in model.generation_config.eos_token_id

    inputs = tok.apply_chat_template(CONVO[:2], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]


def test_tiny_model_weights_depend_only_on_seed(tmp_path: Path) -> None:
    kwargs = dict(arch="qwen2", template="chatml", texts=["tiny corpus " * 20, "more words here"], vocab_size=300)
    rng_state = torch.random.get_rng_state()
    a = AutoModelForCausalLM.from_pretrained(init_tiny_model(tmp_path / "a", seed=7, **kwargs)).state_dict()
    assert torch.equal(torch.random.get_rng_state(), rng_state)  # global RNG untouched
    b = AutoModelForCausalLM.from_pretrained(init_tiny_model(tmp_path / "b", seed=7, **kwargs)).state_dict()
    c = AutoModelForCausalLM.from_pretrained(init_tiny_model(tmp_path / "c", seed=8, **kwargs)).state_dict()
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "c" / "tokenizer.json").read_bytes()


def test_tiny_config_validates(tokenizers: dict) -> None:
    tok = tokenizers[("bytelevel", "chatml")]
    cfg = tiny_config(tok, arch="qwen2", hidden_size=32, num_heads=4, num_kv_heads=1)
    assert cfg.rope_parameters["rope_type"] == "default" and cfg.bos_token_id is None
    with pytest.raises(ValueError, match="divisible"):
        tiny_config(tok, hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="arch"):
        tiny_config(tok, arch="gpt2")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- load / save


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_save_merged_lora_reloads_as_plain_model(tiny_dirs: dict, tmp_path: Path, arch: str) -> None:
    from peft import LoraConfig, PeftModel, get_peft_model

    src = tiny_dirs[(arch, "chatml")]
    tok = load_tokenizer(src)
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    peft_model = get_peft_model(load_model(src), lora).eval()
    ids = torch.tensor([tok("What is the capital of Veloria?")["input_ids"]])
    with torch.no_grad():
        with peft_model.disable_adapter():
            plain = peft_model(ids).logits
        expected = peft_model(ids).logits
    assert not torch.allclose(plain, expected)  # the adapter really changes the outputs

    out = save_pretrained_dir(peft_model, tok, tmp_path / "merged")
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert not (out / "adapter_config.json").exists()
    assert isinstance(peft_model, PeftModel)  # the in-memory model is still a live PEFT model
    with torch.no_grad():
        assert torch.equal(peft_model(ids).logits, expected)

    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in k for k in reloaded.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, expected, atol=1e-5, rtol=1e-5)
    assert AutoTokenizer.from_pretrained(out).chat_template == tok.chat_template

    readapted = PeftModel.from_pretrained(load_model(src), out / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(readapted(ids).logits, expected, atol=1e-5, rtol=1e-5)


def test_save_is_atomic_and_replaces(tiny_dirs: dict, tmp_path: Path) -> None:
    src = tiny_dirs[("llama", "chatml")]
    model, tok = load_model(src), load_tokenizer(src)
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "stale.txt").write_text("old")
    save_pretrained_dir(model, tok, dest, dtype="bf16")
    assert not (dest / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp/old dirs left behind
    assert next(model.parameters()).dtype == torch.float32  # in-memory model untouched
    half = load_model(dest, dtype="bfloat16")
    assert next(half.parameters()).dtype == torch.bfloat16
    assert json.loads((dest / "config.json").read_text())["dtype"] == "bfloat16"

    class Boom(RuntimeError):
        pass

    def explode(*args: object, **kwargs: object) -> None:
        raise Boom

    tok.save_pretrained = explode  # type: ignore[method-assign]
    with pytest.raises(Boom):
        save_pretrained_dir(model, tok, dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert load_model(dest, dtype=torch.bfloat16) is not None  # previous contents intact


def test_load_errors_are_actionable(tiny_dirs: dict, tmp_path: Path) -> None:
    with pytest.raises(ModelDirError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(ModelDirError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(ModelDirError, match="PEFT adapter"):
        load_model(tmp_path / "adapter")

    src = tiny_dirs[("llama", "llama3")]
    bare = tmp_path / "bare"
    save_pretrained_dir(load_model(src), load_tokenizer(src), bare)
    (bare / "chat_template.jinja").unlink()
    with pytest.raises(ModelDirError, match=re.escape("chat_template.jinja")):
        load_tokenizer(bare)
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("float8")


def test_load_model_rejects_non_causal_lm(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(tmp_path / "bert")
    with pytest.raises(ModelDirError, match="not a causal LM"):
        load_model(tmp_path / "bert")


# --------------------------------------------------------------------------- demo data


def test_demo_conversations_are_seeded_and_checkable() -> None:
    a, b = make_demo_conversations(300, seed=5), make_demo_conversations(300, seed=5)
    assert a == b and a != make_demo_conversations(300, seed=6)
    for rec in a:
        msgs = rec["messages"]
        assert msgs[-1]["role"] == "assistant" and rec["answer"] in msgs[-1]["content"]
        turns = [m["role"] for m in msgs if m["role"] != "system"]
        assert turns == ["user", "assistant"] * (len(turns) // 2) and len(turns) in (2, 4)
        if rec["task"] == "arithmetic":
            expr = re.search(r"([\d(][\d +*()-]*\d\)?)", msgs[-2]["content"]).group(1)
            assert rec["answer"] == str(eval(expr))  # noqa: S307 - digits and operators only
        if rec["task"] == "fact":
            values = {v.upper() if rec["answer"].isupper() else v for f in COUNTRIES.values() for v in f.values()}
            assert rec["answer"] in values
    tasks = {r["task"] for r in a}
    assert {"arithmetic", "uppercase", "lowercase", "reverse", "fact"} <= tasks
    assert any(t.startswith("multi_turn/") for t in tasks)
    assert any(r["messages"][0]["role"] == "system" for r in a)


@pytest.mark.parametrize(("name", "n", "seed"), [("demo_sft.jsonl", 1500, 0), ("demo_sft_eval.jsonl", 100, 1)])
def test_bundled_demo_files_match_generator(name: str, n: int, seed: int) -> None:
    lines = (ASSETS_DIR / name).read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == make_demo_conversations(n, seed=seed)


def test_corpus_size() -> None:
    size = (ASSETS_DIR / "corpus.txt").stat().st_size
    assert 30_000 <= size <= 60_000


def test_generate_command_reads_a_chat_file_and_checks_answers(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`novalign generate --input`: the first --limit records, each without its final assistant turn (the prompt
    is the last user turn before it); `correct` only where a record has an `answer`, true when the reply
    contains it case-insensitively. A bad third line is never read with --limit 2, and named without it."""
    from typer.testing import CliRunner

    from novalign.cli import app
    from novalign.models.generate import answer_rows

    rows = answer_rows([[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]],
                       ["The answer is PARIS.", "no"], [" paris", None])
    assert rows == [{"prompt": "a", "reply": "The answer is PARIS.", "answer": " paris", "correct": True},
                    {"prompt": "b", "reply": "no"}]
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A"}],
                                "answer": "zzzz-not-said"}) + "\n"
                    + json.dumps({"messages": [{"role": "user", "content": "Q0"}, {"role": "assistant", "content": "A0"},
                                             {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}]})
                    + "\n" + "{broken\n")
    out = tmp_path / "replies.jsonl"
    result = CliRunner().invoke(app, ["generate", str(tiny_model_dir), "--input", str(data), "--limit", "2",
                                      "--output", str(out), "--max-new-tokens", "2"])
    assert result.exit_code == 0, result.output
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in written] == ["Q1", "Q2"]
    assert written[0]["correct"] is False and "correct" not in written[1]
    assert "answer found in 0/1 replies" in result.output
    result = CliRunner().invoke(app, ["generate", str(tiny_model_dir), "--input", str(data)])
    assert result.exit_code == 2 and "in.jsonl:3" in result.output
