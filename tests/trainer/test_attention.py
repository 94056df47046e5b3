"""trainer.attention: padding-free attention gives the padded loss and gradients, stays out of
checkpoints, and runs the kernel chosen once per build; on a CPU the GPU kernels are forced with
monkeypatched probes and torch's varlen_attn played by tests/varlen_standin.py."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
import torch
import torch.nn.functional as F
import varlen_standin
from trainer_helpers import TINY_LLAMA, model_examples, tiny_job, tiny_llama, validate

from trainer.batching import pack
from trainer.collate import collate
from trainer.loss import CausalLMLoss
from trainer.samples import Sample


@pytest.mark.parametrize("kv_heads", [4, 2])  # 2: grouped-query attention
def test_padding_free_row_gives_the_padded_loss_and_gradients(kv_heads):
    from trainer import attention

    examples = model_examples()
    examples.append(pack(model_examples()[:2], max_len=64)[0])  # a packed row inside a micro batch
    whole = torch.randint(3, 384, (6,), dtype=torch.int32)
    examples.append(Sample(whole, whole.clone(), (6,)))  # loss on every token, the first included

    def loss_and_grads(attn, padding_free):
        model = tiny_llama(attn, num_key_value_heads=kv_heads)
        loss = CausalLMLoss(model)(**collate(examples, 0, "sdpa", padding_free=padding_free))
        loss.backward()
        return loss.detach(), [p.grad for p in model.parameters()]

    padded_loss, padded_grads = loss_and_grads("sdpa", padding_free=False)
    free_loss, free_grads = loss_and_grads(attention.register(), padding_free=True)
    torch.testing.assert_close(free_loss, padded_loss, atol=1e-5, rtol=1e-5)
    for free, padded in zip(free_grads, padded_grads, strict=True):
        torch.testing.assert_close(free, padded, atol=1e-5, rtol=1e-4)


def test_padding_free_attention_is_not_written_to_checkpoints(tmp_path):
    from trainer import attention

    tiny_llama(attention.register()).save_pretrained(tmp_path)
    assert attention.NAME not in (tmp_path / "config.json").read_text()


def test_grouped_query_attention_copies_no_key_value_heads(monkeypatch):
    """enable_gqa: each key/value head serves its query heads where it is, no repeat_interleave."""
    from trainer import attention

    def refuse(*args, **kwargs):
        raise AssertionError("key/value heads were copied")

    monkeypatch.setattr(torch, "repeat_interleave", refuse)
    monkeypatch.setattr(torch.Tensor, "repeat_interleave", refuse)
    monkeypatch.setattr(torch.Tensor, "expand", refuse)  # transformers' repeat_kv expands, then reshapes
    model = tiny_llama(attention.register(), num_key_value_heads=2)
    CausalLMLoss(model)(**collate(model_examples(), 0, "sdpa", padding_free=True)).backward()


def test_no_python_list_reaches_the_layers_of_a_padding_free_row(monkeypatch):
    """Only tensors and the longest length (one int) go down to every attention call."""
    from trainer import attention

    seen = []
    original = attention.varlen_sdpa

    def recording(module, query, key, value, attention_mask, **kwargs):
        seen.append({k: type(v) for k, v in kwargs.items()})
        return original(module, query, key, value, attention_mask, **kwargs)

    monkeypatch.setattr(attention, "varlen_sdpa", recording)
    try:
        model = tiny_llama(attention.register())
        CausalLMLoss(model)(**collate(model_examples(), 0, "sdpa", padding_free=True))
    finally:
        monkeypatch.undo()
        attention.register()  # transformers' registry holds the original again
    assert len(seen) == 2  # one per layer
    assert not [k for call in seen for k, t in call.items() if t in (list, tuple)], seen
    assert seen[0][attention.CU_SEQ_LENS] is torch.Tensor and seen[0][attention.MAX_LENGTH] is int


# --- the kernel: chosen once per build, from what the environment has ------------------------------


@pytest.fixture
def probes(monkeypatch):
    """The environment `attention.choose` probes, as settings, each probe counted."""
    from ftcore import contract
    from trainer import attention

    have = {"flash_attn": False, "varlen": "heads", "sdpa": "gqa"}
    calls = {"flash_attn": 0, "varlen": 0, "sdpa": 0}

    def flash_attn():
        calls["flash_attn"] += 1
        return have["flash_attn"]

    def form():
        calls["varlen"] += 1
        return have["varlen"]

    def sdpa(dtype, width):
        calls["sdpa"] += 1
        return have["sdpa"]

    monkeypatch.setattr(attention, "_flash_attn_installed", flash_attn)
    monkeypatch.setattr(contract, "torch_varlen_form", form)
    monkeypatch.setattr(attention, "_probe_sdpa", sdpa)
    attention.choose.cache_clear()
    yield have, calls
    attention.choose.cache_clear()
    attention.register()  # transformers' registry holds the CPU kernel again


def test_a_bf16_gpu_row_runs_a_fused_kernel_on_every_torch_ft_allows(probes):
    """torch 2.11 (varlen_attn without enable_gqa), 2.12+ (with it), 2.8 (no varlen_attn), with and
    without flash-attn: a fused kernel, never SDPA's math; math only when no fused SDPA can run."""
    from trainer import attention

    have, _ = probes

    def chosen(**setting):
        have.update(setting)
        attention.choose.cache_clear()
        return attention.choose("cuda", torch.bfloat16, (128, 128))

    assert (chosen(flash_attn=False, varlen="heads").name, chosen().repeat_kv) == ("torch_varlen", True)  # 2.11
    assert (chosen(varlen="gqa").name, chosen().repeat_kv) == ("torch_varlen", False)  # 2.12 and later
    assert (chosen(varlen=None).name, chosen().repeat_kv) == ("sdpa_per_example", False)  # 2.8: SDPA flash, GQA
    assert chosen(flash_attn=True, varlen=None).name == "flash_attn"
    assert chosen(flash_attn=True, varlen="heads").name == "flash_attn"
    for kernel in (chosen(flash_attn=False, varlen=v) for v in ("heads", "gqa", None)):
        assert kernel.fused and "math" not in kernel.describe()
    # fp32 on a GPU: no variable-length kernel takes it; SDPA's memory-efficient backend, heads repeated
    have.update(flash_attn=True, varlen="gqa", sdpa="repeated")
    attention.choose.cache_clear()
    fp32 = attention.choose("cuda", torch.float32)
    assert (fp32.name, fp32.repeat_kv, fp32.fused) == ("sdpa_per_example", True, True)
    # nothing fused runs (a head too wide, backends disabled): math, said in the log line
    math = chosen(flash_attn=False, varlen=None, sdpa=None)
    assert not math.fused and "math backend" in math.describe() and "ft plan" in math.describe()
    assert attention.choose("cpu", torch.bfloat16).name == "sdpa_per_example"


