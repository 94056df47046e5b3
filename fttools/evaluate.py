"""Score a checkpoint on a data file: the loss training reports, and SQuAD's EM and F1.

    ft eval JOB --data squad_val.jsonl [--format squad] [--limit 500] [--json]

The loss is the one the trainer's validation computes, through the same code: records are
read, prompt-masked and truncated by the trainer's own code (``trainer.samples``) with the job's max_seq_length and
prompt template, and summed by ``CausalLMLoss`` over answer tokens. On the records a job
validated on, it reproduces the job's last ``val_loss``.

For SQuAD-format data each question's prompt (the training prompt, up to "Answer:") is
continued greedily; the first line of the continuation is the prediction, scored against
every gold answer with the official normalisation (fttools/squad_metrics.py).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ftcore import records, shipped
from ftcore.errors import UserError
from ftcore.formats import FORMATS, NAMES, mismatch
from ftcore.schema import looks_local
from ftcore.layout import Checkpoint
from trainer.batching import val_batches
from trainer.collate import collate
from trainer.formats import squad_segments
from trainer.loss import CausalLMLoss
from trainer.records import Record, read_records
from trainer.samples import Sample, Stats, tokenize

from .inference import greedy, load_model, load_tokenizer, prompt_ids
from .squad_metrics import gold_answers, score

_SAMPLES_SHOWN = 5


def evaluate(ckpt: Checkpoint, data_path: str | None, fmt: str | None = None, limit: int | None = None,
             max_new_tokens: int = 32, answers: bool = True, split: str = "validation") -> dict[str, Any]:
    """`ft eval`: a dict of the figures (what `--json` prints); `answers=False` skips SQuAD's
    generation (the slow part) and scores the loss only. `split` applies to hub datasets.
    Without `data_path`: the job's validation data, its val_path or else the records it held
    out of its training data (data.val_fraction, the same split as training)."""
    job_data = ckpt.job_config.get("data") or {}
    fmt = fmt or job_data.get("format")
    if fmt not in NAMES:
        raise UserError(f"--format {fmt}: choose one of {', '.join(NAMES)}" if fmt else
                        f"{ckpt.path} comes from no ft job, so the data format is unknown: pass --format")
    if data_path is not None and looks_local(data_path) and Path(shipped.expand(data_path)).is_file():
        problem = mismatch(Path(shipped.expand(data_path)), fmt, setting="--format ")
        if problem:
            raise UserError(problem)
    # The job's own prompt template and length, so the loss means what training's meant.
    template = job_data.get("prompt_template") if job_data.get("format") == fmt else None
    max_len = int(job_data.get("max_seq_length") or 2048)
    micro_batch = int(job_data.get("micro_batch_size") or 8)
    if limit is not None and limit < 1:
        raise UserError("--limit must be at least 1")

    if data_path is None:
        records, data_path = job_validation_records(ckpt)
    else:
        records = read_records(data_path, split)
    records = records[:limit]
    tokenizer = load_tokenizer(ckpt)
    stats = Stats(records=len(records))
    samples = tokenize(records, fmt, tokenizer, max_len, template, stats)
    if not samples:
        raise UserError(f"{data_path}: no records with an answer to score")
    model = load_model(ckpt)
    if FORMATS[fmt].pairs:
        return {"checkpoint": str(ckpt.path), "data": data_path, "format": fmt, "records": len(records),
                "examples": len(samples), "truncated": stats.truncated, "dropped": stats.dropped,
                **pair_scores(model, samples, micro_batch, tokenizer.pad_token_id)}
    loss_sum, tokens = validation_loss(model, samples, micro_batch, tokenizer.pad_token_id)
    result: dict[str, Any] = {
        "checkpoint": str(ckpt.path),
        "data": data_path,
        "format": fmt,
        "records": len(records),
        "examples": len(samples),
        "truncated": stats.truncated,
        "dropped": stats.dropped,
        "answer_tokens": tokens,
        "loss": loss_sum / tokens,
        "perplexity": math.exp(min(loss_sum / tokens, 700)),
    }
    if fmt == "squad" and answers:
        result.update(squad_scores(model, tokenizer, records, template, max_new_tokens, micro_batch))
    return result


def job_validation_records(ckpt: Checkpoint) -> tuple[list[Record], str]:
    """The records the checkpoint's job validated on, and how to name them: its val_path, or
    the share of its training data it held out (trainer.data.hold_out, seeded as training was)."""
    from ftcore.schema import DataConfig
    from trainer.data import held_out, source_records

    job = ckpt.job_config
    data = job.get("data") or {}
    try:
        config = DataConfig.model_validate(data)
    except ValueError as err:  # pydantic's ValidationError: a config.yaml of another ft version
        raise UserError(f"--data: the checkpoint's job data settings cannot be read ({err.__class__.__name__}); "
                        "name the file to score") from None
    named = ", ".join(source.path for source in (config.val_sources or config.sources))
    if config.val_path:
        return [r for s in config.val_sources for r in read_records(s.path, s.split)], named
    fraction = config.val_fraction
    if fraction <= 0:
        raise UserError("--data: name the file to score (this checkpoint's job has no data.val_path, and held "
                        "nothing out: data.val_fraction=0)")
    seed = int((job.get("trainer") or {}).get("seed", 1234))
    _, held = held_out(source_records(config), fraction, seed)
    return held, f"{named} (the {fraction:g} held out in training, seed {seed})"


@torch.no_grad()
def validation_loss(model, samples: list[Sample], micro_batch: int, pad_id: int) -> tuple[float, int]:
    """(summed loss, answer tokens), batched exactly as one-process validation batches it."""
    loss_fn = CausalLMLoss(model).eval()
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    attn = getattr(model.config, "_attn_implementation", None) or "sdpa"
    total, tokens = 0.0, 0
    for batch_samples, _ in val_batches(samples, micro_batch, 1, 0, None):
        batch = collate(batch_samples, pad_id, attn, dtype, device)
        total += float(loss_fn(**batch).double())
        tokens += sum(s.answer_tokens for s in batch_samples)
    return total, tokens


def pair_scores(model, samples: list[Sample], micro_batch: int, pad_id: int) -> dict[str, Any]:
    """Preference pairs, without a reference model: the chosen answers' loss per token (and
    perplexity), the mean summed log-probability of each side (TRL's `logps/chosen`,
    `logps/rejected`), and how often the model gives the chosen answer the higher one."""
    loss_fn = CausalLMLoss(model).eval()
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    attn = getattr(model.config, "_attn_implementation", None) or "sdpa"
    chosen, rejected, chosen_tokens = [], [], 0
    with torch.no_grad():
        for batch_samples, _ in val_batches(samples, micro_batch, 1, 0, None):
            logps = loss_fn(**collate(batch_samples, pad_id, attn, dtype, device, sequences=True)).double()
            chosen += logps[0::2].tolist()
            rejected += logps[1::2].tolist()
            chosen_tokens += sum(s.chosen_tokens for s in batch_samples)
    loss = -sum(chosen) / max(chosen_tokens, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 700)), "answer_tokens": chosen_tokens,
            records.LOGPS_CHOSEN: sum(chosen) / len(chosen), records.LOGPS_REJECTED: sum(rejected) / len(rejected),
            "preference_accuracy": 100.0 * sum(c > r for c, r in zip(chosen, rejected)) / len(chosen)}


def squad_scores(model, tokenizer, records: list[Record], template: str | None, max_new_tokens: int,
                 batch_size: int) -> dict[str, Any]:
    prompts = [squad_segments(r, template)[0][0] for r in records]
    texts = greedy(model, tokenizer, [prompt_ids(tokenizer, p) for p in prompts], max_new_tokens, batch_size)
    predictions = [first_line(t) for t in texts]
    golds = [gold_answers(r.fields.get("answers")) for r in records]
    samples = [{"question": r.fields.get("question"), "prediction": p, "answers": g}
               for r, p, g in zip(records[:_SAMPLES_SHOWN], predictions, golds)]
    return {**score(predictions, golds), "max_new_tokens": max_new_tokens, "samples": samples}


def first_line(text: str) -> str:
    """A base model often keeps writing after the answer; the answer is the first line."""
    stripped = text.strip()
    return stripped.splitlines()[0].strip() if stripped else ""
