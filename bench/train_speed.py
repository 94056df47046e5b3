"""ft's trainer against `transformers.Trainer` + peft on the same model, data, order and settings.

    python bench/train_speed.py                    # CPU: ~23 M-parameter random Llama, LoRA and SFT
    python bench/train_speed.py --quick            # smoke run: tiny model, 3 steps (tests/launcher/test_bench.py)
    python bench/train_speed.py --methods lora --steps 20
    python bench/train_speed.py --device cuda --model llama32_1b --seq 2048 --bf16   # GPU (random weights)

Everything is generated here, offline: SQuAD-shaped records (long context + question, short
answer copied from the context, loss on the answer only) written as JSONL for ft's
`data.format=squad`; a word-level tokenizer over their vocabulary; a random Llama saved once
with a seed. Both sides load that folder. The baseline trains on trainer.samples' own token ids,
in the order ft's StepBatches deals them (plain consecutive micro batches), with the usual
padding collator (DataCollatorForSeq2Seq: pad to the longest in the micro batch, labels -100).

Each run is its own subprocess, so peak RSS (ru_maxrss, read at the last optimizer step) is
that run's alone. Throughput counts real tokens (no padding) from the second optimizer step
to the last, so start-up and the first step's warm-up count for neither side.

FLOPs (the GFLOP/s and MFU columns), per sequence of s real tokens, over the model's matmul
parameters (every nn.Linear including lm_head; embeddings are lookups, 0 FLOPs):

    full fine-tuning:  6 · N · s                      + 12 · L · d · s²
    LoRA:              4 · N_frozen · s + 6 · N_lora · s + 12 · L · d · s²

2·N forward, 2·N for input gradients, 2·N for weight gradients (frozen weights get none);
attention QKᵀ and AV are 4·d·s per token per layer forward, ×3 for forward+backward, counted
over the full s×s square (PaLM's convention; causal kernels do about half). The same model
FLOPs are credited to both sides, so the head on prompt positions and padding that one side
skips is not counted as useful work. MFU = GFLOP/s ÷ --peak-tflops (GPU only).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

MODELS = {
    # name: LlamaConfig keys (vocab_size is set from the tokenizer on CPU sizes)
    "quick": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4),
    # ~23 M parameters: 19 M in the decoder, 4 M in embeddings + head at a 4k vocabulary.
    "cpu": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=8),
    "llama32_1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0),
    "llama31_8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0),
}
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]
TEMPLATE_WORDS = ["Context", "Question", "Answer", ":", "?", ".", ","]


# --- inputs: data, tokenizer, model ---------------------------------------------------------


def make_words(n: int, rng: random.Random) -> list[str]:
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"]
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))))
    return sorted(words)


def make_records(n: int, words: list[str], min_len: int, max_len: int, rng: random.Random) -> list[dict]:
    """SQuAD records whose tokenized length spreads evenly over [min_len, max_len].

    Context words follow a Zipf-like law; the answer is a 1–4 word span of the context that
    starts right after a word the question names, so there is something to learn.
    """
    weights = [1.0 / (rank + 10) for rank in range(len(words))]
    records = []
    for i in range(n):
        total = rng.randint(min_len, max_len)
        q_len = rng.randint(6, 12)
        a_len = rng.randint(1, 4)
        c_len = max(a_len + 2, total - q_len - a_len - 10)  # bos, template words, "?", eos
        context = rng.choices(words, weights, k=c_len)
        start = rng.randint(1, c_len - a_len)
        answer = " ".join(context[start : start + a_len])
        question = " ".join(rng.choices(words, weights, k=q_len - 1) + [context[start - 1]]) + " ?"
        records.append({"id": str(i), "context": " ".join(context), "question": question,
                        "answers": {"text": [answer], "answer_start": [0]}})
    return records


def make_tokenizer(words: list[str], vocab_size: int):
    """Word-level: one token per generated word, so token lengths are what make_records aimed for."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIAL + TEMPLATE_WORDS + words)}
    assert len(vocab) <= vocab_size, (len(vocab), vocab_size)
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")


