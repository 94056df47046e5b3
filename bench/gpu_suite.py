"""The GPU suite: the environment's facts, correctness, then speed and memory, on one H100/H200,
in one command under 6 minutes (each part under its own time budget).

    python bench/gpu_suite.py                 # one GPU: facts, correctness on CUDA, then the speed table
    python bench/gpu_suite.py --dry           # CPU, tiny shapes: the same order, code paths and budgets
    python bench/gpu_suite.py --facts         # the facts alone (seconds): versions, kernels, SDPA backends
    python bench/gpu_suite.py --only correctness
    bash bench/device_run.sh                  # the one command on a lent GPU machine (carried wheels, table to $OUT)

0. Facts, printed first so that one failed call still says them: torch, CUDA, transformers,
   peft, pydantic, torch's `varlen_attn` signature, flash-attn, the SDPA backends enabled, and
   the padding-free kernel ft chooses for the suite's tiny model and both speed rows' models.
1. Correctness on CUDA, each line PASS / FAIL / SKIP with the figure it judged, the riskiest first:
   - padding-free attention against padded SDPA (loss within 1e-2 relative, gradients within
     5e-2) on the kernel ft chose, which must be the one that ran and a fused one (a variable-
     length kernel wherever flash-attn or torch's varlen_attn is here), with SDPA never given a
     mask together with grouped heads;
   - trainer.compile trains like eager, with no graph break in a decoder layer on a GPU (on a
     CPU only the per-example attention's, which is compiled out by design);
   - tiny LoRA (data parallel) and tiny full SFT (FSDP2 on one GPU) in bf16 against the same
     job in fp32 on the CPU: per-step losses within a relative 3e-2 (bf16 keeps 8 bits of mantissa);
   - no host sync in the steps between check points (`torch.cuda.set_sync_debug_mode`);
   - model.cpu_offload (FSDP2 shards in host memory) against resident shards, in fp32: the first
     loss (no update yet) within 1e-6, the rest within 1e-4 (CPU and CUDA AdamW round differently:
     about 1e-7 of a weight per step);
   - resume: preempted at step 2 and resumed equals the straight run (losses within 1e-5);
   - QLoRA (model.quantization=nf4) within 10 % of bf16 LoRA, when torchao loads;
   - Liger (trainer.liger) equal loss, when liger-kernel is installed.
   A check may SKIP only where MAY_SKIP says so; any other SKIP (a check left out because the
   correctness budget ran out included), any FAIL, or no PASS at all exits 1.
2. Speed and memory (bench/train_speed.py, random weights drawn once on the GPU and read by both
   sides, bf16, real tokens only, steps after the first): Llama-3.2-1B full SFT at sequence 2048
   and Llama-3.1-8B LoRA r=16 at sequence 4096, ft against transformers.Trainer + peft; tokens/s/GPU,
   MFU by 6·N·s + 12·L·d·s² at 989 TFLOP/s (H100 and H200 SXM dense bf16), and measured peak memory
   against `ft plan`'s estimate. Each row runs under its own budget and SKIPs with a message when
   it runs out (BUDGETS).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO)]

TINY = {"model_type": "llama", "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 384, "max_position_embeddings": 512}
RESULTS: list[tuple[str, str, str]] = []


# The checks that may SKIP, and where: a gate that passes when its checks skip proves nothing,
# so any other SKIP fails the suite (`verdict`).
MAY_SKIP = {
    "no host sync between check points": "cpu",  # CUDA's sync debug mode
    "Liger kernels give ft's loss": "any",  # liger-kernel is optional in the image
    "QLoRA (nf4) trains like bf16 LoRA": "any",  # only when torchao loads with this torch
    "speed: Llama-3.2-1B full SFT, seq 2048": "any",  # over its budget: said, and the call still fits
    "speed: Llama-3.1-8B LoRA r=16, seq 4096": "any",
}
# Seconds for each part of one device call (6 minutes in all, with the wheels and the facts): the
# correctness checks together, then each speed row. A CPU rehearsal (--dry) keeps the order and the
# mechanism with its own, wider figures: its machine is shared and slower.
# A row also stops where the whole suite's "total" would be passed (a check in flight is never cut,
# so correctness may overrun its own figure), so the summary always prints before device_run.sh's cut.
BUDGETS = {
    "cuda": {"correctness": 135, "speed: Llama-3.2-1B full SFT, seq 2048": 80,
             "speed: Llama-3.1-8B LoRA r=16, seq 4096": 110, "total": 335},
    "cpu": {"correctness": 600, "speed: Llama-3.2-1B full SFT, seq 2048": 300,
            "speed: Llama-3.1-8B LoRA r=16, seq 4096": 300, "total": 1500},
}


def report(name: str, status: str, detail: str) -> None:
    RESULTS.append((name, status, detail))
    print(f"{status:4s}  {name}: {detail}", flush=True)


def verdict(results: list[tuple[str, str, str]], device: str) -> tuple[str, int]:
    """The summary line and the exit status: 1 when a check failed, when a check skipped that
    may not skip here, or when nothing passed at all."""
    passed = [r for r in results if r[1] == "PASS"]
    failed = [r for r in results if r[1] == "FAIL"]
    skipped = [r for r in results if r[1] == "SKIP"]
    wrongly = [r for r in skipped if MAY_SKIP.get(r[0]) not in ("any", device)]
    line = (f"## summary: {len(passed)} passed, {len(skipped)} skipped, {len(failed)} failed"
            + (f"; not allowed to skip here: {', '.join(r[0] for r in wrongly)}" if wrongly else ""))
    return line, 1 if failed or wrongly or not passed else 0


_deadline: list[float] = []  # when the correctness budget runs out (perf_counter seconds)


def check(name: str):
    """Run a check; an exception is a FAIL with its message, never the end of the suite. Past the
    correctness budget the check is left out, said as a SKIP that fails the verdict."""
    def wrap(fn):
        def run(*args):
            if _deadline and time.perf_counter() > _deadline[0]:
                report(name, "SKIP", "left out: the correctness budget ran out")
                return
            started = time.perf_counter()
            try:
                fn(*args)
            except Exception as err:  # noqa: BLE001 - every failure is reported, then the next check runs
                report(name, "FAIL", f"{type(err).__name__}: {str(err)[:300]}")
            finally:
                print(f"      ({time.perf_counter() - started:.0f} s)", flush=True)
        return run
    return wrap


def job(device: str, dtype: str | None = None, **sections) -> dict:
    from fttools.tiny import tiny_job

    gpu = device == "cuda"
    base = dict(model={"config": TINY, "dtype": dtype or ("bf16" if gpu else "fp32")},
                trainer={"accelerator": "gpu" if gpu else "cpu", "max_steps": 4, "log_every_steps": 1},
                optim={"lr_scheduler": {"name": "constant", "warmup_steps": 0}})
    return tiny_job(base, **sections)


def train(raw: dict, folder: Path, on_step=None) -> tuple[int, dict[int, float]]:
    from fttools.tiny import train as run, train_losses

    code = run(folder, raw, on_step=on_step)
    return code, train_losses(folder)


def close(a: dict[int, float], b: dict[int, float], rel: float) -> float:
    """The largest relative difference of two loss curves; raises when it exceeds `rel`."""
    assert a.keys() == b.keys() and a, (a, b)
    worst = max(abs(a[k] - b[k]) / max(abs(b[k]), 1e-12) for k in a)
    assert worst <= rel, f"losses differ by up to {worst:.2e} (allowed {rel:.0e}): {a} vs {b}"
    return worst


# --- 0. facts -----------------------------------------------------------------------------------

HEAD_WIDTHS = {"the suite's tiny model": TINY["hidden_size"] // TINY["num_attention_heads"],
               "Llama-3.2-1B": 64, "Llama-3.1-8B": 128}


def facts(device: str) -> None:
    """What decides the kernels, before anything can fail: versions, varlen_attn, flash-attn, SDPA."""
    import importlib.metadata
    import inspect

    import torch

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    print(f"torch {torch.__version__} | CUDA {torch.version.cuda} | transformers {version('transformers')} | "
          f"peft {version('peft')} | pydantic {version('pydantic')} | typing_extensions "
          f"{version('typing_extensions')} | torchao {version('torchao')}", flush=True)
    try:
        from torch.nn.attention.varlen import varlen_attn

        print(f"varlen_attn{inspect.signature(varlen_attn)}", flush=True)
    except ImportError:
        print("varlen_attn: absent (torch.nn.attention.varlen: torch 2.10 and later)", flush=True)
    print(f"flash-attn: {version('flash-attn')}", flush=True)
    if device == "cuda":
        cuda = torch.backends.cuda
        enabled = {"flash": cuda.flash_sdp_enabled(), "memory-efficient": cuda.mem_efficient_sdp_enabled(),
                   "cudnn": cuda.cudnn_sdp_enabled(), "math": cuda.math_sdp_enabled()}
        print("SDPA backends enabled: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in enabled.items())
              + f" | flash compiled in: {cuda.is_flash_attention_available()}", flush=True)
    else:
        print("SDPA backends: CPU (flash-style CPU kernel; grouped heads run the math backend)", flush=True)
    from ftcore import dtypes
    from trainer import attention

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    for model, width in HEAD_WIDTHS.items():
        print(f"{model} ({device}, {dtypes.name_of(dtype)}, heads {width} wide): "
              f"{attention.choose(device, dtype, (width, width)).describe()}", flush=True)


# --- 1. correctness -----------------------------------------------------------------------------


def correctness(device: str, work: Path) -> None:
    import torch

    @check("padding-free attention vs padded SDPA")
    def _():
        import torch.nn.functional as F

        from fttools.tiny import model_examples, tiny_llama

        from trainer import attention
        from trainer.collate import collate
        from trainer.loss import CausalLMLoss

        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        width = TINY["hidden_size"] // TINY["num_attention_heads"]
        kernel = attention.choose(device, dtype, (width, width))
        examples = model_examples() * 8
        ran, sdpa_calls = [], []

        def loss_and_grads(attn, padding_free):
            model = tiny_llama(attn, num_key_value_heads=2).to(device, dtype)
            batch = collate(examples, 0, "sdpa", device=device, padding_free=padding_free)
            loss = CausalLMLoss(model)(**batch)
            loss.backward()
            return loss.detach().float(), [p.grad.float() for p in model.parameters()]

        padded, padded_grads = loss_and_grads("sdpa", False)
        one_call, per_example, sdpa = attention._one_call, attention._per_example, F.scaled_dot_product_attention

        def sdpa_seen(query, key, value, attn_mask=None, **kwargs):
            sdpa_calls.append((attn_mask is not None, query.shape[1] != key.shape[1]))
            return sdpa(query, key, value, attn_mask=attn_mask, **kwargs)

        attention._one_call = lambda *a: ran.append("one call") or one_call(*a)
        attention._per_example = lambda *a: ran.append("per example") or per_example(*a)
        F.scaled_dot_product_attention = sdpa_seen
        try:
            free, free_grads = loss_and_grads(attention.register(kernel), True)
        finally:
            attention._one_call, attention._per_example, F.scaled_dot_product_attention = one_call, per_example, sdpa
        expected = "one call" if kernel.one_call else "per example"
        assert ran and set(ran) == {expected}, f"{kernel.name} was chosen but {sorted(set(ran))} ran"
        assert kernel.fused or device == "cpu", f"no fused kernel: {kernel.describe()}"
        if device == "cuda":
            from ftcore import contract

            assert kernel.one_call or not (contract.torch_varlen_form() or attention._flash_attn_installed()), \
                f"a variable-length kernel is here but {kernel.name} was chosen"
        assert not [c for c in sdpa_calls if all(c)], "SDPA got a mask together with grouped heads"
        assert not (kernel.one_call and sdpa_calls), f"{kernel.name} was chosen but SDPA ran"
        torch.testing.assert_close(free, padded, rtol=1e-2, atol=1e-3)
        worst = max(float((a - b).abs().max()) for a, b in zip(free_grads, padded_grads))
        assert worst < 5e-2, f"gradients differ by up to {worst:.2e}"
        report("padding-free attention vs padded SDPA", "PASS",
               f"{kernel.name}{' (heads repeated)' if kernel.repeat_kv else ''} ran ({len(ran)} calls), loss "
               f"{float(free):.5f} vs {float(padded):.5f}, grads within {worst:.1e}")
    _()

    @check("compiled layers train like eager ones, no graph break in a layer")
    def _():
        import torch
        from torch._dynamo.utils import counters

        from trainer import attention

        _, eager = train(job(device, peft=None), work / "eager")
        torch._dynamo.reset()
        _, compiled = train(job(device, peft=None, trainer={"compile": True}), work / "compiled")
        breaks = dict(counters["graph_break"])  # the trainer cleared them when it compiled the layers
        graphs = counters["stats"]["unique_graphs"]
        worst = close(compiled, eager, 1e-4 if device == "cpu" else 3e-2)
        kernel = attention.registered()
        if kernel.one_call:
            assert not breaks, f"{kernel.name}: {sum(breaks.values())} graph break(s): {list(breaks)[:2]}"
        else:  # the per-example split runs eagerly by design (trainer/attention.py); nothing else may break
            others = [reason for reason in breaks if "_per_example" not in reason]
            assert not others, f"graph breaks besides the per-example attention: {others[:2]}"
        assert graphs >= 1, "nothing was compiled"
        report("compiled layers train like eager ones, no graph break in a layer", "PASS",
               f"losses within {worst:.1e}; {kernel.name}: {graphs} graph(s), {sum(breaks.values())} break(s)"
               + (" (the per-example attention's)" if breaks else ""))
    _()

    for method, sections in (("LoRA, data parallel", {}), ("full SFT, FSDP2 on one GPU", {"peft": None})):
        @check(f"{method}: bf16 on {device} vs fp32 on CPU")
        def _(method=method, sections=sections):
            tag = method.split(",")[0].replace(" ", "_")
            _, reference = train(job("cpu", **sections), work / f"{tag}-cpu")
            _, ours = train(job(device, **sections), work / f"{tag}-{device}")
            worst = close(ours, reference, 3e-2)
            report(f"{method}: bf16 on {device} vs fp32 on CPU", "PASS", f"4 losses within {worst:.1e} relative")
        _()

    @check("no host sync between check points")
    def _():
        if device != "cuda":
            report("no host sync between check points", "SKIP", "CUDA's sync debug mode (tests/trainer/test_step.py counts on CPU)")
            return
        caught = []

        def on_step(record):
            if record["step"] == 1:
                torch.cuda.set_sync_debug_mode("warn")
            elif record["step"] == 3:
                torch.cuda.set_sync_debug_mode("default")

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            code, _ = train(job(device, trainer={"log_every_steps": 4}), work / "syncs", on_step)
        syncs = [str(w.message)[:120] for w in caught if "synchroniz" in str(w.message)]
        assert code == 0 and not syncs, syncs[:3]
        report("no host sync between check points", "PASS", "steps 2–3: 0 synchronizing operations")
    _()

    @check("model.cpu_offload trains like resident shards")
    def _():
        from ftcore import policy

        # FSDP2 with its shards, gradients and optimizer step in host memory: the gradient norm
        # all-reduces CPU tensors (the process group's gloo half). The schema refuses offload on
        # a CPU job, so the decision is set here, as tests/trainer/test_offload.py does. In fp32,
        # so that the two sides differ only by where AdamW runs: CPU and CUDA AdamW round
        # differently (about 1e-7 of a weight per step), bf16 compute would amplify that to its
        # own 4e-3 resolution.
        raw = job(device, "fp32", peft=None)
        _, resident = train(raw, work / "resident")
        decide = policy.decide
        policy.decide = lambda j: dataclasses.replace(decide(j), cpu_offload=True)
        try:
            _, offloaded = train(raw, work / "offloaded")
        finally:
            policy.decide = decide
        first = close({1: offloaded[1]}, {1: resident[1]}, 1e-6)  # the same weights, no update yet
        worst = close(offloaded, resident, 1e-4)
        report("model.cpu_offload trains like resident shards", "PASS",
               f"fp32: first loss within {first:.1e}, 4 losses within {worst:.1e}")
    _()

    @check("resume after preemption equals the straight run")
    def _():
        raw = job(device, trainer={"max_steps": 5})
        _, straight = train(raw, work / "straight")

        def preempt(record):
            if record["step"] == 2:
                os.kill(os.getpid(), signal.SIGUSR1)

        code, _ = train(raw, work / "preempted", preempt)
        assert code == 75, f"preempted run exited {code}, expected 75"
        code, resumed = train(raw, work / "preempted")
        assert code == 0
        worst = close(resumed, straight, 1e-5)
        report("resume after preemption equals the straight run", "PASS", f"5 losses within {worst:.1e}")
    _()

    @check("QLoRA (nf4) trains like bf16 LoRA")
    def _():
        import importlib.util

        from transformers import AutoConfig, AutoModelForCausalLM
        from fttools.tiny import tiny_tokenizer

        if importlib.util.find_spec("torchao") is None:
            report("QLoRA (nf4) trains like bf16 LoRA", "SKIP", "needs torchao")
            return
        base = work / "qlora-base"  # the suite's tiny model, saved as a pretrained one
        torch.manual_seed(0)
        settings = {k: v for k, v in TINY.items() if k != "model_type"}
        AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **settings)).save_pretrained(base)
        tiny_tokenizer().save_pretrained(base)
        pretrained = {"init": "pretrained", "path": str(base)}
        _, bf16 = train(job(device, model=pretrained), work / "qlora-bf16")
        _, nf4 = train(job(device, model={**pretrained, "quantization": "nf4"}, trainer={"strategy": "ddp"}), work / "qlora")
        worst = close(nf4, bf16, 0.1)
        report("QLoRA (nf4) trains like bf16 LoRA", "PASS", f"losses within {worst:.1e} relative")
    _()

    @check("Liger kernels give ft's loss")
    def _():
        import importlib.util

        if device != "cuda" or importlib.util.find_spec("liger_kernel") is None:
            report("Liger kernels give ft's loss", "SKIP", "needs CUDA and liger-kernel")
            return
        _, plain = train(job(device, peft=None), work / "plain")
        _, liger = train(job(device, peft=None, trainer={"liger": True}), work / "liger")
        worst = close(liger, plain, 3e-2)
        report("Liger kernels give ft's loss", "PASS", f"losses within {worst:.1e} relative")
    _()


# --- 2. speed and memory --------------------------------------------------------------------------

SPEED = {
    # name: (train_speed.py arguments on a GPU, the same shapes' tiny stand-in for --dry). Steps:
    # throughput counts from the second step to the last, so 5 and 4 steps give 4 and 3 timed steps.
    "Llama-3.2-1B full SFT, seq 2048": (
        ["--model", "llama32_1b", "--methods", "sft", "--seq", "2048", "--steps", "5", "--global-batch", "16",
         "--micro-batch", "4", "--val-records", "8"],
        ["--quick", "--methods", "sft", "--threads", "1"]),
    "Llama-3.1-8B LoRA r=16, seq 4096": (
        ["--model", "llama31_8b", "--methods", "lora", "--lora-r", "16", "--seq", "4096", "--steps", "4",
         "--global-batch", "8", "--micro-batch", "2", "--val-records", "4"],
        ["--quick", "--methods", "lora", "--lora-r", "16", "--threads", "1"]),
}


def run_row(name: str, command: list[str], budget: float) -> None:
    """One speed row under its own budget: past it the row is stopped and SKIPs, saying so."""
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=REPO, text=True, timeout=budget)
    except subprocess.TimeoutExpired:
        report(name, "SKIP", f"stopped at its budget of {budget:.0f} s: no figure (the rest of the call still runs)")
        return
    report(name, "PASS" if done.returncode == 0 else "FAIL",
           f"exit {done.returncode} in {time.perf_counter() - started:.0f} s (budget {budget:.0f} s)")


def speed(device: str, dry: bool, ends: float) -> None:
    """The rows in order, each under its budget and within the suite's total (`ends`, perf_counter)."""
    for name, (gpu_args, dry_args) in SPEED.items():
        args = dry_args if dry else ["--device", "cuda", "--bf16", "--peak-tflops", "989", *gpu_args]
        budget = BUDGETS[device][f"speed: {name}"]
        print(f"\n### {name} (budget {budget} s)\n\n    python bench/train_speed.py {' '.join(args)}", flush=True)
        left = ends - time.perf_counter()
        if left < 10:
            report(f"speed: {name}", "SKIP", f"not run: {max(left, 0):.0f} s of the suite's total were left")
            continue
        run_row(f"speed: {name}", [sys.executable, str(REPO / "bench" / "train_speed.py"), *args], min(budget, left))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry", action="store_true", help="CPU and tiny shapes: check the suite itself runs")
    parser.add_argument("--only", choices=["correctness", "speed"], help="one half of the suite")
    parser.add_argument("--facts", action="store_true", help="print the environment's facts and stop")
    args = parser.parse_args()
    started = time.perf_counter()
    import torch

    device = "cpu" if args.dry or (args.facts and not torch.cuda.is_available()) else "cuda"
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (dry run: figures are not measurements)"
    print(f"# ft GPU suite | {name} | {time.strftime('%Y-%m-%d %H:%M')}\n\n## 0. facts\n", flush=True)
    facts(device)
    if args.facts:
        return
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run with --dry for the CPU rehearsal")
    for variable in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        os.environ.pop(variable, None)
    budgets = BUDGETS[device]
    if args.only != "speed":
        print(f"\n## 1. correctness (budget {budgets['correctness']} s)\n", flush=True)
        _deadline[:] = [time.perf_counter() + budgets["correctness"]]
        with tempfile.TemporaryDirectory(prefix="ft-gpu-suite-") as work:
            correctness(device, Path(work))
        _deadline.clear()
    if args.only != "correctness":
        print("\n## 2. speed and memory", flush=True)
        speed(device, args.dry, started + budgets["total"])
    line, code = verdict(RESULTS, device)
    print(f"\n{line}, {(time.perf_counter() - started) / 60:.1f} min")
    for result_name, status, detail in RESULTS:
        print(f"- {status} {result_name}: {detail}")
    sys.exit(code)


if __name__ == "__main__":
    main()
