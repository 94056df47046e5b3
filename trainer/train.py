"""Fine-tune one job: environment → data → model (+LoRA) → loop → save.

    python -m trainer --config JOB_DIR/config.yaml              # what srun runs on every task
    torchrun --nproc-per-node 2 -m trainer --config JOB_DIR/config.yaml

In-process (tests, benchmarks): ``run(job, job_dir)`` returns the exit code: 0 when done,
75 after a SIGUSR1/SIGTERM (checkpoint written: requeue and it resumes at the next batch).

The loss is the mean over every answer token of the global batch: each micro batch
returns its summed token losses, divided by the global answer-token count (known on every
rank from the deterministic data order, so it costs no communication), and gradients are
summed over ranks. Results therefore do not depend on micro batch size or process count
beyond float rounding. Preference tuning (`objective.name=dpo`, `orpo`) divides the same way,
by the global pair count (`trainer.objectives`).

The run (`train`: set-up, loop, checkpoints, logging, validation, export) is apart from the
step (`train_step`: one optimizer step, what to change for speed). The host never waits for
the device inside a step. It reads values back only at sync points (`SyncPoints`): logging
steps, and often enough to honour a stop signal in time. A non-finite step is skipped by the
optimizer on the device (`trainer.update`) and reported at the next sync point.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ftcore import contract, exits, layout, records, rendezvous
from ftcore.errors import UserError
from ftcore.schedule import lr_at

from . import checkpointing, data, dist, objectives, update
from .batching import StepBatches, val_batches
from .collate import Prefetcher, collate
from .metrics import Metrics, memory_gib
from .model import Built, build, graph_breaks
from .stop import StopSignal
from .tokenizer import load_tokenizer


def run(job, job_dir: str | Path, on_step: Callable[[dict], None] | None = None,
        on_signal: Callable[[str], None] | None = None,
        watch: Callable[[str, object, object], None] | None = None,
        stop: StopSignal | None = None) -> int:
    """Train `job` (a validated ftcore.schema.Job) writing into `job_dir`; return the exit code.

    `on_step(record)` is called on every rank after each optimizer step (tests, benchmarks);
    `on_signal(name)` when a stop signal arrives; `stop`: a `StopSignal` installed already (by
    `python -m trainer`, before torch is imported); `watch(event, built, optimizer)` after every
    micro batch's backward ("backward") and every optimizer step before the gradients are
    dropped ("step"): the tests that hold the trainer's tensors to `ft plan` look there.
    Raises UserError for problems the user must fix, before any training.
    """
    # From the first moment: a stop during start-up (rendezvous, tokenizing, loading, the first
    # step's compile) ends the process at once with the requeue status.
    own_stop = stop is None
    if stop is None:
        stop = StopSignal(on_signal)
        stop.install()
    try:
        env = dist.detect()
        preflight(job, env)
        device = torch.device("cpu")
        if job.trainer.accelerator == "gpu":
            # srun may show each task all of the node's GPUs or only its own.
            device = torch.device("cuda", env.local_rank % torch.cuda.device_count())
            torch.cuda.set_device(device)
        _quiet_libraries(env)
        dist.init(env, device, alone_too=job.strategy == "fsdp2")
        job_dir = Path(job_dir)
        job_dir.mkdir(parents=True, exist_ok=True)
        return train(job, job_dir, env, device, stop, on_step, watch)
    finally:
        if own_stop:
            stop.uninstall()
        dist.shutdown()


def train(job, job_dir: Path, env: dist.DistEnv, device: torch.device, stop: "StopSignal", on_step=None,
          watch=None) -> int:
    """The run, top to bottom, once the process group exists: set-up, the loop of `train_step`s with
    its sync points, logging, validation and checkpoints, and the final export."""
    setup = set_up(job, job_dir, env, device, stop)
    metrics, total_steps = setup.metrics, setup.total_steps
    step = started = setup.start_step
    setup.built.module.train()
    syncs = SyncPoints(job.trainer.log_every_steps, total_steps, seconds=job.slurm.signal_seconds / 4)
    stop_requested, reported_skips = False, 0
    last_log, tokens_since_log, last_sync = time.perf_counter(), 0, (time.perf_counter(), step)

    if job.trainer.check_loss and step < total_steps:
        first = check_sample(setup.batches.micro_batches(step)[0][0])
        check_loss(setup.built, setup.collate([first], sequences=False), job)

    # Until a sync point, nothing here reads a value from the device: the host queues work
    # and moves on. Counts that the loop needs (answer tokens, pairs) come from the samples,
    # which live on the host.
    while step < total_steps:
        everyone = setup.batches.global_batch_samples(step)
        counts = setup.objective.counts(everyone)
        tokens_since_log += sum(len(x) for x in everyone)
        logs = (step + 1) % job.trainer.log_every_steps == 0 or step + 1 == total_steps
        done = train_step(setup, step, counts, want_norm=logs, watch=watch)
        step += 1

        record = {records.STEP: step}
        if syncs.due(step):
            now = time.perf_counter()
            readings = read_back(setup, done, counts, (now - last_sync[0]) / (step - last_sync[1]))
            stop_requested = readings.stop_requested
            syncs.plan(step, readings.step_seconds / env.world_size)
            last_sync = (now, step)
            if readings.skipped > reported_skips:
                reported_skips = _nonfinite(job, metrics, readings.skipped, readings.first_bad, step)
            if logs:
                record.update({
                    records.EPOCH: (step - 1) // setup.batches.steps_per_epoch,
                    records.LOSS: readings.loss,
                    records.GRAD_NORM: readings.grad_norm,
                    records.LR: done.lr,
                    records.MEM_GIB: memory_gib(device),
                    records.TPS: tokens_since_log / (now - last_log),
                    **readings.figures,
                })
                last_log, tokens_since_log = now, 0
                metrics.step(record)
        if on_step is not None:
            on_step(record)
        if job.trainer.compile and step == started + 1:  # the first step ran every compiled layer
            metrics.print(graph_breaks())

        if stop_requested and step < total_steps:
            return setup.stop_now(step, "a stop signal")
        if step < total_steps:
            if job.trainer.val_every_steps and step % job.trainer.val_every_steps == 0 and not setup.validate(step):
                return setup.stop_now(step, "a stop signal during validation")
            if job.checkpoint.every_steps and step % job.checkpoint.every_steps == 0:
                setup.save(step)

    # --- save: the final checkpoint is also a Hugging Face model folder
    if step == started:
        metrics.print(f"nothing to do: the checkpoint at step {step} already completes {total_steps} steps")
    elif not stop_requested:  # told to stop at the last step: no time for a validation pass
        setup.validate(step)  # cut short by a stop signal: the final checkpoint below is written all the same
    metrics.finish(step, setup.save(step, export=True))
    metrics.close()
    return exits.OK


@dataclass
class StepDone:
    """What `train_step` leaves on the device for the next sync point to read, and the lr it used."""

    terms: torch.Tensor  # this rank's sums of the objective's terms (`trainer.objectives`)
    figures: torch.Tensor | None  # this rank's sums of the objective's figures (preference tuning)
    grad_norm: torch.Tensor | None  # None unless asked for (a logging step)
    lr: float


def train_step(setup: "Setup", step: int, counts: dict[str, int], want_norm: bool, watch=None) -> StepDone:
    """Optimizer step `step + 1`: every micro batch's forward and backward, gradients summed over
    ranks, clipped, applied. It queues work and reads nothing back from the device: what it
    returns stays there until a sync point. `counts`: the global batch's denominators."""
    built, model, optimizer, objective = setup.built, setup.built.module, setup.optimizer, setup.objective
    terms_sum = torch.zeros(len(objective.terms), device=setup.device)
    figures_sum = torch.zeros(len(objective.figures), device=setup.device) if objective.figures else None
    micro_batches = setup.batches.micro_batches(step)
    for i, batch in enumerate(Prefetcher(micro_batches, setup.collate, setup.device)):
        if built.sharded:
            # The policy's gradient residency: full SFT reduce-scatters after every micro
            # batch (only shards are ever held); LoRA accumulates its small unsharded
            # gradients and reduce-scatters once, after the last.
            model.set_requires_gradient_sync(
                built.decision.grad_sync == "micro_batch" or i == len(micro_batches) - 1)
        terms, figures = objective.micro_batch(batch)
        # Every rank divides by the global counts, and gradients are summed over ranks
        # (FSDP2 told so in trainer.sharding; dist.all_reduce_grads sums).
        objective.loss(terms, counts).backward()
        terms_sum += terms.detach()
        if figures is not None:
            figures_sum += figures
        if watch is not None:
            watch("backward", built, optimizer)
    if not built.sharded:
        dist.all_reduce_grads(built.trainable)
    grad_norm = update.clip(built.trainable, setup.job.trainer.grad_clip, want_norm=want_norm)
    setup.guard.mark(optimizer, built.trainable, step + 1, grad_norm)
    lr = lr_at(step + 1, setup.total_steps, setup.job.optim)
    for group in optimizer.param_groups:
        group["lr"] = lr
    setup.stop.training()  # from this update on, a stop signal checkpoints instead of ending at once
    optimizer.step()  # skipped on the device when the guard found a non-finite gradient
    if watch is not None:
        watch("step", built, optimizer)
    optimizer.zero_grad(set_to_none=True)
    return StepDone(terms_sum, figures_sum, grad_norm, lr)