def test_the_kernel_is_chosen_once_per_build_and_bound_as_a_constant(probes, monkeypatch):
    from trainer import attention
    from trainer import model as ft_model

    _, calls = probes
    monkeypatch.setattr(attention, "_torch_varlen_attn", varlen_standin.varlen_attn_2_11)
    monkeypatch.setattr(attention, "_require_16bit_cuda", lambda kernel, query: None)  # a CPU plays the GPU
    job = validate(tiny_job())
    config = ft_model.model_config(job)
    path, kernel = ft_model.attention_path(job, config, "cuda", torch.bfloat16)
    assert (path.name, kernel.name, attention.registered()) == (attention.NAME, "torch_varlen", kernel)
    model = tiny_llama(path.name, num_key_value_heads=2)
    for _ in range(3):
        CausalLMLoss(model)(**collate(model_examples(), 0, "sdpa", padding_free=True))
    ft_model.attention_path(job, config, "cuda", torch.bfloat16)  # a second build in this process
    assert calls == {"flash_attn": 1, "varlen": 1, "sdpa": 1}, calls
    assert len(varlen_standin.CALLS) >= 6


def test_a_compiled_layer_on_the_one_call_kernel_has_no_graph_break(probes, monkeypatch):
    from torch._dynamo.utils import counters

    from trainer import attention

    monkeypatch.setattr(attention, "_torch_varlen_attn", varlen_standin.varlen_attn_2_11)
    monkeypatch.setattr(attention, "_require_16bit_cuda", lambda kernel, query: None)
    kernel = attention.choose("cuda", torch.bfloat16)
    model = tiny_llama(attention.register(kernel), num_key_value_heads=2)
    torch._dynamo.reset()
    counters.clear()
    for layer in model.model.layers:
        layer.compile(backend="eager")  # dynamo's tracing, where graphs break; no code generation
    batch = collate(model_examples(), 0, "sdpa", padding_free=True)
    with torch.no_grad():
        compiled = CausalLMLoss(model)(**batch)
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] >= 2
    torch._dynamo.reset()
    model = tiny_llama("sdpa", num_key_value_heads=2)
    with torch.no_grad():
        padded = CausalLMLoss(model)(**collate(model_examples(), 0, "sdpa", padding_free=False))
    torch.testing.assert_close(compiled, padded, atol=1e-4, rtol=1e-4)


def tiny_mistral(attn: str, window: int | None):
    """The tiny model as Mistral (grouped heads, an optional sliding window): a family besides Llama."""
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = {k: v for k, v in TINY_LLAMA.items() if k != "model_type"}
    torch.manual_seed(0)
    config = AutoConfig.for_model("mistral", **{**settings, "num_key_value_heads": 2, "sliding_window": window})
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()


