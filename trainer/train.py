"""Fine-tune one job: environment → data → model (+LoRA) → loop → save.

    python -m trainer --config JOB_DIR/config.yaml              # what srun runs on every task
    torchrun --nproc-per-node 2 -m trainer --config JOB_DIR/config.yaml

In-process (tests, benchmarks): ``run(job, job_dir)`` returns the exit code: 0 when done,
75 after a SIGUSR1/SIGTERM (checkpoint written: requeue and it resumes at the next batch).

The loss is the mean over every answer token of the global batch: each micro batch
returns its summed token losses, divided by the global answer-token count (known on every
rank from the deterministic data order, so it costs no communication). Results therefore
do not depend on micro batch size or process count beyond float rounding.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Callable

import torch

from ftcore import contract, exits, layout, rendezvous
from ftcore.errors import UserError
from ftcore.schedule import lr_at

from . import checkpointing, data, dist
from .batching import StepBatches, val_batches
from .collate import collate
from .metrics import Metrics, memory_gib
from .model import build
from .tokenizer import load_tokenizer


def run(job, job_dir: str | Path, on_step: Callable[[dict], None] | None = None,
        on_signal: Callable[[str], None] | None = None,
        watch: Callable[[str, object, object], None] | None = None) -> int:
    """Train `job` (a validated ftcore.schema.Job) writing into `job_dir`; return the exit code.

    `on_step(record)` is called on every rank after each optimizer step (tests, benchmarks);
    `on_signal(name)` when a stop signal arrives; `watch(event, built, optimizer)` after every
    micro batch's backward ("backward") and every optimizer step before the gradients are
    dropped ("step"): the tests that hold the trainer's tensors to `ft plan` look there.
    Raises UserError for problems the user must fix, before any training.
    """
    env = dist.detect()
    preflight(job, env)
    device = torch.device("cpu")
    if job.trainer.accelerator == "gpu":
        # srun may show each task all of the node's GPUs or only its own.
        device = torch.device("cuda", env.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    _quiet_libraries(env)
    stop = StopSignal(on_signal)
    stop.install()
    dist.init(env, device, alone_too=job.strategy == "fsdp2")
    try:
        job_dir = Path(job_dir)
        job_dir.mkdir(parents=True, exist_ok=True)
        return train(job, job_dir, env, device, stop, on_step, watch)
    finally:
        stop.uninstall()
        dist.shutdown()


def train(job, job_dir: Path, env: dist.DistEnv, device: torch.device, stop: "StopSignal", on_step=None,
          watch=None) -> int:
    """The whole run, top to bottom, once the process group exists."""
    seed = job.trainer.seed
    torch.manual_seed(seed)

    # --- data, before the model: a malformed record should fail in seconds, not after
    # loading 70B weights. Every rank tokenizes everything once; the loop only slices.
    tokenizer = load_tokenizer(job)
    dataset = data.load(job.data, tokenizer, seed)
    batches = StepBatches(
        dataset.train, job.data.global_batch_size, job.data.micro_batch_size, env.world_size, env.rank, seed,
        job.data.shuffle, job.data.group_by_length,
    )
    total_steps = job.trainer.max_steps or job.trainer.num_epochs * batches.steps_per_epoch

    # --- model (+LoRA)
    base_dir, base_ref = _base_reference(job, job_dir)
    built = build(job, env, device, tokenizer, base_dir=base_dir)
    optimizer = _optimizer(job.optim, built.trainable)

    # --- resume from the newest complete checkpoint, if any
    step = 0
    resume_from = layout.newest_complete(job_dir)
    if resume_from is not None and not job.resume.auto:
        raise UserError(
            f"{job_dir / layout.CHECKPOINTS} already holds checkpoints (newest {resume_from.name}) and resume.auto=false: "
            "a fresh run would mix with them. Use a new job folder, or remove that folder."
        )
    if resume_from is not None:
        state = checkpointing.load(resume_from, built, optimizer, env)
        _check_same_data(state, resume_from, len(dataset.train), job)
        step = state["step"]
    else:
        torch.manual_seed(seed + env.rank)  # dropout streams: different per rank, same every run

    metrics = Metrics(job_dir, job, env.is_main, resume_step=step, total_steps=total_steps)
    n_trainable = sum(p.numel() for p in built.trainable)
    n_total = sum(p.numel() for p in built.module.parameters())
    metrics.print(
        f"ft trainer | job {job.name} | {job.method} | {job.strategy} | {env.world_size} process(es) "
        f"({env.launcher}) on {device.type} | global batch {job.data.global_batch_size} = micro "
        f"{job.data.micro_batch_size} × accum {job.grad_accum_steps} × dp {env.world_size} | "
        f"{total_steps} steps ({batches.steps_per_epoch}/epoch) | trainable {n_trainable:,} of {n_total:,} params"
    )
    metrics.print("policy: " + "; ".join(built.decision.describe()))
    metrics.print(dataset.summary())
    if resume_from is not None:
        metrics.print(f"resumed from {resume_from} at step {step}")

    def save(at_step: int) -> Path:
        epoch, index = batches.position(at_step)
        state = {
            "step": at_step,
            "data_position": {"epoch": epoch, "index": index},  # where the next step starts
            "num_train_rows": len(dataset.train),
            "global_batch_size": job.data.global_batch_size,
            "world_size": env.world_size,
            "seed": seed,
            "lr": lr_at(at_step, total_steps, job.optim) if at_step else 0.0,
            "schedule": {"name": job.optim.lr_scheduler.name, "total_steps": total_steps,
                         "warmup_steps": job.optim.lr_scheduler.warmup_steps},
        }
        path = checkpointing.save(job_dir, at_step, built, optimizer, tokenizer, state, env, job.checkpoint.keep_last, base_ref)
        metrics.print(f"checkpoint {path}")
        return path

    def validate(at_step: int) -> None:
        if dataset.val and job.trainer.limit_val_batches != 0:
            loss, tokens = evaluate(built, dataset.val, job, env, device, tokenizer.pad_token_id)
            metrics.validation(at_step, loss, tokens)

    # --- loop
    model = built.module
    model.train()
    # FSDP2 averages gradients over ranks; the manual all-reduce sums them.
    grad_scale = env.world_size if built.sharded else 1
    max_norm = job.trainer.grad_clip or math.inf
    started, stop_requested = step, False
    last_log, tokens_since_log = time.perf_counter(), 0
    while step < total_steps:
        everyone = batches.global_batch_samples(step)
        answer_tokens = max(1, sum(s.answer_tokens for s in everyone))
        tokens_since_log += sum(len(s) for s in everyone)

        loss_sum = torch.zeros((), device=device)
        micro_batches = batches.micro_batches(step)
        for i, samples in enumerate(micro_batches):
            if built.sharded:
                # The policy's gradient residency: full SFT reduce-scatters after every micro
                # batch (only shards are ever held); LoRA accumulates its small unsharded
                # gradients and reduce-scatters once, after the last.
                model.set_requires_gradient_sync(
                    built.decision.grad_sync == "micro_batch" or i == len(micro_batches) - 1)
            batch = collate(samples, tokenizer.pad_token_id, job.model.attn_implementation, built.compute_dtype, device,
                                 job.data.padding_free)
            loss = model(**batch)
            (loss * (grad_scale / answer_tokens)).backward()
            loss_sum += loss.detach()
            if watch is not None:
                watch("backward", built, optimizer)
        if not built.sharded:
            dist.all_reduce_grads(built.trainable)
        grad_norm = torch.nn.utils.clip_grad_norm_(built.trainable, max_norm)
        lr = lr_at(step + 1, total_steps, job.optim)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        if watch is not None:
            watch("step", built, optimizer)
        optimizer.zero_grad(set_to_none=True)
        step += 1

        # One small all-reduce per step: the loss for the log, and whether any rank was told
        # to stop (all must checkpoint at the same step). `.item()` is a sync point.
        shared = torch.stack([loss_sum.float(), torch.tensor(float(stop.requested), device=device)])
        dist.all_reduce_sum(shared)
        loss_value, stop_requested = shared.tolist()
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP2
            grad_norm = grad_norm.full_tensor()
        record = {
            "step": step,
            "epoch": (step - 1) // batches.steps_per_epoch,
            "loss": loss_value / answer_tokens,
            "grad_norm": float(grad_norm),
            "lr": lr,
            "mem_gib": memory_gib(device),
        }
        if step % job.trainer.log_every_steps == 0 or step == total_steps:
            now = time.perf_counter()
            record["tps"] = tokens_since_log / (now - last_log)
            last_log, tokens_since_log = now, 0
            metrics.step(record)
        if on_step is not None:
            on_step(record)

        if stop_requested and step < total_steps:
            metrics.print(f"stop requested (SIGUSR1/SIGTERM): checkpointing step {step}, exit {exits.REQUEUE}")
            save(step)
            metrics.close()
            return exits.REQUEUE
        if step < total_steps:
            if job.trainer.val_every_steps and step % job.trainer.val_every_steps == 0:
                validate(step)
            if job.checkpoint.every_steps and step % job.checkpoint.every_steps == 0:
                save(step)

    # --- save
    if step == started:
        metrics.print(f"nothing to do: the checkpoint at step {step} already completes {total_steps} steps")
    elif not stop_requested:  # told to stop at the last step: no time for a validation pass
        validate(step)
    metrics.finish(step, save(step))
    metrics.close()
    return exits.OK


def evaluate(built, samples, job, env, device, pad_id) -> tuple[float, int]:
    """Mean loss per answer token over the validation set (or its first limit_val_batches)."""
    model = built.module
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, answer tokens
    with torch.no_grad():
        for batch_samples, counts in val_batches(
            samples, job.data.micro_batch_size, env.world_size, env.rank, job.trainer.limit_val_batches
        ):
            batch = collate(batch_samples, pad_id, job.model.attn_implementation, built.compute_dtype, device,
                                 job.data.padding_free)
            loss = model(**batch)
            if counts:
                totals += torch.stack([loss.double(), torch.tensor(float(sum(s.answer_tokens for s in batch_samples)), dtype=torch.float64, device=device)])
    model.train()
    dist.all_reduce_sum(totals)
    loss_sum, tokens = totals.tolist()
    return loss_sum / max(tokens, 1), int(tokens)


def _optimizer(cfg, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


def _base_reference(job, job_dir: Path) -> tuple[Path | None, str | None]:
    """(folder to save a random base into, what adapter_config.json names as the base)."""
    if job.peft is None:
        return None, None
    if job.model.init == "random":
        base_dir = (job_dir / layout.BASE_MODEL).resolve()
        return base_dir, str(base_dir)
    local = Path(job.model.path)
    return None, str(local.resolve()) if local.exists() else job.model.path


def _check_same_data(state: dict, folder: Path, num_rows: int, job) -> None:
    if state["num_train_rows"] != num_rows or state["global_batch_size"] != job.data.global_batch_size:
        raise UserError(
            f"{folder} was written for {state['num_train_rows']} training rows and global batch "
            f"{state['global_batch_size']}; this job has {num_rows} and {job.data.global_batch_size}, so it "
            "cannot resume at the same batch. Use a new job folder, or resume.auto=false to start over."
        )


def preflight(job, env: dist.DistEnv) -> None:
    """What only this machine can tell (the config's own rules were checked by the schema)."""
    problems = rendezvous.allocation_problems(job.trainer.num_nodes, job.trainer.devices, env, os.environ)
    if job.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        problems.append("trainer.accelerator=gpu but CUDA is not available here (trainer.accelerator=cpu for CPU runs)")
    if job.model.attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        problems.append("model.attn_implementation=flash_attention_2 but the flash_attn package is not installed")
    if job.model.quantization and importlib.util.find_spec("torchao") is None:
        problems.append(contract.quantization_missing())
    # Inside a container a path exists only if a bind makes it visible.
    problems += job.missing_paths()
    if problems:
        raise UserError(*problems)


class StopSignal:
    """SIGUSR1 (SLURM's warning before the time limit) or SIGTERM (preemption): stop after this step."""

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

    def __init__(self, on_signal: Callable[[str], None] | None = None) -> None:
        self.requested = False
        self._previous: dict = {}
        self._on_signal = on_signal

    def _handle(self, signum, frame) -> None:
        self.requested = True
        name = signal.Signals(signum).name
        sys.stderr.write(f"ft trainer: got {name}; will checkpoint after this step\n")
        if self._on_signal is not None:
            self._on_signal(name)

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def uninstall(self) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous = {}


def _quiet_libraries(env: dist.DistEnv) -> None:
    """No progress bars in SLURM logs; only rank 0 reports library warnings."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    # Library chatter that says nothing about this run.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    warnings.filterwarnings("ignore", message=".*assuming the intent is to (save|load) in a single process.*")
    logging.getLogger("c10d-NullHandler-dcp_logger").setLevel(logging.WARNING)  # DEBUG line per DCP call
    transformers.utils.logging.set_verbosity_warning() if env.is_main else transformers.utils.logging.set_verbosity_error()
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        pass