@dataclass
class Readings:
    """What a sync point read back from the device, the same on every rank."""

    loss: float  # the global batch's loss (the objective's terms over their global counts)
    stop_requested: bool  # whether any rank was told to stop (all must checkpoint at the same step)
    step_seconds: float  # summed over ranks
    skipped: int  # non-finite steps so far
    first_bad: int  # the first of them
    grad_norm: float
    figures: dict[str, float]  # the objective's figures (TRL's `rewards/margins`, ...), by record key


def read_back(setup: "Setup", done: StepDone, counts: dict[str, int], step_seconds: float) -> Readings:
    """The one host sync: this step's loss and figures summed over ranks, the stop flags, the time
    per step, and the skipped-step counts, in one all-reduce and one read."""
    device, objective = setup.device, setup.objective
    figures = done.figures if done.figures is not None else torch.zeros(0, device=device)
    shared = torch.cat([done.terms.float(), figures.float(),
                        torch.stack([torch.full((), float(setup.stop.requested), device=device),
                                     torch.full((), step_seconds, device=device)])])
    dist.all_reduce_sum(shared)
    norm = torch.zeros(1) if done.grad_norm is None else done.grad_norm.reshape(1).float()
    values = torch.cat([shared, setup.guard.counts().to(device), norm.to(device)]).tolist()
    terms, values = values[: len(objective.terms)], values[len(objective.terms):]
    sums, values = values[: len(objective.figures)], values[len(objective.figures):]
    stops, seconds, skipped, first_bad, grad_norm = values
    return Readings(
        loss=sum(term / counts[name] for term, name in zip(terms, objective.terms)),
        stop_requested=stops > 0, step_seconds=seconds, skipped=int(skipped), first_bad=int(first_bad),
        grad_norm=grad_norm,
        figures={key: total / counts[name] for total, (key, name) in zip(sums, objective.figures)},
    )


