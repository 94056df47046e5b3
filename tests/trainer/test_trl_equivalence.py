"""ft's DPO against TRL's DPOTrainer, step by step: the same tiny model (from disk), the same pairs in
the same order, the same batch, learning rate, beta, optimizer and steps, on the CPU in fp32.

ft runs each micro batch's chosen and rejected answers as one padding-free row and sums
log-probabilities by sequence (trainer.objectives); TRL pads a [chosen; rejected] batch. Both
must log the same loss and the same `rewards/*` and `logps/*` at every step, for LoRA (reference:
the adapters switched off) and full weights (reference: a frozen copy). Tolerance: 2e-5
relative or 1e-6 absolute, whichever is larger (what fp32 summation order leaves after four Adam
steps; measured: at most 2.6e-5 relative, on a reward near 1e-3); the first loss is ln 2 in both.
TRL's configs default to bf16 autocast even on a CPU: the comparison turns it off.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("torch")
trl = pytest.importorskip("trl", reason="trl is a test dependency (pyproject's dev extra)")

from trainer_helpers import REPO, read_metrics, save_tiny_model, tiny_job, train  # noqa: E402

from ftcore import records  # noqa: E402

pytestmark = pytest.mark.train

PAIRS = 32
BATCH = 8
STEPS = 4
LR = 5e-3
BETA = 0.1
SEED = 7
REL, ABS = 2e-5, 1e-6
FIGURES = ("loss", *records.PREFERENCE)


def _pairs(tmp_path: Path) -> Path:
    lines = (REPO / "factories" / "data" / "tiny_prefs.jsonl").read_text().splitlines()[:PAIRS]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _ft(tmp_path: Path, model: Path, data: Path, peft, objective: str = "dpo") -> list[dict]:
    """ft's logged steps for `objective` on the same model, pairs and settings as TRL's run."""
    raw = tiny_job(
        model={"init": "pretrained", "path": str(model), "config": {}},
        objective={"name": objective, "beta": BETA},
        data={"path": str(data), "format": "preference", "global_batch_size": BATCH, "micro_batch_size": BATCH,
              "max_seq_length": 256, "val_fraction": 0.0, "shuffle": False, "group_by_length": False},
        trainer={"max_steps": STEPS, "seed": SEED, "grad_clip": 1.0, "limit_val_batches": 0},
        optim={"lr": LR, "lr_scheduler": {"name": "constant", "warmup_steps": 0}},
    )
    raw["peft"] = peft
    assert train(tmp_path / "ft", raw) == 0
    return [r for r in read_metrics(tmp_path / "ft") if records.LOSS in r]


def _run_trl(trainer_class, args, model, tokenizer, data: Path) -> list[dict]:
    """TRL's trainer on the pairs: each step's logged figures, with the step's own loss (the
    Trainer's logged loss is rounded)."""
    from datasets import Dataset
    from transformers import TrainerCallback

    rows = [json.loads(line) for line in data.read_text().splitlines()]
    logged: list[dict] = []
    losses: list[float] = []

    class Record(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "rewards/margins" in logs:
                logged.append(dict(logs))

    class Exact(trainer_class):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            losses.append(float(loss.detach()))
            return loss

    trainer = Exact(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                    callbacks=[Record()])
    trainer.train()
    assert len(logged) == STEPS and len(losses) == STEPS
    return [{**step, "loss": loss} for step, loss in zip(logged, losses)]


def _trl(tmp_path: Path, model_dir: Path, data: Path, lora: bool) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    if lora:  # the adapters ft adds (trainer/lora.py): every projection, drawn from the job's seed
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(SEED)
        targets = sorted({n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if n.endswith("_proj")})
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets,
                                                 bias="none", task_type="CAUSAL_LM"))
    args = DPOConfig(
        output_dir=str(tmp_path / "trl"), per_device_train_batch_size=BATCH, gradient_accumulation_steps=1,
        max_steps=STEPS, learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, optim="adamw_torch_fused", seed=SEED, train_sampling_strategy="sequential",
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
        dataloader_num_workers=0, beta=BETA, loss_type=["sigmoid"], max_length=None,
        bf16=False, gradient_checkpointing=False,  # TRL defaults to bf16 autocast, on a CPU too: fp32 here, as ft
    )
    return _run_trl(DPOTrainer, args, model, tokenizer, data)


