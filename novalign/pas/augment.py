"""PAS inference: prompt -> complement -> augmented prompt (report sections 2.3 and 4.6).

    augmenter = PromptAugmenter.from_model("runs/pas-model/model")
    out = augmenter.augment("List three facts about Mars.")
    out.complement   # e.g. "Answer in JSON: ..."
    out.augmented    # the prompt joined with its complement (join template, editable)

The PAS model sees the prompt inside the section 4.6 template (``novalign/assets/pas/template.txt``). In RAG
mode (section 2.3: "the extended prompt content needs to be within the scope of the search results;
therefore ... the search keywords should be used as new constraints") the keywords go into the PAS input
(``template_rag.txt``), and :func:`constrain_to_scope` then (1) finds complement sentences that bring in
terms outside the scope -- the prompt, the keywords, the search results and generic answer-style words --
and trims (or only flags) them, and (2) appends the keywords as an explicit constraint when the
complement does not already name every one of them.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Sequence

__all__ = [
    "Augmentation", "PromptAugmenter", "clean_complement", "constrain_to_scope", "content_words", "fill", "is_abstain",
    "join_prompt", "keyword_constraint", "keywords_from_results", "load_text", "pas_input", "scope_strays",
]

ScopePolicy = Literal["trim", "flag"]

# Words that describe how to answer rather than what about; always in scope.
_STYLE_WORDS = frozenset("""
answer answers response respond reply explain explanation clear clearly concise brief short detailed detail details
structure structured step steps example examples format json list lists table bullet bullets point points tone
summary summarize source sources search result results scope key main include mention use provide user question
keep avoid focus cover state note outline emphasize address present offer suggest cite compare define show check
specify acknowledge follow add highlight organize consider ensure make sure general method methods strategy
strategies plain language simple accurate accuracy fact facts factual relevant information context overview
first then finally each every one two three few several word words sentence sentences paragraph paragraphs
only within based stay base mentioned given provided write written readable logical logically organized easy
understand understanding content core intent aspect aspects important background data evidence uncertain
uncertainty claim claims reader readers audience level beginner expert practical concrete specific clarify
""".split())
_STOP = frozenset("""
the a an and or but of to in on at for with by from as is are was were be been being it its this that these those
into over under about than then so such not no nor can could would should will may might must do does did done
have has had having you your yours they them their there here what which who whom whose when where why how all any
both each more most other some own same too very just also if while because until again further once only
""".split())
_WORD = re.compile(r"[a-z][a-z0-9'-]*|\d+")
_SENTENCE = re.compile(r"(?<=[.!?;。！？；])\s+")


def load_text(path: str | Path | None, default: str) -> str:
    """A template file's text without its final newline; ``None``: the bundled ``assets/pas/<default>``."""
    if path is None:
        text = resources.files("novalign").joinpath("assets", "pas", default).read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    return text.rstrip("\n")


def fill(template: str, **fields: str) -> str:
    """Replace ``{name}`` for each given field (other braces, e.g. JSON in a prompt, are left alone).

    Raises:
        ValueError: the template lacks one of the fields' placeholders.
    """
    for name, value in fields.items():
        if "{" + name + "}" not in template:
            raise ValueError(f"the template has no {{{name}}} placeholder")
    out = template
    for name, value in fields.items():
        out = out.replace("{" + name + "}", value)
    return out


def pas_input(prompt: str, template: str, *, keywords: Sequence[str] = (), rag_template: str | None = None) -> str:
    """The PAS model's user message: the prompt in the template; with keywords, in the RAG template."""
    if keywords:
        if rag_template is None:
            raise ValueError("search keywords were given but no RAG template")
        return fill(rag_template, prompt=prompt, keywords=", ".join(keywords))
    return fill(template, prompt=prompt)


def join_prompt(prompt: str, complement: str, join_template: str) -> str:
    """The augmented prompt sent to the main model; an empty complement leaves the prompt unchanged."""
    if not complement.strip():
        return prompt
    return fill(join_template, prompt=prompt, complement=complement)