@dataclass
class Setup:
    """What a run trains with, built once by `set_up`; it saves and validates itself."""

    job: object
    job_dir: Path
    env: dist.DistEnv
    device: torch.device
    tokenizer: object
    dataset: data.Data
    batches: StepBatches
    total_steps: int
    built: Built
    optimizer: torch.optim.Optimizer
    guard: update.Guard
    stop: StopSignal
    base_ref: str | None  # what adapter_config.json names as the base
    start_step: int  # 0, or the step of the checkpoint this run resumes from
    metrics: Metrics
    objective: objectives.Objective  # what a micro batch contributes to the loss (objective.name)
    last_save_s: float | None = None  # how long this run's last checkpoint took to write
    said_kill_wait: bool = False  # whether the log has said a checkpoint outlasts the cluster's KillWait

    def collate(self, samples, sequences: bool | None = None) -> dict:
        """A micro batch on the device; `sequences`: with each answer position's sequence (default:
        what the objective needs)."""
        return collate(samples, self.tokenizer.pad_token_id, self.built.attention.name, self.built.compute_dtype,
                       self.device, self.built.attention.padding_free,
                       self.objective.sequences if sequences is None else sequences)

    def save(self, at_step: int, export: bool = False) -> Path:
        job = self.job
        epoch, index = self.batches.position(at_step)
        state = {
            "step": at_step,
            "data_position": {"epoch": epoch, "index": index},  # where the next step starts
            "num_train_rows": len(self.dataset.train),
            "global_batch_size": job.data.global_batch_size,
            "world_size": self.env.world_size,
            "seed": job.trainer.seed,
            "lr": lr_at(at_step, self.total_steps, job.optim) if at_step else 0.0,
            "schedule": {"name": job.optim.lr_scheduler.name, "total_steps": self.total_steps,
                         "warmup_steps": job.optim.lr_scheduler.warmup_steps},
        }
        # hf_every_save: every checkpoint loads with PeftModel / AutoModelForCausalLM as it is
        # (a full copy gathered on rank 0 each time; the final one always has it).
        started = time.perf_counter()
        path = checkpointing.save(self.job_dir, at_step, self.built, self.optimizer, self.tokenizer, state, self.env,
                                  job.checkpoint.keep_last, self.base_ref, export or job.checkpoint.hf_every_save)
        self.last_save_s = time.perf_counter() - started
        self.metrics.print(f"checkpoint {path} ({self.last_save_s:.1f} s)")
        kill_wait = exits.kill_wait_s()
        if kill_wait is not None and self.last_save_s > kill_wait and not self.said_kill_wait:
            self.said_kill_wait = True
            self.metrics.print(
                f"warning: that checkpoint took {self.last_save_s:.1f} s to write, longer than the {kill_wait} s this "
                "cluster leaves a job between SIGTERM and SIGKILL (KillWait): a cancel, a preemption or a time "
                "limit reached without warning cannot save, and the requeued job resumes from the checkpoint "
                "before. Checkpoint often enough to lose little (checkpoint.every_steps); slurm.signal_seconds "
                "warns early before the time limit; a partition's GraceTime adds to a preemption's KillWait")
        return path

    def validate(self, at_step: int) -> bool:
        """Validate at `at_step`; False when a stop signal cut the pass short (nothing recorded)."""
        if self.dataset.val and self.job.trainer.limit_val_batches != 0:
            result = evaluate(self, self.stop)
            if result is None:
                return False
            self.metrics.validation(at_step, *result)
        return True

    def stop_now(self, at_step: int, where: str) -> int:
        self.metrics.print(f"stop requested ({where}): checkpointing step {at_step}, exit {exits.REQUEUE}")
        if self.last_save_s is not None:
            # A site kills a job KillWait (or the preemption GraceTime) after SIGTERM: a save cut
            # short leaves no marker, and the requeued job resumes from the checkpoint before.
            kill_wait = exits.kill_wait_s()
            limit = (f"this cluster kills {kill_wait} s after SIGTERM (KillWait)" if kill_wait is not None
                     else "a site that kills sooner after its signal leaves the one before it to resume from")
            self.metrics.print(f"(the last checkpoint took {self.last_save_s:.1f} s to write; {limit}; "
                               "slurm.signal_seconds gives more warning before a time limit)")
        self.save(at_step)
        self.metrics.close()
        return exits.REQUEUE


