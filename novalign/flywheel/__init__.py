"""The data flywheel (report sections 3-4): the data steps that build training data from prompts and models.

Each module is a plain-function core that ``novalign data ...`` commands and ``novalign run`` both call:

* :mod:`.prefs` -- preference groups from sampled responses: the ROUGE-L near-duplicate filter, the
  no-signal group filter and the ``{prompt, responses: [{content, score}]}`` records the reward model reads
  (report section 3.3);
* :mod:`.mix` -- capability mixtures of SFT data (the specialists that model merging combines, section 2.4);
* the record-pipeline engine of ``novalign data run`` (section 3, Figure 4): :mod:`.step` (the Step
  contract), :mod:`.pipeline` (step folders keyed by config and input, record-granular resume),
  :mod:`.executors` (local, Ray), :mod:`.steps` (dedup, filters, sampling, LLM generation and judging,
  preference groups) and :mod:`.report` (progress, summary, report.md, funnel chart).
"""
