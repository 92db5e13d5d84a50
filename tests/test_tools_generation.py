"""Tool definitions at generation time: the record's ``tools`` reach the chat template when a model is asked,
through every path -- :func:`encode_chat`, the local engine, the novalign client's HTTP body and cache key,
and `novalign serve`'s chat completions (over real HTTP) -- as they do in training (tests/test_data.py)."""

from __future__ import annotations

import pytest
from cli_server import app_in_thread

WEATHER = {"type": "function", "function": {
    "name": "weather", "description": "the weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
MESSAGES = [{"role": "user", "content": "weather in paris?"}]


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from novalign.models.load import load_tokenizer

    return load_tokenizer(tiny_model_dir)


def test_encode_chat_shows_the_tools_or_refuses(tok):
    """The tiny template writes each tool as a JSON line in a tools block before the turns (models/tiny.py),
    so the prompt with tools is the prompt without them plus the tool's tokens; a template without a tools
    block is refused rather than silently dropping the definitions."""
    from novalign.data.chat import ToolsNotRendered
    from novalign.models.generate import encode_chat

    plain, with_tools = encode_chat(tok, MESSAGES), encode_chat(tok, MESSAGES, [WEATHER])
    assert len(with_tools) > len(plain) and '"weather"' in tok.decode(with_tools)
    assert '"weather"' not in tok.decode(plain)
    assert encode_chat(tok, MESSAGES, []) == plain  # an empty list is no tools
    saved = tok.chat_template
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    try:
        with pytest.raises(ToolsNotRendered):
            encode_chat(tok, MESSAGES, [WEATHER])
    finally:
        tok.chat_template = saved


def test_the_request_carries_tools_in_its_body_and_cache_key():
    """A request without tools keeps the cache key it had before tools existed (no `tools` field in it); with
    tools the key differs and the HTTP body has them; tools on a raw prompt are an error."""
    from novalign.llm.openai_compat import OpenAIBackend
    from novalign.llm.types import ChatRequest

    plain, tooled = ChatRequest(messages=MESSAGES), ChatRequest(messages=MESSAGES, tools=[WEATHER])
    assert "tools" not in plain.cache_fields() and tooled.cache_fields()["tools"] == [WEATHER]
    backend = OpenAIBackend("http://127.0.0.1:1/v1", "m", api_key="k")
    assert "tools" not in backend.body(plain) and backend.body(tooled)["tools"] == [WEATHER]
    assert ChatRequest(messages=MESSAGES, tools=[]).tools is None
    with pytest.raises(ValueError, match="raw prompt"):
        ChatRequest(prompt="continue", tools=[WEATHER])
    with pytest.raises(ValueError, match="list of OpenAI function definitions"):
        ChatRequest(messages=MESSAGES, tools=["weather"])


def test_serve_renders_tools_and_checks_them(tiny_model_dir, tok):
    """Over HTTP with the novalign client: usage.prompt_tokens of a chat with tools is exactly the length of
    ``encode_chat(messages, tools)`` (so the server rendered them), and more than without; a bad tool list is
    a 400 naming the field; the local engine renders the same ids."""
    import json
    import urllib.error
    import urllib.request

    from novalign.llm.client import LLMClient
    from novalign.llm.local import LocalEngine
    from novalign.llm.openai_compat import OpenAIBackend
    from novalign.llm.server import create_app
    from novalign.llm.types import ChatRequest
    from novalign.models.generate import encode_chat

    engine = LocalEngine(tiny_model_dir, device="cpu", max_batch_size=4, default_max_tokens=4)
    try:
        assert engine.request_rows(ChatRequest(messages=MESSAGES, tools=[WEATHER]))[0] == encode_chat(tok, MESSAGES, [WEATHER])
        with app_in_thread(create_app(engine, model_name="tiny")) as port:
            url = f"http://127.0.0.1:{port}/v1"
            client = LLMClient(OpenAIBackend(url, "tiny", api_key="x"), no_cache=True)
            tooled = client.chat(ChatRequest(messages=MESSAGES, tools=[WEATHER], max_tokens=2, temperature=0))
            plain = client.chat(ChatRequest(messages=MESSAGES, max_tokens=2, temperature=0))
            assert tooled.prompt_tokens == len(encode_chat(tok, MESSAGES, [WEATHER]))
            assert plain.prompt_tokens == len(encode_chat(tok, MESSAGES)) < tooled.prompt_tokens
            body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 2, "tools": [{"type": "function"}]}
            req = urllib.request.Request(f"{url}/chat/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            with pytest.raises(urllib.error.HTTPError) as bad:
                urllib.request.urlopen(req, timeout=30)
            assert bad.value.code == 400
            assert json.loads(bad.value.read())["error"]["param"] == "tools[0].function"
    finally:
        engine.close()


def test_rl_prompts_carry_their_tools_into_the_rollouts(tiny_model_dir, tok, tmp_path):
    """An RL prompt record's ``tools`` are checked as training data is (a bad one names file, line and field)
    and kept on the record; the rollout engine renders them into the prompt ids: a prompt with tools gets
    exactly ``encode_chat(messages, tools)``, one without gets the plain ids."""
    import json

    from novalign.data.io import DataError
    from novalign.models.generate import encode_chat
    from novalign.models.load import load_model
    from novalign.train.rl.inputs import load_prompts
    from novalign.train.rl.rollout import HFRollout

    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "weather in paris?", "tools": [WEATHER], "answer": "12"}) + "\n"
                    + json.dumps({"prompt": "weather in paris?"}) + "\n")
    records = load_prompts([str(path)])
    assert records[0][1] == {"tools": [WEATHER], "answer": "12"} and "tools" not in records[1][1]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x", "tools": [{"type": "function"}]}) + "\n")
    with pytest.raises(DataError) as info:
        load_prompts([str(bad)])
    assert (info.value.line, info.value.field) == (1, "tools[0].function")

    engine = HFRollout(load_model(tiny_model_dir), tok, batch_size=2)
    rollouts = engine.generate([m for m, _ in records], n=1, temperature=0.0, max_new_tokens=2, seed=0,
                               tools=[f.get("tools") for _, f in records])
    assert rollouts[0].prompt_ids == encode_chat(tok, MESSAGES, [WEATHER])
    assert rollouts[1].prompt_ids == encode_chat(tok, MESSAGES)


def test_novalign_generate_reads_tools_from_its_input(tmp_path):
    """`novalign generate --input`'s reader returns each record's checked tools beside its conversation."""
    import json

    from novalign.models.generate import conversations_from_file

    path = tmp_path / "in.jsonl"
    chat = MESSAGES + [{"role": "assistant", "content": "12"}]
    path.write_text(json.dumps({"messages": chat, "tools": [WEATHER]}) + "\n" + json.dumps({"messages": chat}) + "\n")
    convs, answers, tools = conversations_from_file(path)
    assert convs == [MESSAGES, MESSAGES] and answers == [None, None] and tools == [[WEATHER], None]