def set_up(job, job_dir: Path, env: dist.DistEnv, device: torch.device, stop: StopSignal) -> Setup:
    """Data, model (+LoRA), optimizer, and the newest complete checkpoint to resume from."""
    seed = job.trainer.seed
    torch.manual_seed(seed)

    # --- data, before the model: a malformed record should fail in seconds, not after
    # loading 70B weights. Rank 0 tokenizes once per job into the job folder's cache; the
    # other ranks, and any resubmission, read it. The loop only slices.
    tokenizer = load_tokenizer(job)
    dataset = data.load(job.data, tokenizer, seed, cache=job_dir / layout.TOKEN_CACHE, is_main=env.is_main)
    batches = StepBatches(
        dataset.train, job.data.global_batch_size, job.data.micro_batch_size, env.world_size, env.rank, seed,
        job.data.shuffle, job.data.group_by_length,
    )
    total_steps = job.trainer.max_steps or job.trainer.num_epochs * batches.steps_per_epoch

    # --- model (+LoRA)
    base_dir, base_ref = checkpointing.base_reference(job, job_dir)
    built = build(job, env, device, tokenizer, base_dir=base_dir)
    optimizer = update.optimizer(job.optim, built.trainable)

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
        f"ft trainer | job {job.name} | {job.method}{'' if job.objective.name == 'sft' else ' ' + job.objective.name} | {job.strategy} | {env.world_size} process(es) "
        f"({env.launcher}) on {device.type} | global batch {job.data.global_batch_size} = micro "
        f"{job.data.micro_batch_size} × accum {job.grad_accum_steps} × dp {env.world_size} | "
        f"{total_steps} steps ({batches.steps_per_epoch}/epoch) | trainable {n_trainable:,} of {n_total:,} params"
    )
    metrics.print("policy: " + "; ".join(built.decision.describe()))
    metrics.print(dataset.summary())
    if resume_from is not None:
        metrics.print(f"resumed from {resume_from} at step {step}")
    guard = update.Guard(built.trainable[0].device, built.sharded, comm_device=device)
    return Setup(job, job_dir, env, device, tokenizer, dataset, batches, total_steps, built, optimizer, guard,
                 stop, base_ref, step, metrics, objectives.make(job.objective, built))


