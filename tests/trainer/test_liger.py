"""trainer.liger: Liger's kernels and fused linear cross-entropy give ft's loss and gradients.

Liger's kernels are Triton: they run on CUDA only, so on a CPU machine this test is skipped
(bench/gpu_suite.py runs it on a GPU when liger-kernel is installed)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("liger_kernel")
if not torch.cuda.is_available():
    pytest.skip("Liger's kernels need CUDA", allow_module_level=True)

from trainer_helpers import model_examples, tiny_llama

from trainer import attention
from trainer.collate import collate
from trainer.loss import CausalLMLoss, use_liger


def test_liger_gives_the_same_loss_and_gradients():
    batch = collate(model_examples() * 4, 0, "sdpa", device="cuda", padding_free=True)

    def loss_and_grads(liger: bool):
        model = tiny_llama(attention.register()).cuda().to(torch.bfloat16)
        fused = use_liger(model) if liger else None
        loss = CausalLMLoss(model, fused)(**batch)
        loss.backward()
        return loss.detach().float(), [p.grad.float() for p in model.parameters()]

    plain_loss, plain_grads = loss_and_grads(False)
    liger_loss, liger_grads = loss_and_grads(True)
    torch.testing.assert_close(liger_loss, plain_loss, rtol=2e-2, atol=1e-2)
    for a, b in zip(liger_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=5e-2, atol=5e-2)
