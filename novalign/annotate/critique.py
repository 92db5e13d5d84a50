"""The optional LLM critique shown beside a response (report 3.2, human-machine collaboration: the model points
at likely errors, the annotator decides). It goes through the one LLM client, so its SQLite cache, retries and
limits apply; the app also keeps the text on the response row, so each response is critiqued once."""

from __future__ import annotations

import threading
from typing import Any

from novalign.config import LLMConfig
from novalign.llm import LLMClient

_LOCK = threading.Lock()

INSTRUCTION = ("You review an AI assistant's answer for a human annotator. List its factual errors, logical "
               "errors and missing parts, briefly, quoting the words at fault. Say 'No problems found.' if none.")


def critique_messages(prompt: list[dict[str, str]], response: str) -> list[dict[str, str]]:
    """The conversation shown to the critic: the instruction, then the dialogue and the answer as text."""
    dialogue = "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in prompt)
    return [{"role": "system", "content": INSTRUCTION},
            {"role": "user", "content": f"Conversation:\n{dialogue}\n\nAnswer to review:\n{response}"}]


def critique(clients: dict[int, LLMClient], project: Any, prompt: list[dict[str, str]], response: str) -> str:
    """One critique through the project's LLM (``project.critique_llm``, an ``LLMConfig``), temperature 0."""
    with _LOCK:  # one client per project, made on first use and shared by the app's worker threads
        client = clients.get(project.id)
        if client is None:
            cfg = LLMConfig.model_validate({"progress": False, **project.critique_llm})
            client = clients[project.id] = LLMClient.from_config(cfg)
    return client.chat(critique_messages(prompt, response), temperature=0, max_tokens=300).text.strip()