class SyncPoints:
    """The steps at which the host reads the device (a sync point): every logging step, and often enough that
    a stop signal (SIGUSR1 comes slurm.signal_seconds early) is honoured within about
    `seconds` of training. Every rank computes the same steps from the same shared figures."""

    def __init__(self, log_every: int, total_steps: int, seconds: float):
        self.log_every, self.total, self.seconds = log_every, total_steps, seconds
        self.next = 1

    def due(self, step: int) -> bool:
        return step % self.log_every == 0 or step >= self.total or step >= self.next

    def plan(self, step: int, step_seconds: float) -> None:
        self.next = step + max(1, int(self.seconds / max(step_seconds, 1e-6)))


def _nonfinite(job, metrics, skipped: int, first_bad: int, step: int) -> int:
    if job.trainer.nonfinite == "stop":
        raise UserError(
            f"step {first_bad}: the loss or gradient is not finite (NaN/inf). That step was not applied "
            f"to the weights; trainer.nonfinite=stop ends the run here (step {step}).",
            hint="lower optim.lr, set trainer.grad_clip, check the data; or trainer.nonfinite=skip to carry on",
        )
    metrics.print(f"step {step}: {skipped} step(s) so far had a non-finite loss or gradient (first: step "
                  f"{first_bad}) and were skipped (trainer.nonfinite=skip)")
    return skipped


CHECK_TOKENS = 512  # the model's own forward computes logits everywhere: keep them small


def check_sample(sample):
    """The first example of the first micro batch, cut to its last CHECK_TOKENS tokens (where a
    prompt/answer example keeps its answer), or whole when that would leave no answer."""
    from .samples import Sample

    if len(sample) <= CHECK_TOKENS:
        return sample
    tail = Sample(sample.input_ids[-CHECK_TOKENS:], sample.labels[-CHECK_TOKENS:], (CHECK_TOKENS,))
    return tail if tail.answer_tokens else Sample(sample.input_ids, sample.labels, (len(sample),))