def prepare(args, work: Path) -> dict:
    """Write data, tokenizer and the random base model under `work`; return the run spec."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    rng = random.Random(args.seed)
    model_cfg = dict(MODELS[args.model])
    vocab = model_cfg.get("vocab_size", args.vocab)
    words = make_words(min(args.vocab, vocab) - len(SPECIAL) - len(TEMPLATE_WORDS), rng)
    n_train = args.steps * args.global_batch
    min_len = args.min_len or max(16, args.seq // 5)
    for name, n in (("train", n_train), ("val", args.val_records)):
        with open(work / f"{name}.jsonl", "w") as f:
            for r in make_records(n, words, min_len, args.seq, rng):
                f.write(json.dumps(r) + "\n")

    base = work / "base"
    tokenizer = make_tokenizer(words, vocab)
    model_cfg.setdefault("vocab_size", vocab)
    config = AutoConfig.for_model("llama", max_position_embeddings=max(2048, args.seq), **model_cfg,
                                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(args.seed)
    if args.device == "cuda":
        # Drawn once, on the GPU (seconds for 8B, where a CPU takes minutes), in the dtype both
        # sides load; both read these same files, from the page cache (or memory: `scratch`).
        torch.set_default_dtype(torch.bfloat16 if args.bf16 else torch.float32)
        with torch.device("cuda"):
            model = AutoModelForCausalLM.from_config(config)
        model.save_pretrained(base)
        del model
        torch.cuda.empty_cache()
    else:
        AutoModelForCausalLM.from_config(config).save_pretrained(base)
    torch.set_default_dtype(torch.float32)
    tokenizer.save_pretrained(base)
    return {
        "work": str(work), "base": str(base), "train": str(work / "train.jsonl"), "val": str(work / "val.jsonl"),
        "seq": args.seq, "steps": args.steps, "global_batch": args.global_batch, "micro_batch": args.micro_batch,
        "seed": args.seed, "threads": args.threads, "device": args.device, "bf16": args.bf16,
        "ft_overrides": args.ft or [], "lora_r": args.lora_r,
    }


def ft_job(spec: dict, method: str):
    """The ftcore.schema.Job ft runs (and whose data pipeline the baseline reuses)."""
    from ftcore.schema import validate

    gpu = spec["device"] == "cuda"
    raw = {
        "name": f"bench-{method}",
        "model": {"path": spec["base"], "dtype": "bf16" if spec["bf16"] else "fp32"},
        # r on every projection (8 unless --lora-r); alpha 2r (peft's scale 2)
        "peft": {"dim": spec["lora_r"], "alpha": 2 * spec["lora_r"], "target_modules": ["*_proj"]} if method == "lora" else None,
        "data": {"path": spec["train"], "val_path": spec["val"], "format": "squad",
                 "max_seq_length": spec["seq"], "global_batch_size": spec["global_batch"],
                 "micro_batch_size": spec["micro_batch"], "shuffle": True},
        "trainer": {"accelerator": "gpu" if gpu else "cpu", "max_steps": spec["steps"], "seed": spec["seed"],
                    "grad_clip": 1.0, "log_every_steps": 1},
        "optim": {"lr": LR[method], "weight_decay": 0.0, "lr_scheduler": {"name": "constant", "warmup_steps": 0}},
        "checkpoint": {"keep_last": 1},
        "container": {"runtime": "none"},
    }
    for override in spec["ft_overrides"]:  # "section.key=value" (YAML value), e.g. data.packing=true
        import yaml

        dotted, value = override.split("=", 1)
        *path, last = dotted.split(".")
        node = raw
        for key in path:
            node = node.setdefault(key, {})
        node[last] = yaml.safe_load(value)
    return validate(raw)


LR = {"lora": 1e-3, "sft": 3e-4}


# --- the two runners (each in its own process) ----------------------------------------------


def _peak_memory_gib(device: str) -> float:
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _step_order(spec: dict, method: str):
    """(job, tokenizer, dataset, samples of each optimizer step in ft's order)."""
    from trainer import data
    from trainer.batching import StepBatches
    from trainer.tokenizer import load_tokenizer

    job = ft_job(spec, method)
    tokenizer = load_tokenizer(job)
    dataset = data.load(job.data, tokenizer, job.trainer.seed)
    batches = StepBatches(dataset.train, job.data.global_batch_size, job.data.micro_batch_size, 1, 0,
                               job.trainer.seed, job.data.shuffle)
    steps = [batches.global_batch_samples(s) for s in range(spec["steps"])]
    return job, tokenizer, dataset, steps


def run_ft(spec: dict, method: str) -> dict:
    from ftcore import layout
    from trainer.train import run

    job, _, dataset, steps = _step_order(spec, method)
    job_dir = Path(spec["work"]) / f"ft-{method}"
    shutil.rmtree(job_dir, ignore_errors=True)
    times, losses, peak = [], [], []

    def on_step(record: dict) -> None:
        times.append(time.perf_counter())
        losses.append(record["loss"])
        if record["step"] == spec["steps"]:
            peak.append(_peak_memory_gib(spec["device"]))

    assert run(job, job_dir, on_step=on_step) == 0
    from launcher import plan

    plan_gib = plan.estimate(job).total / 2**30  # `ft plan`'s figure for this very job
    val = [json.loads(line) for line in (job_dir / layout.METRICS).read_text().splitlines()]
    val_loss = [r["val_loss"] for r in val if "val_loss" in r][-1]
    # Real tokens per step: packing changes rows, not tokens, so count from the examples.
    tokens = _tokens_per_step(spec, dataset.train, job)
    return {"times": times, "losses": losses, "tokens": tokens, "peak_gib": peak[0], "val_loss": val_loss,
            "params": _param_counts(spec, method), "lengths": [[len(s) for s in step] for step in steps],
            "plan_gib": plan_gib}


def _tokens_per_step(spec, rows, job) -> list[int]:
    from trainer.batching import StepBatches

    batches = StepBatches(rows, job.data.global_batch_size, job.data.micro_batch_size, 1, 0, job.trainer.seed, job.data.shuffle)
    return [sum(len(s) for s in batches.global_batch_samples(step)) for step in range(spec["steps"])]


def run_baseline(spec: dict, method: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    job, tokenizer, dataset, steps = _step_order(spec, method)
    rows = [{"input_ids": s.input_ids.tolist(), "labels": s.labels.tolist(), "attention_mask": [1] * len(s)}
            for step in steps for s in step]
    gpu = spec["device"] == "cuda"
    dtype = torch.bfloat16 if (gpu and spec["bf16"] and method == "lora") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(spec["base"], dtype=dtype, attn_implementation="sdpa")
    model.config.use_cache = False
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(spec["seed"])
        r = spec["lora_r"]
        model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=_lora_targets(model),
                                                 bias="none", task_type="CAUSAL_LM"))

    times, losses, peak = [], [], []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter())
            if len(times) == spec["steps"]:
                peak.append(_peak_memory_gib(spec["device"]))

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    args = TrainingArguments(
        output_dir=str(Path(spec["work"]) / f"hf-{method}"),
        per_device_train_batch_size=spec["micro_batch"],
        gradient_accumulation_steps=spec["global_batch"] // spec["micro_batch"],
        max_steps=spec["steps"],
        learning_rate=LR[method],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        seed=spec["seed"],
        train_sampling_strategy="sequential",  # rows are already in ft's order
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=not gpu,
        bf16=gpu and spec["bf16"],
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )
    collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collator, callbacks=[Clock()])
    trainer.train()
    return {"times": times, "losses": losses, "tokens": [sum(len(s) for s in step) for step in steps],
            "peak_gib": peak[0], "val_loss": _held_out_loss(model, dataset.val, spec), "params": _param_counts(spec, method),
            "lengths": [[len(s) for s in step] for step in steps]}


