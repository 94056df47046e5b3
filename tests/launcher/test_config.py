"""Resolution: factories, `extends:` chains, profiles, overrides, validation errors."""

from __future__ import annotations

import pytest
import yaml

from launcher import config
from ftcore.errors import UserError
from ftcore.schema import Job


def resolve(*overrides: str, factory: str = "tiny", profile: str | None = None) -> Job:
    return config.resolve(factory, list(overrides), profile).job


@pytest.mark.parametrize("info", config.list_factories(), ids=lambda i: i.name)
def test_every_shipped_factory_resolves_and_opens_with_its_command(info):
    assert info.error is None
    text = info.path.read_text()
    assert text.startswith(f"# ft submit --factory {info.name}")
    job = resolve(factory=info.name)
    assert job.name == info.name
    assert job.data.global_batch_size == job.data.micro_batch_size * job.grad_accum_steps * job.world_size


def test_workshop_keys_mean_what_they_meant():
    job = resolve("trainer.devices=1", "trainer.max_steps=250", "trainer.limit_val_batches=10",
                  "optim.lr_scheduler.warmup_steps=50", "data.global_batch_size=8",
                  "resume.restore_config.path=/models/llama", factory="llama31_8b")
    assert job.trainer.max_steps == 250
    assert job.trainer.limit_val_batches == 10
    assert job.optim.lr_scheduler.warmup_steps == 50
    assert job.data.global_batch_size == 8
    assert job.model.path == "/models/llama"  # restore_config.path is the base model folder
    assert job.grad_accum_steps == 8


def test_values_are_read_as_yaml():
    job = resolve("optim.lr=1e-4", "peft.target_modules=[q_proj,v_proj]", "trainer.val_every_steps=null",
                  "slurm.job_name=12345", "slurm.extra.mail-type=END", "slurm.extra.exclusive=null")
    assert job.optim.lr == pytest.approx(1e-4)
    assert job.peft.target_modules == ["q_proj", "v_proj"]
    assert job.trainer.val_every_steps is None
    assert job.slurm.job_name == "12345"  # a string field keeps the text, not the number
    assert job.slurm.extra == {"mail-type": "END", "exclusive": None}


def test_peft_switches_between_lora_and_sft():
    assert resolve("peft=none", factory="llama32_1b_squad").peft is None
    lora = resolve("peft=lora", factory="llama32_1b_squad")
    assert lora.peft.target_modules == ["*.proj"]  # the factory's LoRA settings are kept
    sft = resolve(factory="llama3_8b_sft")
    assert sft.peft is None and sft.strategy == "fsdp2"
    with pytest.raises(UserError, match="meta_init fills FSDP2 shards"):
        resolve("peft=lora", factory="llama3_8b_sft")  # refused here, not after the queue
    back = resolve("peft=lora", "peft.dim=4", "model.meta_init=false", factory="llama3_8b_sft")
    assert back.peft.dim == 4 and back.strategy == "ddp"
    with pytest.raises(UserError, match="choose one of lora, none"):
        resolve("peft=prefix_tuning")
    assert resolve("peft=qlora").model.quantization == "nf4"  # NeMo's word: LoRA over an NF4 base


def test_all_problems_in_one_command_line_are_reported_together():
    with pytest.raises(UserError) as err:
        resolve("trainer.max_step=3", "traner.devices=2", "optim.lr=fast", "--trainer.seed=1", "oops")
    problems = "\n".join(err.value.problems)
    assert "unknown key 'trainer.max_step'; did you mean trainer.max_steps" in problems
    assert "unknown key 'traner.devices'; did you mean trainer.devices" in problems
    assert "optim.lr: expected a valid number" in problems and "'fast'" in problems
    assert "written without dashes: trainer.seed=1" in problems
    assert "'oops' is not an override" in problems
    assert len(err.value.problems) == 5


def test_a_key_in_the_wrong_section_names_the_right_one():
    with pytest.raises(UserError, match=r"unknown key 'max_steps'; did you mean trainer.max_steps"):
        resolve("max_steps=3")


def test_batch_that_does_not_divide_is_an_error():
    with pytest.raises(UserError, match="global_batch_size=6 is not a multiple of .* 8 × 1 = 8"):
        resolve("data.global_batch_size=6")
    job = resolve("trainer.devices=2", "data.global_batch_size=16", "data.micro_batch_size=2")
    assert (job.world_size, job.grad_accum_steps) == (2, 4)


def test_secrets_are_refused_before_anything_is_written(isolated_home):
    with pytest.raises(UserError, match="HF_TOKEN looks like a secret"):
        resolve("container.env.HF_TOKEN=hf_abc")
    assert not isolated_home.exists()