def _record_sdpa(monkeypatch) -> list[dict]:
    seen = []
    original = F.scaled_dot_product_attention

    def recording(query, key, value, attn_mask=None, **kwargs):
        seen.append({"mask": None if attn_mask is None else tuple(attn_mask.shape), "gqa": kwargs.get("enable_gqa"),
                     "heads": (query.shape[1], key.shape[1]), "tokens": query.shape[2]})
        return original(query, key, value, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    return seen


@pytest.mark.parametrize("varlen", ["heads", "gqa", None])
@pytest.mark.parametrize("window", [None, 3])
def test_a_gpu_row_never_sends_sdpa_a_mask_with_grouped_heads_nor_a_row_wide_mask(probes, monkeypatch, varlen,
                                                                                  window):
    """The kernel a bf16 GPU row runs (forced here, on a CPU) gives the padded loss; SDPA never
    gets a mask together with enable_gqa, nor any mask wider than one example."""
    from trainer import attention

    have, _ = probes
    have["varlen"] = varlen
    monkeypatch.setattr(attention, "_torch_varlen_attn",
                        varlen_standin.varlen_attn_2_12 if varlen == "gqa" else varlen_standin.varlen_attn_2_11)
    monkeypatch.setattr(attention, "_require_16bit_cuda", lambda kernel, query: None)
    kernel = attention.choose("cuda", torch.bfloat16)
    examples = model_examples()
    seen = _record_sdpa(monkeypatch)
    calls_before = len(varlen_standin.CALLS)
    model = tiny_mistral(attention.register(kernel), window)
    with torch.no_grad():
        free = CausalLMLoss(model)(**collate(examples, 0, "sdpa", padding_free=True))
    monkeypatch.undo()
    padded_model = tiny_mistral("sdpa", window)
    with torch.no_grad():
        padded = CausalLMLoss(padded_model)(**collate(examples, 0, "sdpa", padding_free=False))
    torch.testing.assert_close(free, padded, atol=1e-5, rtol=1e-5)
    longest = max(len(s) for s in examples)
    if kernel.one_call:
        assert not seen and len(varlen_standin.CALLS) - calls_before == 2  # one call per layer, no SDPA
        assert {c["heads"] for c in varlen_standin.CALLS[calls_before:]} == {(4, 4 if kernel.repeat_kv else 2)}
    else:
        assert seen and all(not (call["mask"] and call["gqa"]) for call in seen), seen
        assert all(call["mask"] is None or call["mask"][-1] <= longest for call in seen), seen
        assert any(call["mask"] for call in seen) == bool(window)


def test_a_one_call_kernel_refuses_queries_it_was_not_chosen_for():
    from trainer import attention

    with pytest.raises(ValueError, match="chosen for 16-bit CUDA queries"):
        attention._require_16bit_cuda("torch_varlen", torch.zeros(1, 2, 3, 4))


@pytest.mark.parametrize("window", [None, 3])
def test_per_example_attention_equals_each_example_alone(window):
    """Split at the boundaries, read on the host once per micro batch: each example attends to itself only."""
    from trainer import attention

    torch.manual_seed(0)
    lengths = [5, 1, 7]
    query, key, value = (torch.randn(1, h, sum(lengths), 8) for h in (4, 2, 2))
    cu = attention.boundaries(lengths)[attention.CU_SEQ_LENS]
    together = attention._per_example(query, key, value, cu, 0.0, None, window)
    start = 0
    for n in lengths:
        q, k, v = (t[:, :, start:start + n] for t in (query, key, value))
        k, v = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
        alone = attention._per_example(q, k, v, attention.boundaries([n])[attention.CU_SEQ_LENS], 0.0, None, window)
        torch.testing.assert_close(together[:, start:start + n], alone)
        start += n
    if window:  # and the window is applied: without it the longest example's output differs
        assert not torch.allclose(together, attention._per_example(query, key, value, cu, 0.0, None, None))


def test_the_contract_reads_each_torchs_varlen_attn_signature(monkeypatch):
    """torch 2.11's (no enable_gqa: heads repeated), 2.12's (enable_gqa), 2.10's (neither scale nor
    window: not used), none before 2.10."""
    import sys
    from types import ModuleType

    from ftcore import contract

    def torch_2_10(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
        raise AssertionError("only its signature is read")

    for varlen_attn, form in ((varlen_standin.varlen_attn_2_11, "heads"), (varlen_standin.varlen_attn_2_12, "gqa"),
                              (torch_2_10, None)):
        module = ModuleType("torch.nn.attention.varlen")
        module.varlen_attn = varlen_attn
        monkeypatch.setitem(sys.modules, "torch.nn.attention.varlen", module)
        assert contract.torch_varlen_form() == form, varlen_attn
    monkeypatch.setitem(sys.modules, "torch.nn.attention.varlen", None)  # before torch 2.10: no such module
    assert contract.torch_varlen_form() is None
