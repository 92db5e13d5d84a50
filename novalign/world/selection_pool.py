"""Generated prompt pools with known structure, for measuring prompt selection (report sections 3.1.2, 3.1.3).

:func:`diversity_pool` -- prompts that are task templates filled with context, the shape the report describes:

* ``n_templates`` tasks, each an action (what to do) and an output spec (what to return); the action and
  output vocabularies (60 and 40) are crossed, so two tasks may share an action and differ in output, and vice
  versa (at most 2,400 tasks);
* each task has one or two wordings: the second a *paraphrase* (synonyms swapped, sentences reordered) that
  belongs to the same task;
* a share of tasks are *look-alikes*: bound to one topic, worded with that topic's role ("As a chef, ...")
  and filled only with that topic's contexts, so tasks of a topic share topic and wording but not task;
* contexts (the longer part, which a meaning-level embedder attends to) are drawn from topics;
* Zipf-skewed frequencies: task of rank r gets a share proportional to r^-zipf_s (at least one prompt), and a
  share of prompts are verbatim or near-verbatim copies of another prompt.

Each record: ``{"_id", "prompt", "template", "wording", "topic"}``; ``template`` is the ground truth.

The defaults (20,000 prompts, 2,000 templates, Zipf s = 1.3) keep the ratio of the 2,000-prompt, 200-template
pool that earlier runs measured: ten prompts per template on average, most templates rare (at 20,000: 736 with
a single prompt, 1,785 with at most five; the most frequent one 29 % of the prompts). The reason is the benchmark: a
selection budget says something only when it is not far above the number of templates. With 240 templates, 10 %
of 20,000 prompts (2,000 picks) let every reasonable method cover them all (task-aware and MinHash both 1.0),
so no method could beat another; with 2,000 templates the 10 % budget equals the template count.

:func:`quality_pool` -- prompts with planted quality per dimension (each level 0..3, scaled to 0..1):
clarity (typos and truncation lower it), practicality (nonsense tasks lower it), complexity (one more
constraint per level), novelty (level 0 is a stock prompt shared verbatim by many records; higher levels add
specific details). ``planted`` holds the four values and ``overall`` their mean.

:class:`SimulatedJudgeBackend` -- a stand-in for an *external* LLM judge (GPT-4 class), through the real
:class:`~novalign.llm.LLMClient`. It perceives the planted quality of the prompts it is shown with Gaussian
noise and answers in the judge templates' format; with probability ``position_bias`` it prefers whichever
prompt is shown first, with probability ``noise`` it answers at random. It is a documented stand-in for the
models we cannot call here, not a model of any of ours.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any

from novalign.llm.types import BackendResponse

__all__ = ["diversity_pool", "quality_pool", "SimulatedJudgeBackend", "TOPICS"]

TOPICS: dict[str, tuple[str, list[str]]] = {
    # topic: (role of its look-alike tasks, words its contexts are made of)
    "cooking": ("chef", ["garlic", "oven", "sauce", "dough", "recipe", "spices", "broth", "butter", "pan", "herbs"]),
    "travel": ("travel agent", ["flight", "hotel", "passport", "beach", "itinerary", "museum", "train", "visa",
                                "luggage", "harbour"]),
    "finance": ("accountant", ["budget", "invoice", "interest", "loan", "savings", "tax", "revenue", "shares",
                               "mortgage", "pension"]),
    "health": ("nurse", ["sleep", "vitamins", "exercise", "clinic", "fever", "diet", "blood", "doctor", "stress",
                         "vaccine"]),
    "astronomy": ("astronomer", ["telescope", "galaxy", "orbit", "comet", "planet", "nebula", "eclipse", "moon",
                                 "stars", "satellite"]),
    "gardening": ("gardener", ["soil", "roses", "compost", "seeds", "tomatoes", "watering", "shade", "pruning",
                               "weeds", "greenhouse"]),
    "football": ("coach", ["goal", "striker", "league", "referee", "stadium", "penalty", "midfield", "season",
                           "tactics", "fans"]),
    "software": ("engineer", ["server", "database", "bug", "release", "compiler", "cache", "deployment", "tests",
                              "latency", "api"]),
    "history": ("historian", ["empire", "treaty", "dynasty", "revolution", "archive", "castle", "war", "kingdom",
                              "monks", "trade"]),
    "music": ("composer", ["melody", "orchestra", "rhythm", "guitar", "concert", "chorus", "piano", "album",
                           "tempo", "harmony"]),
    "law": ("lawyer", ["contract", "court", "tenant", "witness", "appeal", "clause", "lease", "judge", "evidence",
                       "liability"]),
    "climate": ("climate scientist", ["rainfall", "glacier", "carbon", "drought", "ocean", "emissions", "storm",
                                      "forest", "heatwave", "flooding"]),
}

_ACTIONS = [
    "Translate the passage below into French", "Summarize the passage below in one sentence",
    "List every noun that appears in the passage below", "Rewrite the passage below as a short poem",
    "Classify the sentiment of the passage below", "Write three quiz questions about the passage below",
    "Correct any grammar mistakes in the passage below", "Propose a catchy title for the passage below",
    "Explain the passage below to a ten year old child", "Turn the passage below into a formal email",
    "Count how many sentences the passage below contains", "Identify the main argument of the passage below",
    "Continue the passage below with two more sentences", "Convert the passage below into a dialogue",
    "Find the most important keyword of the passage below", "Rewrite the passage below in the past tense",
    "Detect whether the passage below contains an opinion", "Paraphrase the passage below with simpler words",
    "Write a tweet advertising the passage below", "Extract a timeline of events from the passage below",
    "Judge how persuasive the passage below is", "Compose a limerick inspired by the passage below",
    "Generate a multiple choice question from the passage below", "Outline a lesson plan based on the passage below",
    "Describe the tone and mood of the passage below", "Shorten the passage below without losing facts",
    "Point out logical gaps in the passage below", "Write a rebuttal to the passage below",
    "Suggest follow up research questions for the passage below", "Design a slogan from the passage below",
    "Build a glossary for the passage below", "Estimate the reading age of the passage below",
    "Flag unsourced claims in the passage below", "Grade the clarity of the passage below",
    "Guess the intended audience of the passage below", "Sketch a comic strip script from the passage below",
    "Prepare five interview questions about the passage below", "Highlight the strongest verbs of the passage below",
    "Predict what happens right after the passage below", "Sort the ideas of the passage below by generality",
    "Map the causes and effects in the passage below", "Contrast the opening and ending of the passage below",
    "Invent a character who would enjoy the passage below", "Reduce the passage below to five key words",
    "Expand the passage below with concrete examples", "Transform the passage below into a news headline",
    "Check the passage below for repeated words", "Recommend a book that matches the passage below",
    "Spell out abbreviations in the passage below", "Locate the most emotional sentence in the passage below",
    "Argue in favour of the passage below", "Imagine the passage below as a film scene",
    "Measure how formal the passage below sounds", "Create crossword clues from the passage below",
    "Separate facts from opinions in the passage below", "Rate the originality of the passage below",
    "Retell the passage below as a cat would", "Produce a mind map outline of the passage below",
    "Pick a word to cut from the passage below", "Frame the passage below as a riddle",
]
_OUTPUTS = [
    "Answer with a bulleted list.", "Return the result as JSON.", "Keep it under twenty words.",
    "Use a friendly and casual tone.", "Format the answer as a numbered list.", "Reply in exactly two lines.",
    "Wrap the whole answer in double quotes.", "Start your reply with the word Sure.",
    "Put the answer inside a markdown table.", "End with a short question for the reader.",
    "Keep the answer to one paragraph.", "Number every line of your reply.", "Finish with a one line summary.",
    "Avoid any technical jargon.", "Write it for a busy executive.", "Include at least one example.",
    "Give the answer in capital letters.", "Separate the parts with dashes.", "Add a confidence score at the end.",
    "Mention the topic in the first word.", "Do not use more than three commas.", "Present the answer as a haiku.",
    "Put each item on its own line.", "Explain your reasoning briefly afterwards.", "Open with a rhetorical question.",
    "Use British spelling throughout.", "Reply as if speaking to a child.", "Cite the sentence you relied on.",
    "Offer two alternatives.", "Sign off with your role.", "Express it in the second person.",
    "Bold the most important phrase.", "Add an emoji after each sentence.", "Limit yourself to simple words.",
    "State your answer before any explanation.", "Close with a call to action.",
    "Provide a short and a long version.", "Enclose the answer in a code block.", "Prefix lines with arrows.",
    "Mark uncertain parts with a question mark.",
]
_SYNONYMS = {"passage": "text", "below": "that follows", "Translate": "Render", "Summarize": "Condense",
             "Rewrite": "Recast", "Write": "Draft", "every": "each", "short": "brief", "Identify": "Name",
             "Correct": "Fix", "Explain": "Make clear", "Answer": "Respond", "result": "output", "Keep": "Make",
             "Use": "Adopt", "answer": "response", "Format": "Lay out", "Return": "Give", "reply": "response"}
_SENTENCES = ["People who care about {a} often talk about {b} first.", "The {a} was mentioned again next to the {b}.",
              "Nobody expected the {a} to matter as much as the {b} did last year.",
              "A small change in {a} can shift how the {b} behaves.", "Her notes compare the {a} with the {b} in detail.",
              "Most guides put the {a} ahead of the {b}, which is debatable."]


def _zipf_counts(n_items: int, total: int, s: float) -> list[int]:
    """Counts proportional to rank^-s summing to ``total``, each at least 1 (largest remainder)."""
    weights = [(r + 1) ** -s for r in range(n_items)]
    norm, rest = sum(weights), total - n_items
    exact = [rest * w / norm for w in weights]
    counts = [1 + int(x) for x in exact]
    order = sorted(range(n_items), key=lambda i: -(exact[i] - int(exact[i])))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _paraphrase(text: str) -> str:
    """A second wording of an instruction: synonyms swapped and, with two sentences, their order reversed."""
    words = [_SYNONYMS.get(w, w) for w in text.split(" ")]
    out = " ".join(words)
    parts = [p.strip() for p in re.split(r"(?<=\.)\s+", out) if p.strip()]
    return " ".join(reversed(parts)) if len(parts) == 2 else out


def _context(rng: random.Random, topic: str) -> str:
    words = TOPICS[topic][1]
    pair = lambda: rng.sample(words, 2)  # noqa: E731
    return " ".join(rng.choice(_SENTENCES).format(a=a, b=b) for a, b in (pair(), pair(), pair()))


def _templates(n: int, look_alike_share: float, paraphrase_share: float, rng: random.Random) -> list[dict]:
    combos = [(a, o) for a in range(len(_ACTIONS)) for o in range(len(_OUTPUTS))]
    if n > len(combos):
        raise ValueError(f"at most {len(combos)} templates, asked for {n}")
    rng.shuffle(combos)
    topics = sorted(TOPICS)
    out = []
    for t, (a, o) in enumerate(combos[:n]):
        look_alike = rng.random() < look_alike_share
        topic = topics[t % len(topics)] if look_alike else None
        head = f"As a {TOPICS[topic][0]}, {_ACTIONS[a][0].lower()}{_ACTIONS[a][1:]}" if topic else _ACTIONS[a]
        instruction = f"{head}. {_OUTPUTS[o]}"
        wordings = [instruction] + ([_paraphrase(instruction)] if rng.random() < paraphrase_share else [])
        out.append({"id": f"t{t:03d}", "wordings": wordings, "topic": topic, "context_first": rng.random() < 0.2})
    return out


def diversity_pool(n_prompts: int = 20000, n_templates: int = 2000, *, zipf_s: float = 1.3,
                   duplicate_share: float = 0.1, look_alike_share: float = 0.3, paraphrase_share: float = 0.4,
                   seed: int = 0) -> list[dict]:
    """The diversity pool (see the module docstring); same arguments, same pool."""
    if n_prompts < n_templates:
        raise ValueError(f"n_prompts ({n_prompts}) must be at least n_templates ({n_templates})")
    rng = random.Random(seed)
    templates = _templates(n_templates, look_alike_share, paraphrase_share, rng)
    n_dups = int(n_prompts * duplicate_share)
    counts = _zipf_counts(n_templates, max(n_templates, n_prompts - n_dups), zipf_s)
    topics = sorted(TOPICS)
    records: list[dict] = []
    for tpl, count in zip(templates, counts):
        for _ in range(count):
            w = rng.randrange(len(tpl["wordings"]))
            topic = tpl["topic"] or rng.choice(topics)
            ctx, ins = _context(rng, topic), tpl["wordings"][w]
            text = f"{ctx}\n\n{ins}" if tpl["context_first"] else f"{ins}\n\n{ctx}"
            records.append({"prompt": text, "template": tpl["id"], "wording": w, "topic": topic})
    while len(records) < n_prompts:  # Zipf-skewed copies: popular prompts get copied more (rank-weighted)
        src = records[min(int(rng.paretovariate(1.0)) - 1, len(records) - 1) if rng.random() < 0.5
                      else rng.randrange(len(records))]
        text = src["prompt"] if rng.random() < 0.5 else src["prompt"].replace(".", " .", 1)
        records.append({**src, "prompt": text})
    rng.shuffle(records)
    return [{"_id": f"p{i:05d}", **r} for i, r in enumerate(records)]


# ------------------------------------------------------------------------------------------------- quality

_STOCK = "Tell me something interesting about {topic}."
_NONSENSE = ["Translate the colour of the {a} into a prime number.", "Fold the {a} into last Tuesday.",
             "Compute the smell of the {a} divided by the {b}.", "Explain why the {a} is louder than its own shadow."]
_TASKS = ["Write a short guide about the {a} and the {b}.", "Explain how the {a} affects the {b}.",
          "Compare the {a} with the {b} for a beginner.", "Draft a plan that uses the {a} to improve the {b}."]
_DETAILS = ["Assume it is the winter of 1987 in Lisbon.", "The reader is a retired marine biologist.",
            "Mention the figure 42 percent somewhere.", "Relate it to the 1969 moon landing."]
_CONSTRAINTS = ["Use at most 80 words.", "Do not use the letter z.", "End with a question.",
                "Give exactly three bullet points."]


def _typos(text: str, n: int, rng: random.Random) -> str:
    chars = list(text)
    letters = [i for i, c in enumerate(chars) if c.isalpha()]
    for i in rng.sample(letters, min(n, len(letters))):
        chars[i] = rng.choice("qxjkvw")
    return "".join(chars)


def quality_pool(n_prompts: int = 400, *, seed: int = 0) -> list[dict]:
    """Prompts with planted quality (see the module docstring), topics as buckets in ``labels.ability``."""
    rng = random.Random(seed)
    topics = sorted(TOPICS)[:4]
    out = []
    for i in range(n_prompts):
        topic = topics[i % len(topics)]
        a, b = rng.sample(TOPICS[topic][1], 2)
        lv = {d: rng.randrange(4) for d in ("clarity", "practicality", "complexity", "novelty")}
        if lv["novelty"] == 0:
            text = _STOCK.format(topic=topic)
        else:
            task = rng.choice(_TASKS if lv["practicality"] >= 2 else _NONSENSE) if lv["practicality"] else \
                rng.choice(_NONSENSE)
            text = " ".join([task.format(a=a, b=b), *rng.sample(_DETAILS, lv["novelty"] - 1)])
        if lv["practicality"] == 1:
            text += " Do it without reading anything."
        text = " ".join([text, *rng.sample(_CONSTRAINTS, lv["complexity"])])
        text = _typos(text, 2 * (3 - lv["clarity"]), rng)
        if lv["clarity"] == 0:
            text = text[: max(12, len(text) // 2)]  # truncated mid-sentence
        planted = {d: v / 3 for d, v in lv.items()}
        out.append({"_id": f"q{i:04d}", "prompt": text, "labels": {"ability": topic},
                    "planted": planted, "planted_overall": sum(planted.values()) / 4})
    return out


# ------------------------------------------------------------------------------------------- the judges

_SHOWN = re.compile(r"\[Prompt A\]\n(.*?)\n\[End of Prompt A\].*?\[Prompt B\]\n(.*?)\n\[End of Prompt B\]", re.S)
_ONE = re.compile(r"\[Prompt\]\n(.*?)\n\[End of Prompt\]", re.S)
DIMENSIONS = ("clarity", "practicality", "complexity", "novelty")


class SimulatedJudgeBackend:
    """An external-LLM stand-in judge (see the module docstring), a :class:`novalign.llm.client.Backend`.

    ``truth`` maps a prompt's text to its planted quality ``{dimension: 0..1}``; the judge sees a prompt's
    quality as ``truth + N(0, sigma)``. Pairwise requests (two prompts in ``[Prompt A]`` / ``[Prompt B]``
    blocks) get ``Clarity: [[A]]``-style lines (A, B, or C for a tie when the perceived difference is under
    ``tie_margin``); absolute requests (one ``[Prompt]`` block) get ``Clarity: [[7]]`` on 1..10, shifted by
    the judge's ``offset``. Each answer is a pure function of (name, request text): reruns hit the cache.
    """

    kind = "simulated"

    def __init__(self, name: str, truth: dict[str, dict[str, float]], *, position_bias: float = 0.15,
                 noise: float = 0.20, sigma: float = 0.15, tie_margin: float = 0.1, offset: float = 0.0):
        self.model_name = self.model_id = name
        self.truth, self.position_bias, self.noise = truth, position_bias, noise
        self.sigma, self.tie_margin, self.offset = sigma, tie_margin, offset

    def _seen(self, rng: random.Random, text: str, dim: str) -> float:
        if text not in self.truth:
            raise KeyError(f"simulated judge {self.model_name}: prompt not in the pool: {text[:60]!r}")
        return self.truth[text][dim] + rng.gauss(0.0, self.sigma)

    def answer(self, content: str) -> str:
        rng = random.Random(hashlib.sha256(f"{self.model_name}\0{content}".encode()).digest())
        lines = []
        pair = _SHOWN.search(content)
        for dim in DIMENSIONS:
            if pair:
                if rng.random() < self.position_bias:
                    verdict = "A"
                elif rng.random() < self.noise:
                    verdict = rng.choice("ABC")
                else:
                    diff = self._seen(rng, pair.group(1), dim) - self._seen(rng, pair.group(2), dim)
                    verdict = "A" if diff > self.tie_margin else "B" if diff < -self.tie_margin else "C"
                lines.append(f"{dim.capitalize()}: [[{verdict}]]")
            else:
                one = _ONE.search(content)
                if one is None:
                    raise ValueError(f"simulated judge {self.model_name}: no [Prompt] block in the request")
                score = rng.randint(1, 10) if rng.random() < self.noise else \
                    round(min(10, max(1, 1 + 9 * self._seen(rng, one.group(1), dim) + self.offset)))
                lines.append(f"{dim.capitalize()}: [[{score}]]")
        return "\n".join(lines)

    async def generate(self, request: Any) -> BackendResponse:
        content = request.messages[-1]["content"] if len(request.messages) == 1 else request.messages[0]["content"]
        return BackendResponse(model=self.model_name, texts=[self.answer(content)], finish_reasons=["stop"])

    async def aclose(self) -> None:
        return None