def clean_complement(text: str) -> str:
    """The PAS model's reply as a complement: stripped, up to the first blank line, whitespace collapsed."""
    first = re.split(r"\n\s*\n", text.strip(), maxsplit=1)[0]
    return " ".join(first.split())


def is_abstain(complement: str, abstain: str) -> bool:
    """Whether a complement is the abstain answer ("nothing to add"), ignoring case, spaces and end punctuation.

    >>> is_abstain(" none ", "None."), is_abstain("None. Use JSON.", "None.")
    (True, False)
    """
    def norm(text: str) -> str:
        return " ".join(text.split()).rstrip(".!").strip().lower()

    return norm(complement) == norm(abstain)


def _stem(word: str) -> str:
    for suffix in ("ing", "es", "ed", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def content_words(text: str) -> set[str]:
    """Lower-cased, crudely stemmed words of ``text`` minus stop words (what a text is about).

    >>> sorted(content_words("The cats are sleeping on the mats."))
    ['cat', 'mat', 'sleep']
    """
    return {_stem(w) for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 1}


def scope_strays(sentence: str, scope: set[str]) -> list[str]:
    """Content words of ``sentence`` outside ``scope`` and outside the generic answer-style vocabulary."""
    style = {_stem(w) for w in _STYLE_WORDS}
    return sorted(w for w in content_words(sentence) if w not in scope and w not in style and not w.isdigit())


def keywords_from_results(results: Sequence[str], k: int = 5) -> list[str]:
    """Search keywords when only search results are given: the ``k`` most frequent content words of the
    results (counted by stem, reported in their first surface form, ties by first appearance; no numbers).

    >>> keywords_from_results(["Mars rover Perseverance landed in 2021.", "The rover explores Mars."], 3)
    ['mars', 'rover', 'perseverance']
    """
    counts: dict[str, int] = {}
    surface: dict[str, str] = {}
    for text in results:
        for word in _WORD.findall(text.lower()):
            if word in _STOP or len(word) < 2 or word.isdigit():
                continue
            stem = _stem(word)
            counts[stem] = counts.get(stem, 0) + 1
            surface.setdefault(stem, word)
    order = sorted(counts, key=lambda stem: -counts[stem])  # stable: ties keep first appearance
    return [surface[stem] for stem in order[:k]]


def keyword_constraint(keywords: Sequence[str]) -> str:
    """The sentence that carries search keywords into the complement as constraints."""
    return "Stay within the scope of the search results on: " + ", ".join(keywords) + "."


def constrain_to_scope(complement: str, prompt: str, keywords: Sequence[str], results: Sequence[str] = (),
                       policy: ScopePolicy = "trim") -> tuple[str, dict[str, Any]]:
    """Keep a RAG complement within the scope of the search (report section 2.3).

    The scope is the content words of the prompt, the keywords and the search results. A sentence of the
    complement that brings in other content words strays: ``policy="trim"`` removes it, ``"flag"`` keeps it
    and reports it. Then, unless every keyword is already named, :func:`keyword_constraint` is appended.

    Returns:
        ``(complement, report)``; the report has ``in_scope``, ``strays`` (word lists of straying sentences),
        ``removed`` (sentences trimmed) and ``keywords``.
    """
    scope = content_words(prompt) | content_words(" ".join(keywords)) | content_words(" ".join(results))
    kept, removed, strays = [], [], []
    for sentence in (s for s in _SENTENCE.split(complement.strip()) if s):
        off = scope_strays(sentence, scope)
        if off:
            strays.append(off)
        if off and policy == "trim":
            removed.append(sentence)
        else:
            kept.append(sentence)
    text = " ".join(kept)
    named = all(k.lower() in text.lower() for k in keywords)
    if keywords and not named:
        text = (text + " " if text else "") + keyword_constraint(keywords)
    report = {"in_scope": not strays, "strays": strays, "removed": removed, "keywords": list(keywords)}
    return text, report


@dataclass
class Augmentation:
    """One prompt through PAS. ``scope`` is the RAG report (``None`` outside RAG mode)."""

    prompt: str
    complement: str
    augmented: str
    raw: str = ""
    scope: dict[str, Any] | None = None
    latency_s: float = 0.0
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {"prompt": self.prompt, "complement": self.complement, "augmented": self.augmented,
               "pas_latency_s": round(self.latency_s, 4)}
        if self.scope is not None:
            out["scope"] = self.scope
        if self.error is not None:
            out["error"] = self.error
        return self.extra | out


class PromptAugmenter:
    """Prompt -> complement -> augmented prompt with a PAS model behind any :class:`~novalign.llm.LLMClient`.

    Args:
        client: The PAS model's client (local model, ``novalign serve`` or any OpenAI-compatible server).
        template, rag_template, join_template: Texts (not paths); ``None``: the bundled files.
        max_tokens, temperature: Generation of the complement (greedy by default).
        scope_policy: RAG mode: ``"trim"`` straying sentences or only ``"flag"`` them.
        abstain: A complement meaning "nothing to add" (:func:`is_abstain`): the prompt then goes unchanged.
    """

    def __init__(self, client, *, template: str | None = None, rag_template: str | None = None,
                 join_template: str | None = None, max_tokens: int = 64, temperature: float = 0.0,
                 scope_policy: ScopePolicy = "trim", abstain: str | None = None):
        self.client = client
        self.template = template if template is not None else load_text(None, "template.txt")
        self.rag_template = rag_template if rag_template is not None else load_text(None, "template_rag.txt")
        self.join_template = join_template if join_template is not None else load_text(None, "join.txt")
        fill(self.template, prompt="")  # fail early on a template without its placeholders
        fill(self.join_template, prompt="", complement="")
        self.max_tokens, self.temperature, self.scope_policy = max_tokens, temperature, scope_policy
        self.abstain = abstain

    @classmethod
    def from_model(cls, path: str | Path, *, device: str = "auto", **kwargs: Any) -> "PromptAugmenter":
        """An augmenter over a local PAS model directory (in-process, batched)."""
        from novalign.llm import LLMClient
        from novalign.llm.local import LocalBackend

        client = LLMClient(LocalBackend(path, device=device), progress=False, print_usage=False)
        return cls(client, **kwargs)

    @classmethod
    def from_config(cls, llm_cfg, aug_cfg, **client_overrides: Any) -> "PromptAugmenter":
        """An augmenter for an :class:`~novalign.config.LLMConfig` (the PAS model) and a ``PASAugmentConfig``."""
        from novalign.llm import LLMClient

        client = LLMClient.from_config(llm_cfg, **({"print_usage": False} | client_overrides))
        return cls(client, template=load_text(aug_cfg.template, "template.txt"),
                   rag_template=load_text(aug_cfg.rag_template, "template_rag.txt"),
                   join_template=load_text(aug_cfg.join_template, "join.txt"), max_tokens=aug_cfg.max_tokens,
                   temperature=aug_cfg.temperature, scope_policy=aug_cfg.scope_policy, abstain=aug_cfg.abstain)

    def request(self, prompt: str, keywords: Sequence[str] = (), tag: Any = None):
        from novalign.llm import ChatRequest

        content = pas_input(prompt, self.template, keywords=keywords, rag_template=self.rag_template)
        return ChatRequest(messages=[{"role": "user", "content": content}], temperature=self.temperature,
                           max_tokens=self.max_tokens, tag=tag)

    def finish(self, prompt: str, raw: str, keywords: Sequence[str] = (), results: Sequence[str] = (),
               latency_s: float = 0.0) -> Augmentation:
        """Turn the PAS model's reply into an :class:`Augmentation` (RAG scope applied when keywords/results)."""
        complement, scope = clean_complement(raw), None
        if self.abstain is not None and is_abstain(complement, self.abstain):
            complement = ""
        if keywords or results:
            complement, scope = constrain_to_scope(complement, prompt, keywords, results, self.scope_policy)
        return Augmentation(prompt, complement, join_prompt(prompt, complement, self.join_template), raw, scope,
                            latency_s)

    def augment(self, prompt: str, *, keywords: Sequence[str] = (), results: Sequence[str] = ()) -> Augmentation:
        """One prompt. RAG mode when ``keywords`` or ``results`` are given (results alone: keywords are taken
        from them with :func:`keywords_from_results`)."""
        keywords = list(keywords) or keywords_from_results(results)
        start = time.perf_counter()
        raw = self.client.chat(self.request(prompt, keywords)).text
        return self.finish(prompt, raw, keywords, results, time.perf_counter() - start)

    async def aaugment(self, prompt: str, *, keywords: Sequence[str] = (), results: Sequence[str] = ()) -> Augmentation:
        keywords = list(keywords) or keywords_from_results(results)
        start = time.perf_counter()
        raw = (await self.client.achat(self.request(prompt, keywords))).text
        return self.finish(prompt, raw, keywords, results, time.perf_counter() - start)

    def augment_many(self, items: Sequence[dict[str, Any]], *, progress: bool = False) -> list[Augmentation]:
        """Batch: each item ``{"prompt", "search_keywords"?, "search_results"?}``; results in input order
        (``latency_s`` is then the time from the batch's start to that result).
        A failed PAS call leaves that prompt unchanged and says why in ``error`` (never dropped)."""
        keywords = [list(it.get("search_keywords") or ()) or keywords_from_results(it.get("search_results") or ())
                    for it in items]
        requests = [self.request(it["prompt"], keywords[i], tag=i) for i, it in enumerate(items)]
        out: list[Augmentation | None] = [None] * len(items)
        start = time.perf_counter()
        for result in self.client.batch(requests, progress=progress):
            item = items[result.index]
            if not result.ok:
                out[result.index] = Augmentation(item["prompt"], "", item["prompt"], error=str(result))
                continue
            out[result.index] = self.finish(item["prompt"], result.text, keywords[result.index],
                                            item.get("search_results") or (), time.perf_counter() - start)
        return [a for a in out if a is not None]

    def close(self) -> None:
        self.client.close()


def pas_llm_config(pas_model: str, pas_url: str | None = None):
    """The PAS model's :class:`~novalign.config.LLMConfig`: a local directory run in-process (uncached), or,
    with ``pas_url``, the model of that name behind an OpenAI-compatible ``/v1`` endpoint."""
    from novalign.config import LLMConfig

    if pas_url:
        return LLMConfig(backend="openai", base_url=pas_url, model=pas_model)
    return LLMConfig(backend="local", model=pas_model, no_cache=True)


def augment_file(input_file: str | Path, output: str | Path, llm_cfg, aug_cfg, *,
                 progress: bool = True) -> tuple[int, int]:
    """``novalign pas augment``: every record of ``input_file`` (``{prompt, search_keywords?, search_results?,
    ...}``) written to ``output`` in input order with its :meth:`Augmentation.to_dict` fields added.

    Returns ``(records, failed PAS calls)``; a failed call leaves its prompt unchanged (``error`` says why).

    Raises:
        DataError: a record without a string ``prompt`` (file, line and field named), before any PAS call.
    """
    import json

    from novalign.data.io import DataError, iter_records

    records = []
    for line, record in iter_records(input_file):
        if not isinstance(record.get("prompt"), str):
            raise DataError(input_file, line, "prompt", "must be a string")
        records.append(record)
    augmenter = PromptAugmenter.from_config(llm_cfg, aug_cfg)
    try:
        results = augmenter.augment_many(records, progress=progress)
    finally:
        augmenter.close()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", encoding="utf-8") as handle:
        for record, result in zip(records, results):
            handle.write(json.dumps(record | result.to_dict(), ensure_ascii=False) + "\n")
    return len(results), sum(r.error is not None for r in results)