def _lora_targets(model) -> list[str]:
    return sorted({name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name.endswith("_proj")})


def _held_out_loss(model, samples, spec) -> float:
    """Mean cross-entropy per answer token over the held-out set: ft's definition (trainer.train.evaluate)."""
    import torch

    device = next(model.parameters()).device
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for s in samples:
            ids = s.input_ids.long()[None].to(device)
            labels = s.labels.long()[None].to(device)
            n = s.answer_tokens
            total += float(model(input_ids=ids, labels=labels).loss.double()) * n
            count += n
    return total / max(count, 1)


def _param_counts(spec, method) -> dict:
    """Matmul parameters (frozen, trained) and the shape numbers the FLOP formula needs."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(spec["base"])
    d, f, L, v = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size
    kv = d // c.num_attention_heads * c.num_key_value_heads
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * f  # q, o; k, v; gate, up, down
    n = L * per_layer + d * v  # + lm_head (a matmul even when tied)
    lora = 0
    if method == "lora":
        r = spec["lora_r"]
        lora = L * r * ((d + d) * 2 + (d + kv) * 2 + 3 * (d + f))  # A: in×r, B: r×out per projection
    return {"n_matmul": n, "n_lora": lora, "layers": L, "hidden": d}


def flops_per_sequence(p: dict, method: str, s: int, convention: str = "ft") -> float:
    """Model FLOPs of one sequence of `s` tokens. LoRA by ft's count (frozen weights get no
    weight gradient), or by NeMo AutoModel's: the full fine-tuning count × (2 + lora/frozen)/3."""
    attention = 12 * p["layers"] * p["hidden"] * s * s
    full = 6 * p["n_matmul"] * s + attention
    if method != "lora":
        return full
    if convention == "automodel":
        return full * (2 + p["n_lora"] / p["n_matmul"]) / 3
    return 4 * p["n_matmul"] * s + 6 * p["n_lora"] * s + attention