def test_factory_base_chain_and_loops(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("extends: tiny\ndescription: mine\ntrainer:\n  max_steps: 7\n")
    job = config.resolve(str(child), []).job
    assert job.trainer.max_steps == 7 and job.model.config["hidden_size"] == 64
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(UserError, match="chain loops"):
        config.resolve(str(tmp_path / "a.yaml"), [])


def test_factory_file_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_steps: [1,\n")
    with pytest.raises(UserError, match=r"bad.yaml line \d+.*not valid YAML"):
        config.resolve(str(bad), [])
    typo = tmp_path / "typo.yaml"
    typo.write_text("extends: tiny\ntrainer:\n  max_stesp: 3\n")
    with pytest.raises(UserError, match=r"typo.yaml: unknown key 'trainer.max_stesp'; did you mean trainer.max_steps"):
        config.resolve(str(typo), [])


def test_user_factory_folders_from_env_and_config(tmp_path, monkeypatch):
    env_dir, cfg_dir = tmp_path / "env-factories", tmp_path / "cfg-factories"
    env_dir.mkdir(), cfg_dir.mkdir()
    (env_dir / "mine.yaml").write_text("extends: tiny\ntrainer:\n  max_steps: 3\n")
    (cfg_dir / "theirs.yaml").write_text("extends: tiny\ntrainer:\n  max_steps: 5\n")
    (tmp_path / "ft-config").mkdir()
    (tmp_path / "ft-config" / "config.yaml").write_text(yaml.safe_dump({"factory_dirs": [str(cfg_dir)]}))
    monkeypatch.setenv("FT_FACTORY_PATH", str(env_dir))
    names = {info.name: info.source for info in config.list_factories()}
    assert names["mine"] == "$FT_FACTORY_PATH" and names["theirs"] == "user config" and names["tiny"] == "built-in"
    assert resolve(factory="mine").trainer.max_steps == 3
    assert resolve(factory="theirs").trainer.max_steps == 5


def test_precedence_factory_then_profile_then_command_line(tmp_path, monkeypatch):
    profile = tmp_path / "cluster.yaml"
    profile.write_text(yaml.safe_dump({
        "slurm": {"account": "proj1", "partition": "gpu", "qos": "normal", "time": "00:30:00",
                  "modules": ["cuda/12.4"], "setup": ["echo site setup"]},
        "container": {"binds": [str(tmp_path)]},
    }))
    job = resolve(profile=str(profile))
    assert (job.slurm.account, job.slurm.partition, job.slurm.time) == ("proj1", "gpu", "00:30:00")
    job = resolve("slurm.partition=debug", profile=str(profile))
    assert job.slurm.partition == "debug" and job.slurm.account == "proj1"
    monkeypatch.setenv("FT_PROFILE", str(profile))
    assert resolve().slurm.qos == "normal"
    (tmp_path / "bad.yaml").write_text("slurm:\n  acount: x\n")
    with pytest.raises(UserError, match=r"cluster profile .*bad.yaml: unknown key 'slurm.acount'; did you mean slurm.account"):
        resolve(profile=str(tmp_path / "bad.yaml"))
    with pytest.raises(UserError, match="cluster profile .* does not exist"):
        resolve(profile=str(tmp_path / "missing.yaml"))


def test_default_profile_location_is_used_when_present(tmp_path):
    (tmp_path / "ft-config").mkdir()
    (tmp_path / "ft-config" / "cluster.yaml").write_text("slurm:\n  account: site\n")
    assert resolve().slurm.account == "site"


def test_header_values_cannot_carry_newlines():
    with pytest.raises(UserError, match="slurm.job_name: .*newlines"):
        resolve("slurm.job_name=\"a\\nb\"")
    with pytest.raises(UserError, match="not a SLURM time"):
        resolve("slurm.time=tomorrow")
    with pytest.raises(UserError, match="'slurm.extra.x;y' is not a valid key"):
        resolve("slurm.extra.x;y=1")
    with pytest.raises(UserError, match="not an sbatch option name"):
        config.validate({**config.load_factory("tiny")[0], "slurm": {"extra": {"x y": "1"}}})


def test_precision_that_would_train_badly_is_refused_at_submit():
    """fp16 without loss scaling, and bf16 weights with bf16 Adam state (full SFT under ddp)."""
    gpu = ("trainer.accelerator=gpu", "model.dtype=bf16")  # (the tiny factory says fp32)
    with pytest.raises(UserError, match="model.dtype=fp16 is refused: fp16 gradients underflow"):
        resolve(*gpu, "model.dtype=fp16")
    with pytest.raises(UserError, match="full SFT with trainer.strategy=ddp would train bf16 weights"):
        resolve(*gpu, "peft=none", "trainer.strategy=ddp")
    assert resolve(*gpu, "peft=none").strategy == "fsdp2"  # fp32 master weights: accepted
    assert resolve(*gpu, "peft=none", "trainer.strategy=ddp", "model.dtype=fp32").strategy == "ddp"
    assert resolve(*gpu, "peft=lora", "trainer.strategy=ddp").method == "lora"  # adapters are fp32 in peft
    with pytest.raises(UserError, match="trainer.liger needs GPUs"):
        resolve("trainer.accelerator=cpu", "trainer.liger=true")


def test_null_unsets_an_optional_text_setting_and_stays_text_elsewhere():
    job = resolve("model.tokenizer=null", "data.val_path=~", "slurm.partition=null")
    assert job.model.tokenizer is None and job.data.val_path is None and job.slurm.partition is None
    assert resolve("description=null").description == "null"  # a required text keeps what was written
