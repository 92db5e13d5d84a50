"""Tiny, locally built tokenizers and causal LMs for tests and the demo.

Nothing here touches a model hub: the tokenizer is a byte-level BPE trained in well under
a second on the bundled corpus, and the model is a randomly initialised Llama or Qwen2
with a few hundred thousand parameters.

Two chat formats are supported:

* ``"chatml"``: ``<|im_start|>{role}\\n{content}<|im_end|>\\n``; generation prompt
  ``<|im_start|>assistant\\n``. No BOS token; ``<|endoftext|>`` doubles as pad.
* ``"llama3"``: ``<|begin_of_text|>`` once, then
  ``<|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>``; generation prompt
  ``<|start_header_id|>assistant<|end_header_id|>\\n\\n``. As with the real Llama 3
  tokenizer, encoding plain text with ``add_special_tokens=True`` prepends
  ``<|begin_of_text|>``, so text already rendered by the chat template must be encoded with
  ``add_special_tokens=False`` (``apply_chat_template(tokenize=True)`` does this itself).

In both formats ``tokenizer.eos_token`` is the end-of-turn token (``<|im_end|>`` /
``<|eot_id|>``). Assistant turns are wrapped in ``{% generation %}`` blocks, so
``apply_chat_template(..., return_assistant_tokens_mask=True)`` works.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from novalign.models.load import save_pretrained_dir

__all__ = [
    "ChatTemplate",
    "Arch",
    "PreTokenizer",
    "TEMPLATES",
    "CHATML_TEMPLATE",
    "LLAMA3_TEMPLATE",
    "train_tokenizer",
    "tiny_config",
    "init_tiny_model",
    "default_training_texts",
]

ChatTemplate = Literal["chatml", "llama3"]
Arch = Literal["llama", "qwen2"]
PreTokenizer = Literal["bytelevel", "qwen2"]

# Qwen2's split regex: single digits, letters grouped, punctuation runs, newlines kept apart.
# transformers 5 rebuilds this pipeline (plus an NFC normalizer) for every model_type "qwen2"
# directory, whatever tokenizer.json says, so qwen2-arch tokenizers are trained with it.
try:
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN2_SPLIT_REGEX
except ImportError:  # pragma: no cover - layout of other transformers versions
    QWEN2_SPLIT_REGEX = (
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
    )

CORPUS_PATH = Path(__file__).resolve().parent.parent / "assets" / "corpus.txt"

# Jinja templates. Every tag trims surrounding whitespace ({%- -%}, {{- -}}), so the line
# breaks below are layout only; all output text comes from explicit string literals.
# `message.content` may be a string or a list of {"type": "text", "text": ...} parts, and
# may be absent (transformers drops None-valued keys, e.g. for a pure tool-call turn).
_MACROS = """\
{%- macro render_content(message) -%}
    {%- if message.content is defined and message.content is string -%}
        {{- message.content -}}
    {%- elif message.content is defined and message.content -%}
        {%- for part in message.content -%}
            {%- if part.type == 'text' -%}{{- part.text -}}{%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {%- if message.tool_calls is defined and message.tool_calls -%}
        {%- for call in message.tool_calls -%}
            {%- set fn = call.function if call.function is defined else call -%}
            {{- '<tool_call>' + ({'name': fn.name, 'arguments': fn.arguments} | tojson) + '</tool_call>' -}}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro -%}
{%- macro check_role(message) -%}
    {%- if message.role not in ['system', 'user', 'assistant', 'tool'] -%}
        {{- raise_exception('Unsupported chat role: ' ~ message.role) -}}
    {%- endif -%}
{%- endmacro -%}
"""

def _template(begin: str, header: str, end_of_turn: str, separator: str = "") -> str:
    """A chat template in the shape every tiny-model template shares: an optional tools block rendered as a
    system turn, then ``header(role) + content + end_of_turn + separator`` per message. ``header`` is a
    Jinja expression of ``role``. Assistant turns sit in {% generation %} blocks (content + end-of-turn
    token), which is what ``apply_chat_template(..., return_assistant_tokens_mask=True)`` reports as
    assistant tokens."""
    system_header = header.replace("role", "'system'")
    return _MACROS + f"""\
{{{{- '{begin}' -}}}}
{{%- if tools is defined and tools -%}}
    {{{{- {system_header} + '# Tools' -}}}}
    {{%- for tool in tools -%}}{{{{- '\\n' + (tool | tojson) -}}}}{{%- endfor -%}}
    {{{{- '{end_of_turn}{separator}' -}}}}
{{%- endif -%}}
{{%- for message in messages -%}}
    {{{{- check_role(message) -}}}}
    {{%- set role = message.role -%}}
    {{{{- {header} -}}}}
    {{%- if message.role == 'assistant' -%}}
        {{%- generation -%}}{{{{- render_content(message) + '{end_of_turn}' -}}}}{{%- endgeneration -%}}
    {{%- else -%}}
        {{{{- render_content(message) + '{end_of_turn}' -}}}}
    {{%- endif -%}}
    {{{{- '{separator}' -}}}}
{{%- endfor -%}}
{{%- if add_generation_prompt -%}}
    {{%- set role = 'assistant' -%}}
    {{{{- {header} -}}}}
{{%- endif -%}}
"""


CHATML_TEMPLATE = _template("", "'<|im_start|>' + role + '\\n'", "<|im_end|>", separator="\\n")
LLAMA3_TEMPLATE = _template("<|begin_of_text|>", "'<|start_header_id|>' + role + '<|end_header_id|>\\n\\n'", "<|eot_id|>")


@dataclass(frozen=True)
class _TemplateSpec:
    """Special tokens and Jinja source for one chat format."""

    special_tokens: tuple[str, ...]
    bos: str | None
    eos: str
    pad: str
    end_of_text: str
    chat_template: str


TEMPLATES: dict[str, _TemplateSpec] = {
    "chatml": _TemplateSpec(
        special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        end_of_text="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
    ),
    "llama3": _TemplateSpec(
        special_tokens=(
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
            "<|finetune_right_pad_id|>",
        ),
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        pad="<|finetune_right_pad_id|>",
        end_of_text="<|end_of_text|>",
        chat_template=LLAMA3_TEMPLATE,
    ),
}


def train_tokenizer(
    texts: Iterable[str],
    *,
    vocab_size: int = 2048,
    template: ChatTemplate = "chatml",
    pretokenizer: PreTokenizer = "bytelevel",
    model_max_length: int = 4096,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with chat special tokens and a chat template.

    The ByteLevel pre-tokenizer/decoder and the full 256-byte initial alphabet mean any
    Unicode string encodes and decodes back unchanged (with ``pretokenizer="qwen2"``: any
    NFC-normalised string, since that pipeline normalises to NFC first). Training is
    deterministic for the same texts and settings.

    Args:
        texts: Training text (iterated once).
        vocab_size: Target vocabulary size, including the 256 byte tokens and special tokens.
        template: ``"chatml"`` or ``"llama3"``; selects special tokens and the Jinja template.
        pretokenizer: ``"bytelevel"`` (GPT-2 style ByteLevel regex, no normaliser) or
            ``"qwen2"`` (NFC + Qwen2 split regex + ByteLevel). Use ``"qwen2"`` for a tokenizer
            that will be saved next to a Qwen2 model: ``AutoTokenizer`` in transformers 5
            always rebuilds that pipeline for ``model_type == "qwen2"``.
        model_max_length: Stored on the tokenizer (``tokenizer.model_max_length``).

    Returns:
        A ``PreTrainedTokenizerFast`` with ``chat_template`` set and ``eos_token`` the
        end-of-turn token.
    """
    if template not in TEMPLATES:
        raise ValueError(f"unknown chat template {template!r}; choose one of {sorted(TEMPLATES)}")
    spec = TEMPLATES[template]
    min_vocab = 256 + len(spec.special_tokens)
    if vocab_size < min_vocab:
        raise ValueError(f"vocab_size must be at least {min_vocab} (256 bytes + special tokens), got {vocab_size}")

    tok = Tokenizer(models.BPE())
    if pretokenizer == "bytelevel":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif pretokenizer == "qwen2":
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        raise ValueError(f"unknown pretokenizer {pretokenizer!r}; choose 'bytelevel' or 'qwen2'")
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(spec.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(iter(texts), trainer=trainer)

    byte_level = processors.ByteLevel(trim_offsets=False)
    if spec.bos is not None:
        bos_id = tok.token_to_id(spec.bos)
        tok.post_processor = processors.Sequence([
            byte_level,
            processors.TemplateProcessing(
                single=f"{spec.bos}:0 $A:0",
                pair=f"{spec.bos}:0 $A:0 {spec.bos}:1 $B:1",
                special_tokens=[(spec.bos, bos_id)],
            ),
        ])
    else:
        tok.post_processor = byte_level

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=spec.bos,
        eos_token=spec.eos,
        pad_token=spec.pad,
        chat_template=spec.chat_template,
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
        padding_side="right",
    )


