"""``novalign pas train``: fine-tune a PAS model on the complement data (report section 4.6).

Each PAS record becomes one chat sample: the user turn is the prompt inside the section 4.6 template (the
RAG template when the record carries ``search_keywords``), the assistant turn is the complement. The SFT
trainer does the rest (report: two epochs, 4,096-token sequences -- the defaults of ``PASTrainConfig``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from novalign.config import DataConfig, PASTrainConfig, SFTConfig
from novalign.data.io import DataError, iter_records, write_jsonl
from novalign.pas.augment import load_text, pas_input

__all__ = ["pas_sft_record", "read_pas_records", "run_pas_train", "write_pas_sft_file"]


def read_pas_records(path: str | Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """``(line, record)`` of a PAS JSONL file, each checked for ``prompt`` and a non-empty ``complement``.

    Raises:
        DataError: naming the file, line and field of a bad record (a dropped record in the training file too).
    """
    for line, record in iter_records(path):
        for key in ("prompt", "complement"):
            value = record.get(key)
            if not isinstance(value, str) or not value.strip():
                raise DataError(path, line, key, "must be a non-empty string", reason=f"bad {key}")
        keywords = record.get("search_keywords")
        if keywords is not None and (not isinstance(keywords, list) or not all(isinstance(k, str) for k in keywords)):
            raise DataError(path, line, "search_keywords", "must be a list of strings", reason="bad search_keywords")
        check = record.get("check")
        if check is not None and not isinstance(check, dict):
            raise DataError(path, line, "check", "must be an object {verdict, reason, ...}", reason="bad check")
        if (check or {}).get("verdict") == "drop":
            raise DataError(path, line, "check.verdict", "a dropped record is in the training file", reason="dropped")
        yield line, record


def pas_sft_record(record: dict[str, Any], template: str, rag_template: str) -> dict[str, Any]:
    """One PAS record as a chat sample: template(prompt) -> complement."""
    user = pas_input(record["prompt"], template, keywords=record.get("search_keywords") or (), rag_template=rag_template)
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": record["complement"]}]}


def write_pas_sft_file(files: list[str], out: Path, template: str, rag_template: str) -> int:
    """Write the chat samples of all ``files`` to ``out`` (JSONL, atomically); returns how many."""
    return write_jsonl(out, (pas_sft_record(record, template, rag_template)
                             for path in files for _, record in read_pas_records(path)))


def run_pas_train(cfg: PASTrainConfig, console_print=print):
    """Build ``<output_dir>.data/pas_sft.jsonl`` from the PAS files, then run the SFT trainer on it."""
    from novalign.train.sft import run_sft

    if not cfg.pas_files:
        raise ValueError("pas_files is empty: give the JSONL written by `novalign pas build-data`")
    template = load_text(cfg.template, "template.txt")
    rag_template = load_text(cfg.rag_template, "template_rag.txt")
    data_file = Path(cfg.output_dir + ".data") / "pas_sft.jsonl"  # beside output_dir: the trainer owns that folder
    n = write_pas_sft_file(cfg.pas_files, data_file, template, rag_template)
    console_print(f"{n} PAS samples -> {data_file}")
    sft = SFTConfig(
        output_dir=cfg.output_dir, model=cfg.model, packing=cfg.packing, optim=cfg.optim, train=cfg.train,
        data=DataConfig(train_files=[str(data_file)], max_length=cfg.max_length, train_on="last"),
    )
    return run_sft(sft, console_print=console_print)