# --- orchestration ---------------------------------------------------------------------------


def child(spec_path: str, runner: str, method: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    import torch

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    result = (run_ft if runner == "ft" else run_baseline)(spec, method)
    Path(spec["work"], f"result-{runner}-{method}.json").write_text(json.dumps(result))


def summarise(result: dict, method: str) -> dict:
    t, tokens, seq_lengths = result["times"], result["tokens"], result["lengths"]
    timed = range(1, len(t)) if len(t) > 1 else range(len(t))
    seconds = t[-1] - t[0] if len(t) > 1 else float("nan")
    real = sum(tokens[i] for i in timed)
    flops = sum(flops_per_sequence(result["params"], method, s) for i in timed for s in seq_lengths[i])
    automodel = sum(flops_per_sequence(result["params"], method, s, "automodel") for i in timed for s in seq_lengths[i])
    last = result["losses"][-min(5, len(result["losses"])):]
    return {"tps": real / seconds, "peak_gib": result["peak_gib"], "train_loss": sum(last) / len(last),
            "val_loss": result["val_loss"], "gflops": flops / seconds / 1e9 if flops else float("nan"),
            "gflops_automodel": automodel / seconds / 1e9 if automodel else float("nan"),
            "plan_gib": result.get("plan_gib")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, 3 steps: a smoke test, not a measurement")
    parser.add_argument("--methods", default="lora,sft")
    parser.add_argument("--model", choices=sorted(MODELS), default=None)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 weights/compute (GPU)")
    parser.add_argument("--seq", type=int, default=None, help="longest example in tokens (lengths spread from seq/5)")
    parser.add_argument("--min-len", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--global-batch", type=int, default=None)
    parser.add_argument("--micro-batch", type=int, default=None)
    parser.add_argument("--val-records", type=int, default=None)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--lora-r", type=int, default=8, help="LoRA rank (alpha = 2r) on every projection")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads, the same for both")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="for MFU on GPU (H100/H200 dense bf16: 989)")
    parser.add_argument("--ft", action="append", help="extra ft job override, e.g. --ft data.packing=true")
    parser.add_argument("--runners", default="baseline,ft")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--child", nargs=3, metavar=("SPEC", "RUNNER", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)

    q = args.quick
    args.model = args.model or ("quick" if q else "cpu")
    args.seq = args.seq or (96 if q else 510)
    args.min_len = args.min_len or (24 if q else 100)
    args.steps = args.steps or (3 if q else 5)
    args.global_batch = args.global_batch or (8 if q else 32)
    args.micro_batch = args.micro_batch or (4 if q else 8)
    args.val_records = args.val_records or (8 if q else 64)
    if q:
        args.vocab = min(args.vocab, 512)

    work = Path(tempfile.mkdtemp(prefix="ft-train-speed-", dir=scratch(args)))
    try:
        spec = prepare(args, work)
        (work / "spec.json").write_text(json.dumps(spec))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                   OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
            env.pop(name, None)
        print(f"model {args.model} | {args.device} | {args.threads} threads | {args.steps} steps × global batch "
              f"{args.global_batch} (micro {args.micro_batch}) | lengths {args.min_len}–{args.seq} tokens | seed {args.seed}"
              + (f" | ft overrides {' '.join(args.ft)}" if args.ft else ""), flush=True)
        rows = []
        for method in args.methods.split(","):
            results = {}
            for runner in args.runners.split(","):
                cmd = [sys.executable, __file__, "--child", str(work / "spec.json"), runner, method]
                done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
                if done.returncode != 0:
                    sys.stderr.write(done.stdout[-4000:] + done.stderr[-6000:])
                    raise SystemExit(f"{runner} {method} failed (exit {done.returncode})")
                raw = json.loads((work / f"result-{runner}-{method}.json").read_text())
                results[runner] = summarise(raw, method)
                print(f"  {method:4s} {runner:8s} done: {results[runner]['tps']:.0f} tokens/s", flush=True)
            rows.append((method, results))
        print_table(rows, args)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work folder kept: {work}")


def scratch(args) -> str | None:
    """Where the work folder goes: memory (/dev/shm) on a GPU machine with room for the weights
    twice over (an 8B model is 16 GB in bf16), else the usual temporary folder."""
    shm = Path("/dev/shm")
    if args.device != "cuda" or not shm.is_dir():
        return None
    config = MODELS[args.model]
    layers, hidden = config["num_hidden_layers"], config["hidden_size"]
    params = layers * (4 * hidden * hidden + 3 * hidden * config["intermediate_size"]) + 2 * hidden * config.get(
        "vocab_size", args.vocab)
    return str(shm) if shutil.disk_usage(shm).free > 2 * 4 * params else None


def print_table(rows, args) -> None:
    """Model FLOPs: 6·N·s + 12·L·d·s² (full); LoRA by ft's count 4·N·s + 6·N_lora·s + 12·L·d·s²,
    and by NeMo AutoModel's, the full count × (2 + N_lora/N)/3 (see the module docstring)."""
    gpu = args.device == "cuda"
    mem = "peak GiB (CUDA)" if gpu else "peak RSS GiB"
    print()
    print(f"| method | runner | real tokens/s | {mem} | ft plan GiB | train loss (last 5) | held-out loss | model GFLOP/s |"
          + (" MFU (ft count) | MFU (AutoModel count) |" if gpu else ""))
    print("|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if gpu else ""))
    for method, results in rows:
        for runner, r in results.items():
            peak = args.peak_tflops * 1e3
            mfu = (f" {r['gflops'] / peak:.1%} | "
                   + (f"{r['gflops_automodel'] / peak:.1%} |" if method == "lora" else "same |")) if gpu else ""
            planned = f"{r['plan_gib']:.2f}" if r.get("plan_gib") is not None else "–"
            print(f"| {method} | {runner} | {r['tps']:.0f} | {r['peak_gib']:.2f} | {planned} | {r['train_loss']:.4f} | "
                  f"{r['val_loss']:.4f} | {r['gflops']:.1f} |{mfu}")
    print()
    print("| method | tokens/s ft ÷ baseline | peak memory ft ÷ baseline | held-out loss ft − baseline | "
          "ft plan ÷ ft peak |")
    print("|---|---:|---:|---:|---:|")
    for method, results in rows:
        if {"ft", "baseline"} <= results.keys():
            ft, hf = results["ft"], results["baseline"]
            print(f"| {method} | {ft['tps'] / hf['tps']:.2f}× | {ft['peak_gib'] / hf['peak_gib']:.2f}× | "
                  f"{ft['val_loss'] - hf['val_loss']:+.4f} | {ft['plan_gib'] / ft['peak_gib']:.2f}× |")


if __name__ == "__main__":
    main()