def tiny_config(
    tokenizer: PreTrainedTokenizerFast,
    *,
    arch: Arch = "llama",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 4096,
    rope_theta: float = 10000.0,
) -> PretrainedConfig:
    """A small Llama or Qwen2 config whose vocabulary and special ids match ``tokenizer``.

    ``bos_token_id`` is ``None`` for ChatML tokenizers (as in Qwen2); ``eos_token_id`` is the
    end-of-turn token; embeddings are untied.
    """
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads ({num_heads}) must be divisible by num_kv_heads ({num_kv_heads})")
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    if arch == "llama":
        return LlamaConfig(head_dim=hidden_size // num_heads, **common)
    if arch == "qwen2":
        return Qwen2Config(use_sliding_window=False, **common)
    raise ValueError(f"unknown arch {arch!r}; choose 'llama' or 'qwen2'")


def _conversation_text(messages: list[dict[str, str]]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def default_training_texts() -> Iterator[str]:
    """The bundled corpus paragraphs followed by the demo conversations as plain text."""
    from novalign.data.demo import make_demo_conversations  # local import: keeps data optional

    for paragraph in CORPUS_PATH.read_text(encoding="utf-8").split("\n\n"):
        if paragraph.strip():
            yield paragraph
    for record in make_demo_conversations(1500, seed=0):
        yield _conversation_text(record["messages"])


def init_tiny_model(
    out_dir: str | Path,
    *,
    arch: Arch = "llama",
    template: ChatTemplate = "chatml",
    vocab_size: int = 2048,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 4096,
    seed: int = 0,
    texts: Iterable[str] | None = None,
) -> Path:
    """Train a tokenizer, build a randomly initialised tiny causal LM and save both.

    The global torch RNG state is left untouched (initialisation runs under
    ``torch.random.fork_rng``). The same arguments always give identical files.

    Args:
        out_dir: Destination directory (replaced atomically if it exists).
        texts: Tokenizer training text; defaults to :func:`default_training_texts`.

    Returns:
        ``Path(out_dir)``, loadable with ``AutoModelForCausalLM``/``AutoTokenizer``.
    """
    tokenizer = train_tokenizer(
        texts if texts is not None else default_training_texts(),
        vocab_size=vocab_size,
        template=template,
        pretokenizer="qwen2" if arch == "qwen2" else "bytelevel",
        model_max_length=max_position_embeddings,
    )
    config = tiny_config(
        tokenizer,
        arch=arch,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    spec = TEMPLATES[template]
    stop_ids = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(spec.end_of_text)]
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=stop_ids,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    out = Path(out_dir)
    save_pretrained_dir(model, tokenizer, out)
    return out


def _main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Build a tiny random causal LM + tokenizer.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--arch", choices=["llama", "qwen2"], default="llama")
    parser.add_argument("--template", choices=sorted(TEMPLATES), default="chatml")
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    path = init_tiny_model(args.out_dir, arch=args.arch, template=args.template,
                           vocab_size=args.vocab_size, seed=args.seed)
    print(json.dumps({"saved": str(path)}))


if __name__ == "__main__":
    _main()
