"""The memorized-model fixture's own failure path: too few steps is an error naming the pair, never a model
that says something else."""

from __future__ import annotations

import pytest
from memorized_model import memorize


def test_memorize_names_the_pair_it_could_not_learn_within_the_cap(tmp_path):
    """Two optimizer steps (one round, the cap) cannot give a random tiny model a margin of 1 logit on every
    token of 'Paris.': memorize raises, naming a pair, its margin and what greedy decoding says instead."""
    pairs = [([{"role": "user", "content": "Capital of France?"}], "Paris."),
             ([{"role": "user", "content": "Capital of Italy?"}], "Rome.")]
    with pytest.raises(AssertionError, match=r"memorized model \(2 steps, lr 0.01\): pair [01]: its logit margin "
                                             r"is -?\d+\.\d+ < 1.0; greedy decoding gives '.*', want '(Paris|Rome)\.'"):
        memorize(pairs, tmp_path, round_steps=2, max_steps=2)
