"""Plain-text records for pretraining: ``{"text": "..."}`` lines, trained on every token.

Each document is tokenized without special tokens, followed by the tokenizer's end-of-text token (so a
model learns where documents end), and cut into pieces of at most ``max_length`` tokens. The pieces are
ordinary :class:`~novalign.data.chat.TokenizedSample` s whose labels are their own ids, so the SFT trainer
packs and trains them exactly like chat samples (``data.text_files`` of ``novalign sft``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from novalign.data.chat import TokenizedSample
from novalign.data.io import DataError, SkipReport, read_valid

__all__ = ["end_of_text_id", "split_document", "load_text_dataset"]


def end_of_text_id(tokenizer: Any) -> int:
    """The document separator: ``<|endoftext|>`` / ``<|end_of_text|>`` when the vocabulary has one, else EOS."""
    for token in ("<|endoftext|>", "<|end_of_text|>"):
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None:
            return tid
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{type(tokenizer).__name__} has no end-of-text or EOS token to separate documents")
    return tokenizer.eos_token_id


def split_document(ids: list[int], max_length: int) -> list[TokenizedSample]:
    """Cut one document's ids into consecutive pieces of at most ``max_length`` tokens, every token a label.

    A piece of one token has nothing to predict and is dropped (it is the document's last token, already the
    target of the previous piece's final position in spirit; it carries no loss on its own).
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    pieces = []
    for start in range(0, len(ids), max_length):
        chunk = ids[start : start + max_length]
        if len(chunk) >= 2:
            pieces.append(TokenizedSample(input_ids=list(chunk), labels=list(chunk)))
    return pieces


def load_text_dataset(
    paths: Sequence[str | os.PathLike[str]], tokenizer: Any, *, max_length: int, skip_invalid: bool = False
) -> tuple[list[TokenizedSample], SkipReport]:
    """Read ``{"text": str}`` records, tokenize each document plus end-of-text, and cut it into pieces.

    Raises:
        DataError: a record without a non-empty string ``text`` (unless ``skip_invalid``), naming file and line.
    """
    eot = end_of_text_id(tokenizer)

    def pieces(record: dict, path: str, line: int) -> list[TokenizedSample]:
        text = record.get("text")
        if not isinstance(text, str) or not text.strip():
            raise DataError(path, line, "text", f"expected a non-empty string, got {text!r}"[:200],
                            reason="missing or empty text")
        return split_document(tokenizer(text, add_special_tokens=False)["input_ids"] + [eot], max_length)

    documents, report = read_valid(paths, pieces, skip_invalid=skip_invalid)
    return [piece for document in documents for piece in document], report
