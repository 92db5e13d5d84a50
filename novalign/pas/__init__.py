"""PAS, the prompt augmentation system (report sections 2.3 and 4.6): a small model writes a ~30-word
complement for each user prompt -- scenario requirements, non-mandatory extensions of intent, format
guidance -- and the complemented prompt goes to any main model, which is left untouched.

* :mod:`novalign.pas.data` / :mod:`novalign.pas.build` -- ``novalign pas build-data``: categories and seeds,
  few-shot synthesis, LLM self-correction with :mod:`novalign.pas.rules` checks.
* :mod:`novalign.pas.train` -- ``novalign pas train``: the SFT trainer on template(prompt) -> complement.
* :mod:`novalign.pas.augment` -- :class:`PromptAugmenter` and ``novalign pas augment`` (with a RAG mode).
* :mod:`novalign.pas.proxy` -- ``novalign pas serve``: an OpenAI-compatible proxy in front of any upstream.
* :mod:`novalign.pas.compare` -- ``novalign pas compare``: pass rate and GSB with vs without PAS.

Bundled, editable files live in ``novalign/assets/pas/`` (template, RAG template, join template,
categories, seeds).
"""

from novalign.pas.augment import Augmentation, PromptAugmenter, constrain_to_scope, join_prompt, pas_input
from novalign.pas.rules import answer_signals, rule_problems, word_count

__all__ = [
    "Augmentation", "PromptAugmenter", "answer_signals", "constrain_to_scope", "join_prompt", "pas_input",
    "rule_problems", "word_count",
]
