"""`ft generate`: greedy text from an SFT checkpoint or a base with its adapter."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import json

from post_helpers import PROMPT, one_thread, run_ft, train_job
from trainer_helpers import TINY_QA

from ftcore import files, layout
from launcher import locate
from ftcore.errors import UserError

pytestmark = pytest.mark.train


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    with one_thread():  # for the whole module: its tests run these models too
        home = tmp_path_factory.mktemp("home")
        chat = home / "chat.jsonl"  # the tiny QA set as conversations: a `messages` job
        chat.write_text("".join(json.dumps({"messages": [
            {"role": "user", "content": f"{r['context']} {r['question']}"},
            {"role": "assistant", "content": r["answers"]["text"][0]}]}) + "\n"
            for r in map(json.loads, TINY_QA.read_text().splitlines()[:40])))
        yield {"lora": train_job(home, "lora"), "sft": train_job(home, "sft", peft=None),
               "chat": train_job(home, "chat", data={"path": str(chat), "format": "jsonl"})}


def _reference(model, tokenizer, max_new_tokens):
    """What transformers itself generates greedily from the prompt as training tokenized it."""
    from fttools.inference import pick_device, prompt_ids

    model = model.to(pick_device())  # where generate() runs too
    ids = torch.tensor([prompt_ids(tokenizer, PROMPT)], device=model.device)
    out = model.generate(input_ids=ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_sft_checkpoint_generates_what_transformers_generates(jobs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fttools.inference import generate

    ckpt = locate.find_checkpoint(str(jobs["sft"]))
    assert ckpt.kind == layout.FULL
    reference = _reference(AutoModelForCausalLM.from_pretrained(ckpt.path).eval(), AutoTokenizer.from_pretrained(ckpt.path), 8)
    assert generate(ckpt, PROMPT, 8) == reference


def test_lora_checkpoint_generates_with_its_adapter(jobs):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fttools.inference import generate

    ckpt = locate.find_checkpoint(str(jobs["lora"]))
    assert ckpt.kind == layout.LORA
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(ckpt.base), ckpt.path).eval()
    text = generate(ckpt, PROMPT, 8)
    assert text == _reference(model, AutoTokenizer.from_pretrained(ckpt.path), 8)
    assert text  # this adapter has not learnt to stop yet: the comparison saw real tokens


def test_batched_prompts_give_the_same_text_as_one_at_a_time(jobs):
    from fttools.inference import greedy, load_model, load_tokenizer, prompt_ids

    ckpt = locate.find_checkpoint(str(jobs["lora"]))
    tokenizer, model = load_tokenizer(ckpt), load_model(ckpt, device=torch.device("cpu"))
    prompts = [prompt_ids(tokenizer, p) for p in (PROMPT, "Question: Where is Oslo?\nAnswer:", "Hi")]
    alone = [greedy(model, tokenizer, [p], 6)[0] for p in prompts]
    assert greedy(model, tokenizer, prompts, 6, batch_size=3) == alone  # left padding changes nothing


def test_cli_prints_the_continuation(jobs):
    code, stdout, stderr = run_ft("generate", str(jobs["lora"]), PROMPT, "--max-new-tokens", "4")
    assert code == 0, stderr
    assert stdout.endswith("\n") and len(stdout) > 1


def test_max_new_tokens_must_be_positive(jobs):
    from fttools.inference import generate

    with pytest.raises(UserError, match="at least 1"):
        generate(locate.find_checkpoint(str(jobs["sft"])), PROMPT, 0)


def test_the_jobs_prompt_format_is_applied_from_the_records_fields(jobs):
    """`ft generate JOB --question Q --context C` asks what training asked: PROMPT is that text."""
    from fttools.inference import job_prompt

    ckpt = locate.find_checkpoint(str(jobs["lora"]))
    fields = {"context": "Ada lives in Oslo. Ada is 36.", "question": "How old is Ada?"}
    assert job_prompt(ckpt, fields) == PROMPT
    code, templated, stderr = run_ft("generate", str(jobs["lora"]), "--context", fields["context"],
                                     "--question", fields["question"], "-n", "4")
    raw = run_ft("generate", str(jobs["lora"]), PROMPT, "-n", "4")[1]
    assert code == 0 and templated.strip() == raw.strip() and repr(PROMPT) in stderr
    code, _, stderr = run_ft("generate", str(jobs["lora"]), "--instruction", "Say hi")
    assert code == 2 and "a squad job's prompt is built from --context and --question" in stderr
    code, _, stderr = run_ft("generate", str(jobs["lora"]))
    assert code == 2 and "nothing to answer" in stderr


def test_chat_mode_applies_the_chat_template_once(jobs, monkeypatch):
    """`--message`/`--system` for a messages job: the tokenizer's chat template, one bos, the
    assistant header last, as training rendered conversations."""
    from fttools import inference

    ckpt = locate.find_checkpoint(str(jobs["chat"]))
    tokenizer = inference.load_tokenizer(ckpt)
    ids = inference.chat_ids(ckpt, tokenizer, "Where does Ben live?", "Be brief.")
    rendered = tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": "Where does Ben live?"}],
                                             tokenize=False, add_generation_prompt=True)
    assert ids == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
    code, stdout, stderr = run_ft("generate", str(jobs["chat"]), "--message", "Where does Ben live?",
                                  "--system", "Be brief.", "-n", "4")
    assert code == 0, stderr
    assert stdout.strip() == inference.greedy(inference.load_model(ckpt), tokenizer, [ids], 4)[0].strip()

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the mode was checked")

    monkeypatch.setattr(inference, "load_model", no_model)
    code, _, stderr = run_ft("generate", str(jobs["lora"]), "--message", "hi")  # a squad job
    assert code == 2 and "give --question and --context instead" in stderr
    code, _, stderr = run_ft("generate", str(jobs["chat"]), "--question", "q", "--context", "c")
    assert code == 2 and "give --message (and --system)" in stderr
    code, _, stderr = run_ft("generate", str(jobs["chat"]), "--system", "Be brief.")
    assert code == 2 and "--system goes with --message" in stderr
