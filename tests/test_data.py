"""Tests for chat-data reading, validation and tokenization (novalign.data.io / .chat).

Tokenizers are trained locally on generated text (no hub access): a tiny
byte-level BPE wrapped in a transformers fast tokenizer, with either a ChatML
or a Llama-3-style chat template.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from novalign.data.chat import (
    IGNORE_INDEX,
    ChatTemplateError,
    SampleTooLong,
    TokenizedSample,
    load_chat_dataset,
    normalize_messages,
    tokenize_conversation,
)
from novalign.data.io import DataError, SkipReport, iter_records

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ '<|begin_of_text|>' }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

# name -> (special tokens, end-of-turn token, template)
TEMPLATES: dict[str, tuple[list[str], str, str]] = {
    "chatml": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|im_end|>", CHATML_TEMPLATE),
    "llama3": (
        ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "<|eot_id|>",
        LLAMA3_TEMPLATE,
    ),
}

WORDS = (
    "the a fox dog cat model answer question user assistant system tool weather paris "
    "is are was sure here capital of france what why how many 12 345 café naïve 你好 世界 ☕ "
    "hello world think step by step result equals plus minus"
).split()


def _training_text(n_lines: int = 400) -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))) + rng.choice([".", "?", "!\n"])
            for _ in range(n_lines)]


def _build_tokenizer(special: list[str], eot: str, template: str) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(_training_text(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=eot, pad_token=special[0], clean_up_tokenization_spaces=False
    )
    tokenizer.add_special_tokens({"additional_special_tokens": [t for t in special if t != eot]})
    tokenizer.chat_template = template
    return tokenizer


@pytest.fixture(scope="module", params=sorted(TEMPLATES))
def chat_tok(request: pytest.FixtureRequest) -> tuple[PreTrainedTokenizerFast, str]:
    """(tokenizer, end-of-turn token) for each chat template."""
    special, eot, template = TEMPLATES[request.param]
    return _build_tokenizer(special, eot, template), eot


@pytest.fixture(scope="module")
def chatml() -> PreTrainedTokenizerFast:
    special, eot, template = TEMPLATES["chatml"]
    return _build_tokenizer(special, eot, template)


CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris. café ☕"},
    {"role": "user", "content": "how many 你好?"},
    {"role": "assistant", "content": " Sure: 12 plus 345 equals 357.\nthink step by step!"},
]


def _trained_runs(tokenizer: PreTrainedTokenizerFast, sample: TokenizedSample) -> list[str]:
    """Decode each maximal run of consecutive trained positions."""
    runs: list[list[int]] = []
    previous_trained = False
    for token, label in zip(sample.input_ids, sample.labels):
        trained = label != IGNORE_INDEX
        if trained:
            assert label == token
            if not previous_trained:
                runs.append([])
            runs[-1].append(token)
        previous_trained = trained
    return [tokenizer.decode(run, skip_special_tokens=False, clean_up_tokenization_spaces=False) for run in runs]


def _write_jsonl(path: Path, lines: list[object]) -> Path:
    """Write records (dicts are JSON-encoded, strings written verbatim) one per line."""
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    path.write_text(text + "\n", encoding="utf-8")
    return path


GOOD = {"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hello world"}]}


# --------------------------------------------------------------------------- masks


@pytest.mark.parametrize("train_on", ["all", "last"])
def test_trained_tokens_are_exactly_assistant_turns(chat_tok, train_on: str) -> None:
    tokenizer, eot = chat_tok
    sample = tokenize_conversation(tokenizer, CONVERSATION, max_length=512, train_on=train_on)  # type: ignore[arg-type]
    assert len(sample.input_ids) == len(sample.labels)
    assistant = [m["content"] + eot for m in CONVERSATION if m["role"] == "assistant"]
    expected = assistant if train_on == "all" else assistant[-1:]
    assert _trained_runs(tokenizer, sample) == expected
    # The whole sequence decodes to the template's rendering, unshifted labels align with ids.
    full = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert tokenizer.decode(sample.input_ids, skip_special_tokens=False) == full
    assert sample.num_trained_tokens == sum(label != IGNORE_INDEX for label in sample.labels)


def test_begin_of_text_appears_once() -> None:
    tokenizer = _build_tokenizer(*TEMPLATES["llama3"])
    sample = tokenize_conversation(tokenizer, CONVERSATION, max_length=512)
    bos = tokenizer.convert_tokens_to_ids("<|begin_of_text|>")
    assert sample.input_ids[0] == bos and sample.input_ids.count(bos) == 1
    assert sample.labels[0] == IGNORE_INDEX


def test_data_error_pickles() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(DataError("d.parquet", 3, "prompt", "missing field", reason="missing field")))
    assert (err.path, err.line, err.field, err.reason) == ("d.parquet", 3, "prompt", "missing field")
    assert str(err) == "d.parquet:row 3: field 'prompt': missing field"


def test_tool_turns_are_not_trained(chatml) -> None:
    messages = normalize_messages(
        {
            "messages": [
                {"role": "user", "content": "weather in paris?"},
                {"role": "assistant", "content": None,
                 "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
                {"role": "tool", "content": "sure 12", "tool_call_id": "call_1", "name": "weather"},
                {"role": "assistant", "content": "It is 12 in paris."},
            ]
        },
        path="x.jsonl",
        line=1,
    )
    assert messages[1]["content"] == "" and "tool_calls" in messages[1]
    assert messages[2]["tool_call_id"] == "call_1" and messages[2]["name"] == "weather"
    sample = tokenize_conversation(chatml, messages, max_length=512)
    assert _trained_runs(chatml, sample) == ["<|im_end|>", "It is 12 in paris.<|im_end|>"]


def test_sample_too_long(chatml) -> None:
    with pytest.raises(SampleTooLong) as info:
        tokenize_conversation(chatml, CONVERSATION, max_length=8)
    assert info.value.max_length == 8 and info.value.length > 8


def test_template_not_prefix_stable(chatml) -> None:
    # Renders every assistant turn except the final one with a different tag.
    chatml = chatml.__class__(tokenizer_object=chatml.backend_tokenizer, eos_token="<|im_end|>")
    chatml.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}[old]{% endif %}"
        "{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    with pytest.raises(ChatTemplateError, match="prefix-stable"):
        tokenize_conversation(chatml, CONVERSATION, max_length=512)


def test_tokenizer_requirements(chatml) -> None:
    no_template = chatml.__class__(tokenizer_object=chatml.backend_tokenizer, eos_token="<|im_end|>")
    no_template.chat_template = None
    with pytest.raises(ChatTemplateError, match="chat_template"):
        tokenize_conversation(no_template, CONVERSATION, max_length=512)

    class SlowTokenizer:
        is_fast = False
        chat_template = CHATML_TEMPLATE

    with pytest.raises(TypeError, match="fast"):
        tokenize_conversation(SlowTokenizer(), CONVERSATION, max_length=512)
    with pytest.raises(ValueError, match="train_on"):
        tokenize_conversation(chatml, CONVERSATION, max_length=512, train_on="first")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- normalization


def test_sharegpt_normalization() -> None:
    record = {
        "system": "be brief",
        "conversations": [
            {"from": "human", "value": "hi"},
            {"from": "function_call", "value": '{"name": "f"}'},
            {"from": "observation", "value": "42"},
            {"from": "gpt", "value": "it is 42"},
            {"from": "user", "value": "thanks"},
            {"from": "model", "value": "you are welcome"},
        ],
    }
    assert normalize_messages(record, path="s.jsonl", line=1) == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": '{"name": "f"}'},
        {"role": "tool", "content": "42"},
        {"role": "assistant", "content": "it is 42"},
        {"role": "user", "content": "thanks"},
        {"role": "assistant", "content": "you are welcome"},
    ]


def test_prompt_response_normalization() -> None:
    assert normalize_messages({"prompt": "p", "response": "r"}, path="f.jsonl", line=1) == [
        {"role": "user", "content": "p"},
        {"role": "assistant", "content": "r"},
    ]
    assert normalize_messages({"system": "s", "prompt": "p", "response": "r"}, path="f.jsonl", line=1)[0] == {
        "role": "system",
        "content": "s",
    }


@pytest.mark.parametrize(
    ("record", "field", "problem"),
    [
        ({"text": "x"}, None, "unknown record format"),
        ({"prompt": "p"}, "response", "missing field"),
        ({"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]}, "messages[0].content", "missing"),
        ({"messages": [{"role": "user", "content": ["x"]}, {"role": "assistant", "content": "a"}]},
         "messages[0].content", "must be a string"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "unknown role"),
        ({"messages": [{"role": "assistant", "content": "a"}]}, "messages[0].role", "must start with a user"),
        ({"messages": [{"role": "user", "content": "u"}, {"role": "system", "content": "s"},
                       {"role": "assistant", "content": "a"}]}, "messages[1].role", "first message"),
        ({"messages": [{"role": "user", "content": "u"}, {"role": "user", "content": "u"},
                       {"role": "assistant", "content": "a"}]}, "messages[1].role", "cannot follow"),
        ({"messages": [{"role": "user", "content": "u"}, {"role": "tool", "content": "t"},
                       {"role": "assistant", "content": "a"}]}, "messages[1].role", "cannot follow"),
        ({"messages": [{"role": "user", "content": "u"}]}, None, "no assistant turn"),
        ({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"},
                       {"role": "user", "content": "u"}]}, "messages[2].role", "last message"),
        ({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": " \n"}]},
         "messages[1].content", "empty assistant turn"),
        ({"conversations": [{"from": "human", "value": "u"}, {"from": "bot", "value": "a"}]},
         "conversations[1].from", "unknown role"),
        ({"conversations": [{"from": "gpt", "value": "a"}]}, "conversations[0].from", "must start with a user"),
    ],
)
def test_normalize_rejects(record: dict[str, Any], field: str | None, problem: str) -> None:
    with pytest.raises(DataError) as info:
        normalize_messages(record, path="data/train.jsonl", line=17)
    err = info.value
    assert (err.path, err.line, err.field) == ("data/train.jsonl", 17, field)
    assert problem in err.problem
    assert str(err).startswith("data/train.jsonl:17: ")
    if field:
        assert f"field '{field}'" in str(err)


# --------------------------------------------------------------------------- files


BAD_RECORDS: dict[str, tuple[object, str | None, str]] = {
    "malformed JSON": ('{"messages": [', None, "malformed JSON"),
    "not an object": ("[1, 2]", None, "expected a JSON object"),
    "missing field": ({"prompt": "hello"}, "response", "missing field"),
    "wrong role order": (
        {"messages": [{"role": "user", "content": "u"}, {"role": "user", "content": "u"},
                      {"role": "assistant", "content": "a"}]},
        "messages[1].role",
        "cannot follow",
    ),
    "empty assistant turn": ({"prompt": "hello", "response": "   "}, "response", "empty assistant turn"),
    "too long": ({"prompt": "hello " * 200, "response": "world"}, None, "max_length=64"),
    "special token": ({"prompt": "hi <|im_end|> there", "response": "ok"}, "prompt", "special token"),
}


@pytest.mark.parametrize("kind", sorted(BAD_RECORDS))
def test_bad_record_raises_with_location(tmp_path: Path, chatml, kind: str) -> None:
    bad, field, problem = BAD_RECORDS[kind]
    path = _write_jsonl(tmp_path / "train.jsonl", [GOOD, "", "  ", bad, GOOD])  # bad record on line 4
    with pytest.raises(DataError) as info:
        load_chat_dataset([str(path)], chatml, max_length=64)
    err = info.value
    message = str(err)
    assert "train.jsonl" in message and ":4:" in message and problem in message
    assert err.path == str(path) and err.line == 4 and err.field == field


def test_skip_invalid_counts_by_reason(tmp_path: Path, chatml) -> None:
    lines: list[object] = [GOOD]
    for bad, _field, _problem in BAD_RECORDS.values():
        lines += [bad, GOOD]
    lines.append(BAD_RECORDS["missing field"][0])
    path = _write_jsonl(tmp_path / "mixed.jsonl", lines)
    samples, report = load_chat_dataset([path], chatml, max_length=64, skip_invalid=True)
    assert len(samples) == len(BAD_RECORDS) + 1
    assert report.total == len(BAD_RECORDS) + 1
    assert report.counts["missing field"] == 2
    for reason in ("malformed JSON", "not a JSON object", "wrong role order", "empty assistant turn",
                   "sequence longer than max_length", "special token in content"):
        assert report.counts[reason] == 1, reason
    summary = report.summary()
    assert "skipped 8 invalid records" in summary and "mixed.jsonl:2:" in summary
    # Every kept sample trains exactly on the assistant answer.
    assert all(_trained_runs(chatml, s) == ["hello world<|im_end|>"] for s in samples)


def test_skip_report_basics() -> None:
    report = SkipReport(max_examples=1)
    assert report.total == 0 and report.summary() == "no invalid records skipped"
    report.add(DataError("a.jsonl", 3, "x", "bad x", reason="bad"))
    report.add(DataError("a.jsonl", 5, None, "bad y", reason="bad"))
    assert report.total == 2 and report.counts == {"bad": 2}
    assert report.examples == ["a.jsonl:3: field 'x': bad x"]


def test_iter_records_jsonl(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "d.json", [{"a": 1}, "", {"a": 2}])
    assert list(iter_records(path)) == [(1, {"a": 1}), (3, {"a": 2})]
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        list(iter_records(tmp_path / "missing.jsonl"))
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported data file extension"):
        list(iter_records(tmp_path / "d.csv"))
    report = SkipReport()
    path = _write_jsonl(tmp_path / "e.jsonl", ["{oops", {"a": 1}, "42"])
    assert list(iter_records(path, skip=report)) == [(2, {"a": 1})]
    assert report.counts == {"malformed JSON": 1, "not a JSON object": 1}


def test_parquet(tmp_path: Path, chatml) -> None:
    rows = [
        {"messages": [{"role": "user", "content": "hello", "tool_call_id": None},
                      {"role": "assistant", "content": "hello world", "tool_call_id": None}]},
        {"messages": [{"role": "user", "content": "hello", "tool_call_id": None},
                      {"role": "assistant", "content": "", "tool_call_id": None}]},
        {"messages": [{"role": "user", "content": "what", "tool_call_id": None},
                      {"role": "assistant", "content": "the fox", "tool_call_id": None}]},
    ]
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=2)
    assert [row for row, _ in iter_records(path)] == [1, 2, 3]

    with pytest.raises(DataError) as info:
        load_chat_dataset([path], chatml, max_length=64)
    assert info.value.line == 2 and "train.parquet" in str(info.value) and "row 2" in str(info.value)
    assert "empty assistant turn" in str(info.value)

    samples, report = load_chat_dataset([path], chatml, max_length=64, skip_invalid=True)
    assert report.counts == {"empty assistant turn": 1}
    assert [_trained_runs(chatml, s) for s in samples] == [["hello world<|im_end|>"], ["the fox<|im_end|>"]]


# --------------------------------------------------------------------------- tools

# A ChatML variant that shows tools (one line per tool: name(parameters): description) and tool calls.
TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>tools\n{% for t in tools %}"
    "{{ t['function']['name'] + '(' + (t['function']['parameters']['properties'] | list | join(', ')) + '): ' }}"
    "{{ t['function']['description'] + '\\n' }}{% endfor %}{{ '<|im_end|>\\n' }}{% endif %}"
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] }}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}"
    "{{ '<call>' + c['function']['name'] + ' ' + c['function']['arguments'] + '</call>' }}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
WEATHER = {"type": "function", "function": {
    "name": "weather", "description": "the weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TOOL_RECORD = {"tools": [WEATHER], "messages": [
    {"role": "user", "content": "weather in paris?"},
    {"role": "assistant", "content": None,
     "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": '{"city": "paris"}'}}]},
    {"role": "tool", "content": "sure 12", "tool_call_id": "call_1"},
    {"role": "assistant", "content": "It is 12 in paris."},
]}


@pytest.fixture(scope="module")
def tools_tok() -> PreTrainedTokenizerFast:
    special, eot, _ = TEMPLATES["chatml"]
    return _build_tokenizer(special, eot, TOOLS_TEMPLATE)


def test_tools_reach_the_template_and_are_not_trained(tools_tok, tmp_path) -> None:
    """The record's tools are rendered by the template, by hand:
    "<|im_start|>tools\\nweather(city): the weather in a city\\n<|im_end|>\\n" and then the turns; the tokens are
    exactly that text's tokens. Trained: only the two assistant turns (the tool call, the answer), each with its
    <|im_end|>; the tools block, the user turn and the tool result are not."""
    path = _write_jsonl(tmp_path / "tools.jsonl", [TOOL_RECORD])
    samples, _ = load_chat_dataset([path], tools_tok, max_length=512)
    expected = ("<|im_start|>tools\nweather(city): the weather in a city\n<|im_end|>\n"
                "<|im_start|>user\nweather in paris?<|im_end|>\n"
                '<|im_start|>assistant\n<call>weather {"city": "paris"}</call><|im_end|>\n'
                "<|im_start|>tool\nsure 12<|im_end|>\n"
                "<|im_start|>assistant\nIt is 12 in paris.<|im_end|>\n")
    sample = samples[0]
    assert sample.input_ids == tools_tok(expected, add_special_tokens=False)["input_ids"]
    assert _trained_runs(tools_tok, sample) == ['<call>weather {"city": "paris"}</call><|im_end|>',
                                                "It is 12 in paris.<|im_end|>"]
    header = len(tools_tok("<|im_start|>tools\nweather(city): the weather in a city\n<|im_end|>\n",
                           add_special_tokens=False)["input_ids"])
    assert all(label == IGNORE_INDEX for label in sample.labels[:header])
    # without tools the same conversation renders no tools block: the tools did change the tokens
    plain = tokenize_conversation(tools_tok, normalize_messages(TOOL_RECORD, path="t", line=1), max_length=512)
    assert len(plain.input_ids) < len(sample.input_ids) and plain.num_trained_tokens == sample.num_trained_tokens


def test_tools_as_a_json_string_are_read_too(tools_tok, tmp_path) -> None:
    path = _write_jsonl(tmp_path / "t.jsonl", [TOOL_RECORD, {**TOOL_RECORD, "tools": json.dumps([WEATHER])}])
    samples, _ = load_chat_dataset([path], tools_tok, max_length=512)
    assert samples[0].input_ids == samples[1].input_ids


def _tool(**function: Any) -> dict:
    return {"type": "function", "function": {**WEATHER["function"], **function}}


@pytest.mark.parametrize("tools, field, problem", [
    ({"weather": WEATHER}, "tools", "must be a list"),
    ("[not json", "tools", "JSON list of tools"),
    ([{"type": "retrieval", "function": WEATHER["function"]}], "tools[0].type", "must be 'function'"),
    ([{"type": "function"}], "tools[0].function", "must be an object"),
    ([_tool(name="get weather")], "tools[0].function.name", "1-64 letters"),
    ([_tool(description=3)], "tools[0].function.description", "must be a string"),
    ([_tool(parameters={"type": "array"})], "tools[0].function.parameters", '"type": "object"'),
    ([_tool(parameters={"type": "object", "properties": {"city": {"type": "text"}}})],
     "tools[0].function.parameters.properties.city.type", "not a valid JSON Schema"),
    ([_tool(paramters={})], "tools[0].function", "unknown fields ['paramters']"),
    ([WEATHER, WEATHER], "tools[1].function.name", "duplicate tool name 'weather'"),
    ([_tool(name="forecast")], "messages[1].tool_calls[0].function.name", "calls 'weather', which is not among"),
])
def test_bad_tools_name_file_line_and_field(tools_tok, tmp_path, tools, field, problem) -> None:
    path = _write_jsonl(tmp_path / "bad.jsonl", [GOOD, {**TOOL_RECORD, "tools": tools}])
    with pytest.raises(DataError) as info:
        load_chat_dataset([path], tools_tok, max_length=512)
    assert (info.value.path, info.value.line, info.value.field) == (str(path), 2, field)
    assert problem in info.value.problem


def test_a_template_that_ignores_tools_is_an_error_not_a_silent_drop(chatml, tmp_path) -> None:
    """The plain ChatML template has no `tools` in it: the record is refused (or skipped and counted), never
    trained without its tool definitions."""
    path = _write_jsonl(tmp_path / "t.jsonl", [GOOD, TOOL_RECORD])
    with pytest.raises(DataError, match=r"t.jsonl:2: field 'tools': the chat template renders the conversation the same"):
        load_chat_dataset([path], chatml, max_length=512)
    samples, report = load_chat_dataset([path], chatml, max_length=512, skip_invalid=True)
    assert len(samples) == 1 and report.counts == {"chat template ignores tools": 1}


TOOL_PAIR = {"tools": [WEATHER], "prompt": [{"role": "user", "content": "weather in paris?"}],
             "chosen": {"role": "assistant", "content": "",
                        "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": '{"city": "paris"}'}}]},
             "rejected": "I cannot look that up."}


def test_preference_records_show_their_tools_as_sft_does(tools_tok, tmp_path) -> None:
    """A pair with tools tokenizes exactly as the SFT path tokenizes the same conversation with the same tools
    (the tools block first, by hand: "<|im_start|>tools\nweather(city): the weather in a city\n<|im_end|>\n");
    the same pair without tools is a different prompt (kept, not a duplicate); KTO samples and the scoring
    reader (rm score) carry the tools too."""
    from novalign.data.chat import tokenize_conversation as tok_conv
    from novalign.data.preference import load_preference_dataset, load_unpaired_dataset, parse_prompt_response

    plain = {k: v for k, v in TOOL_PAIR.items() if k != "tools"}
    path = _write_jsonl(tmp_path / "p.jsonl", [TOOL_PAIR, plain])
    data = load_preference_dataset([path], tools_tok, max_length=512)
    assert len(data.pairs) == 2 and data.num_duplicates == 0
    with_tools, without = data.pairs
    assert with_tools.tools == [WEATHER] and without.tools is None
    header = "<|im_start|>tools\nweather(city): the weather in a city\n<|im_end|>\n"
    assert tools_tok.decode(with_tools.chosen.input_ids).startswith(header)
    assert not tools_tok.decode(without.chosen.input_ids).startswith(header)
    sft = tok_conv(tools_tok, TOOL_PAIR["prompt"] + [TOOL_PAIR["chosen"]], max_length=512, train_on="last",
                   tools=[WEATHER])
    assert with_tools.chosen.input_ids == sft.input_ids[: len(with_tools.chosen.input_ids)]
    kto = load_unpaired_dataset([path], tools_tok, max_length=512)
    assert [s.tools for s in kto.samples] == [[WEATHER], [WEATHER], None, None]
    prompt, response, tools = parse_prompt_response(
        {"tools": [WEATHER], "prompt": "weather in paris?", "response": "sunny"}, path="s.jsonl", line=1)
    assert tools == [WEATHER] and response["content"] == "sunny" and prompt[0]["role"] == "user"


@pytest.mark.parametrize("record, field, problem", [
    ({**TOOL_PAIR, "tools": [_tool(name="forecast")]}, "chosen.tool_calls[0].function.name", "calls 'weather'"),
    ({**TOOL_PAIR, "tools": [{"type": "function"}]}, "tools[0].function", "must be an object"),
])
def test_bad_tools_on_preference_records_name_the_field(tools_tok, tmp_path, record, field, problem) -> None:
    from novalign.data.preference import load_preference_dataset

    path = _write_jsonl(tmp_path / "bad.jsonl", [{k: v for k, v in TOOL_PAIR.items() if k != "tools"}, record])
    with pytest.raises(DataError) as info:
        load_preference_dataset([path], tools_tok, max_length=512)
    assert (info.value.path, info.value.line, info.value.field) == (str(path), 2, field)
    assert problem in info.value.problem


def test_a_preference_template_that_ignores_tools_is_an_error(chatml, tmp_path) -> None:
    from novalign.data.preference import load_preference_dataset

    path = _write_jsonl(tmp_path / "t.jsonl", [TOOL_PAIR])
    with pytest.raises(DataError, match=r"t.jsonl:1: field 'tools': the chat template renders"):
        load_preference_dataset([path], chatml, max_length=512)


def test_renders_per_conversation_are_two_per_assistant_turn(chatml) -> None:
    """CONVERSATION has 2 assistant turns (messages 2 and 4, the last message). Each turn needs the render up
    to its generation prompt and the render through its end; the latter for the last turn is the full render
    itself, which is reused: 1 full + 2 prefixes + 1 through (turn 2) = 4 renders (it used to be 5).
    A single-turn conversation: full + its prefix = 2 (was 3). The tokenization is the same either way."""
    calls = []
    real = chatml.apply_chat_template

    def counting(*args, **kwargs):
        calls.append(kwargs.get("add_generation_prompt"))
        return real(*args, **kwargs)

    chatml.apply_chat_template = counting
    try:
        sample = tokenize_conversation(chatml, CONVERSATION, max_length=4096)
        assert len(calls) == 4
        calls.clear()
        single = tokenize_conversation(chatml, CONVERSATION[:3], max_length=4096)
        assert len(calls) == 2
    finally:
        del chatml.apply_chat_template
    assert sample == tokenize_conversation(chatml, CONVERSATION, max_length=4096)
    assert single.input_ids == sample.input_ids[: len(single.input_ids)]