def _same(ours: list[dict], theirs: list[dict]) -> list[str]:
    wrong = []
    for step, (a, b) in enumerate(zip(ours, theirs), start=1):
        for key in FIGURES:
            if not math.isclose(a[key], b[key], rel_tol=REL, abs_tol=ABS):
                wrong.append(f"step {step} {key}: ft {a[key]!r}, TRL {b[key]!r}")
    return wrong


@pytest.mark.parametrize("method", ["lora", "full"])
def test_dpo_equals_trl_step_by_step(tmp_path, method):
    model_dir = save_tiny_model(tmp_path / "model", seed=3)
    data = _pairs(tmp_path)
    peft = {"dim": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["*_proj"]} if method == "lora" else None
    ours = _ft(tmp_path, model_dir, data, peft)
    theirs = _trl(tmp_path, model_dir, data, lora=method == "lora")
    assert len(ours) == STEPS
    assert ours[0]["loss"] == pytest.approx(math.log(2), abs=1e-7)  # the policy is the reference before step 1
    assert theirs[0]["loss"] == pytest.approx(math.log(2), abs=1e-7)
    assert ours[-1]["loss"] < ours[0]["loss"]  # it learned something for the comparison to mean anything
    assert not _same(ours, theirs), "\n".join(_same(ours, theirs))
    worst = max(abs(a[k] - b[k]) / max(abs(b[k]), ABS) for a, b in zip(ours, theirs) for k in FIGURES)
    print(f"{method}: largest relative difference from TRL over {STEPS} steps: {worst:.2e}")


def _trl_orpo(tmp_path: Path, model_dir: Path, data: Path) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    args = ORPOConfig(
        output_dir=str(tmp_path / "trl-orpo"), per_device_train_batch_size=BATCH, gradient_accumulation_steps=1,
        max_steps=STEPS, learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, optim="adamw_torch_fused", seed=SEED, train_sampling_strategy="sequential",
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
        dataloader_num_workers=0, beta=BETA, max_length=256, bf16=False,
        gradient_checkpointing=False,
    )
    return _run_trl(ORPOTrainer, args, model, tokenizer, data)


def test_orpo_odds_ratio_equals_trls(tmp_path):
    """ORPO (the reference-free objective) against TRL's ORPOTrainer, full weights. The odds-ratio
    side (length-normalised log-probabilities, rewards, log odds) must agree; the SFT side differs by
    design: TRL's ORPOTrainer takes the chosen answer's cross-entropy over the prompt too ("computed
    over the full prompt and response"), ft over the answer only, as the paper writes L_SFT and as ft's
    SFT does. So the first step (same weights) is compared, the odds-ratio side only."""
    model_dir = save_tiny_model(tmp_path / "model", seed=3)
    data = _pairs(tmp_path)
    ours = _ft(tmp_path, model_dir, data, None, "orpo")
    theirs = _trl_orpo(tmp_path, model_dir, data)
    keys = (*records.PREFERENCE, records.LOG_ODDS_RATIO, records.LOG_ODDS_CHOSEN)
    wrong = [f"step 1 {key}: ft {ours[0][key]!r}, TRL {theirs[0][key]!r}" for key in keys
             if not math.isclose(ours[0][key], theirs[0][key], rel_tol=REL, abs_tol=ABS)]
    assert not wrong, "\n".join(wrong)
    for a in (ours[0], theirs[0]):  # loss = nll - beta × mean log sigmoid(log odds), in both
        assert a["loss"] == pytest.approx(a[records.NLL_LOSS] - BETA * a[records.LOG_ODDS_RATIO], rel=1e-5)
    assert ours[-1]["loss"] < ours[0]["loss"]
