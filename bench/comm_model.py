"""Communication per optimizer step for ft's two parallel layouts, at 8–64 GPUs: a model, not a measurement.

    python bench/comm_model.py [--tokens-per-micro 16384] [--intra 360] [--inter 40] [--tflops 400]

ft runs LoRA as plain data parallelism when the model fits one GPU (one all-reduce of the
adapter gradients per step, trainer/dist.py) and everything else with FSDP2 over all ranks
(one flat mesh, trainer/sharding.py::shard): per micro batch each decoder layer's weights are
all-gathered for forward and again for backward (reshard after forward). The gradient
residency is ftcore.policy's: full SFT reduce-scatters its fp32 gradients after every micro
batch, LoRA once per step; an NF4 base (the 405B factory) is gathered in its 4-bit form.

Times use NCCL's bus bandwidth convention (nccl-tests): an all-gather or reduce-scatter of S
bytes takes S·(n−1)/n ÷ busbw, an all-reduce twice that. A ring spanning nodes runs at the
inter-node bandwidth per GPU (8 × 400 Gb/s NICs per 8-GPU node ≈ 50 GB/s per GPU, about 40
achieved); within one node at NVLink's (≈ 360 GB/s achieved on H100 SXM). Compute per micro
batch: 6·N (full) or 4·N_frozen + 6·N_lora (LoRA) FLOPs per token at --tflops achieved.
Attention FLOPs and overlap are left out: FSDP2 prefetches the next layer's all-gather
during compute, so a ratio below 1 means communication can hide behind compute; above 1
means the step waits on the network.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ftcore import policy  # noqa: E402
from launcher import config, plan  # noqa: E402  (torch-free: the shapes `ft plan` uses)

GB = 1e9

# (factory, layout): the recipes ft ships, counted with `ft plan`'s parameter arithmetic.
CASES = [("llama31_8b", "lora-dp"), ("llama3_8b_sft", "sft-fsdp2"), ("llama31_405b_lora", "lora-fsdp2")]


def sizes(factory: str) -> tuple[int, int, float]:
    """(parameters, LoRA parameters, bytes per frozen parameter as stored) of a factory."""
    job = config.resolve(factory, []).job
    dims = plan.model_dims(job)
    d = policy.decide(job)
    stored = sum(policy.nf4_bytes(t.numel, 2) if t.kind == "linear" and d.lora and d.stores_nf4(t.rows, t.cols)
                 else 2 * t.numel for t in dims.tensors())
    return dims.params, plan.lora_params(job, dims), stored / dims.params


def per_step(params: int, lora: int, method: str, gpus: int, micro_batches: int, args, base_bytes: float = 2) -> dict:
    bw = (args.intra if gpus <= 8 else args.inter) * GB
    share = (gpus - 1) / gpus
    if method == "lora-dp":  # whole model on every GPU, adapters all-reduced once per step in fp32
        moved = 2 * 4 * lora * share
        flops = (4 * (params - lora) + 6 * lora) * args.tokens_per_micro
    elif method == "lora-fsdp2":  # frozen base sharded (as stored: NF4 or bf16), gathered twice per micro batch
        moved = micro_batches * 2 * base_bytes * params * share + 4 * lora * share
        flops = (4 * (params - lora) + 6 * lora) * args.tokens_per_micro
    else:  # sft-fsdp2: bf16 gathers twice and an fp32 reduce-scatter per micro batch
        moved = micro_batches * (2 * 2 * params + 4 * params) * share
        flops = 6 * params * args.tokens_per_micro
    # Weights and training state resident per GPU (activations and gathered layers on top).
    state = {"lora-dp": 2 * params + 16 * lora, "lora-fsdp2": (base_bytes * params + 16 * lora) / gpus,
             "sft-fsdp2": 16 * params / gpus}[method]  # fp32 master + grad + 2 Adam moments = 16 B
    comm_s = moved / bw
    compute_s = micro_batches * flops / (args.tflops * 1e12)
    return {"state_gb": state / GB, "moved_gb": moved / GB, "comm_s": comm_s, "compute_s": compute_s,
            "ratio": comm_s / compute_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens-per-micro", type=int, default=16384, help="tokens per GPU per micro batch")
    parser.add_argument("--micro-batches", type=int, default=4, help="micro batches per GPU per step")
    parser.add_argument("--intra", type=float, default=360, help="GB/s bus bandwidth within a node")
    parser.add_argument("--inter", type=float, default=40, help="GB/s bus bandwidth per GPU across nodes")
    parser.add_argument("--tflops", type=float, default=400, help="achieved bf16 TFLOP/s per GPU")
    args = parser.parse_args()
    print(f"{args.micro_batches} micro batches × {args.tokens_per_micro} tokens per GPU per step; "
          f"busbw {args.intra:g} GB/s in a node, {args.inter:g} GB/s across; {args.tflops:g} TFLOP/s achieved\n")
    print("| model | layout | GPUs | state GB/GPU | GB moved per GPU per step | comm ms | compute ms | comm ÷ compute |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for factory, method in CASES:
        params, lora, base_bytes = sizes(factory)
        for gpus in (8, 16, 32, 64):
            r = per_step(params, lora, method, gpus, args.micro_batches, args, base_bytes)
            print(f"| {factory} | {method} | {gpus} | {r['state_gb']:.0f} | {r['moved_gb']:.2f} | {r['comm_s'] * 1e3:.1f} "
                  f"| {r['compute_s'] * 1e3:.0f} | {r['ratio']:.3f} |")

if __name__ == "__main__":
    main()