def check_loss(built, batch: dict, job) -> None:
    """ft's loss against the model's own forward loss, on one example (`check_sample`).

    ft calls the decoder and the head itself (`trainer.loss`), so an architecture that does
    something to the head's output that ft does not know would train on a different loss,
    silently. Compared in eval mode (no dropout), summed over ranks; before the optimizer
    state exists, with the model's full-vocabulary logits for at most CHECK_TOKENS tokens.
    """
    model = built.module
    model.eval()
    with torch.no_grad():
        sums = torch.stack([model(**batch).double(), model(**batch, reference=True).double()])
    model.train()
    dist.all_reduce_sum(sums)
    ours, theirs = sums.tolist()
    tolerance = 1e-4 if built.compute_dtype == torch.float32 else 2e-2
    if not math.isclose(ours, theirs, rel_tol=tolerance, abs_tol=1e-6):
        config = built.module.causal_lm.config
        raise UserError(
            f"ft's loss ({ours:.6g}) differs from the model's own loss ({theirs:.6g}) on the first example: "
            f"ft does not reproduce how {type(built.module.causal_lm).__name__} ({config.model_type}) computes "
            "its output (e.g. a logit scaling or soft-capping it does not know), and would train on the wrong loss.",
            hint="report it with the model's config.json; trainer.check_loss=false skips this check at your own risk",
        )


def evaluate(setup: Setup, stop: "StopSignal | None" = None) -> tuple[float, int, dict[str, float]] | None:
    """The objective's loss over the validation set (or its first limit_val_batches), its answer-token
    count and its figures (preference tuning: TRL's `rewards/margins`, ...); None when a stop signal
    arrived meanwhile (a long pass must not outlast the site's grace)."""
    model, objective, env, device = setup.built.module, setup.objective, setup.env, setup.device
    names = list(dict.fromkeys([objectives.ANSWER_TOKENS, *objective.terms, *(name for _, name in objective.figures)]))
    model.eval()
    # The terms' and figures' sums, then the counts they are divided by, summed over every rank's batches.
    totals = torch.zeros(len(objective.terms) + len(objective.figures) + len(names), dtype=torch.float64, device=device)
    with torch.no_grad():
        for batch_samples, counted in val_batches(
            setup.dataset.val, setup.job.data.micro_batch_size, env.world_size, env.rank, setup.job.trainer.limit_val_batches
        ):
            if stop is not None and _any_rank_stopping(stop, env, device):
                model.train()
                return None
            terms, figures = objective.micro_batch(setup.collate(batch_samples))
            if counted:
                counts = objectives.counts(batch_samples, names)
                totals += torch.cat([terms.double(), figures.double() if figures is not None else terms.new_zeros(0, dtype=torch.float64),
                                     torch.tensor([float(counts[n]) for n in names], dtype=torch.float64, device=device)])
    model.train()
    dist.all_reduce_sum(totals)
    values = totals.tolist()
    terms, values = values[: len(objective.terms)], values[len(objective.terms):]
    sums, totals_by_name = values[: len(objective.figures)], dict(zip(names, values[len(objective.figures):]))
    loss = sum(term / max(totals_by_name[name], 1) for term, name in zip(terms, objective.terms))
    figures = {key: total / max(totals_by_name[name], 1) for total, (key, name) in zip(sums, objective.figures)}
    return loss, int(totals_by_name[objectives.ANSWER_TOKENS]), figures


def _any_rank_stopping(stop: "StopSignal", env, device: torch.device) -> bool:
    """Whether any rank was told to stop; all ranks must agree to leave a pass together. Alone
    it is a flag; with peers it is one small all-reduce per validation batch (a host sync, in a
    pass that is not the training step)."""
    if not env.distributed:
        return stop.requested
    flag = torch.full((), float(stop.requested), device=device)
    dist.all_reduce_sum(flag)
    return flag.item() > 0


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
    if job.trainer.liger and importlib.util.find_spec("liger_kernel") is None:
        problems.append("trainer.liger=true needs the liger-kernel package, which is not installed")
    if job.model.quantization and importlib.util.find_spec("torchao") is None:
        problems.append(contract.quantization_missing())
    # Inside a container a path exists only if a bind makes it visible.
    problems += job.missing_paths()
    if problems:
        raise UserError(*problems)


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
