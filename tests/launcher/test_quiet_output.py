"""Small things every run showed: `ft show`'s escaped `\\xD7`, `ft jobs` wrapped at 80 columns
when piped, the second-factor hint naming ~/.ssh/config under FT_SSH_CONFIG."""

from __future__ import annotations

from launcher import remote


def test_ft_show_prints_text_as_written(ft):
    shown = ft("show", "--factory", "llama3_8b_lora")
    assert shown.returncode == 0 and "1 × 80 GB GPU" in shown.stdout and "\\xD7" not in shown.stdout


def test_ft_jobs_piped_keeps_one_line_per_job(ft, tmp_path, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)  # a width the user set wins, rightly: not this case
    recipe = tmp_path / "a_rather_long_recipe_name_for_a_sweep_of_learning_rates.yaml"
    recipe.write_text("extends: tiny\n")
    assert ft("submit", "--dry-run", "--factory", str(recipe)).returncode == 0
    listed = ft("jobs", "--all")
    assert listed.returncode == 0
    assert any(recipe.stem in line for line in listed.stdout.splitlines()), listed.stdout  # not cut over lines


def test_the_second_factor_hint_names_the_ssh_config_in_use(monkeypatch):
    cluster = remote.Cluster(name="hpc", host="hpc")
    monkeypatch.setenv(remote.SSH_CONFIG_ENV, "/etc/ft/ssh_config")
    assert "in /etc/ft/ssh_config, under `Host hpc`" in remote._login_hint(cluster)
    monkeypatch.delenv(remote.SSH_CONFIG_ENV)
    assert "in ~/.ssh/config, under `Host hpc`" in remote._login_hint(cluster)
