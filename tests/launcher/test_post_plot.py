"""`ft plot`: curves from the metrics.jsonl the trainer writes, several runs on one figure."""

from __future__ import annotations

import json
import shutil

import pytest
from post_helpers import one_thread, train_job

from launcher import jobdir
from ftcore.errors import UserError
from launcher.plot import collect, default_output, figure, plot, read_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    home = tmp_path_factory.mktemp("home")
    with one_thread():
        for name, lr in (("20260101-000000-tiny-aaaaaa", 1e-2), ("20260101-000001-tiny-bbbbbb", 1e-3)):
            train_job(home, name, trainer={"max_steps": 3, "val_every_steps": 2, "limit_val_batches": 1},
                      optim={"lr": lr})
    return home


@pytest.fixture
def jobs_root(home, monkeypatch):
    monkeypatch.setenv("FT_HOME", str(home))
    return home / "jobs"


@pytest.mark.train
def test_reads_what_the_trainer_writes(jobs_root):
    series = read_metrics(jobs_root / "20260101-000000-tiny-aaaaaa" / "metrics.jsonl")
    assert [step for step, _ in series["loss"]] == [1, 2, 3]
    assert [step for step, _ in series["val_loss"]] == [2, 3]  # every 2 steps, and at the end
    assert {"lr", "tps", "mem_gib", "grad_norm"} <= series.keys()
    assert "time" not in series and "epoch" not in series


def test_a_resumed_runs_repeated_steps_keep_their_last_value(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 3, "lo')
    assert read_metrics(path)["loss"] == [(1, 3.0), (2, 1.5)]  # the torn last line is skipped


@pytest.mark.train
def test_several_jobs_in_one_png(jobs_root, tmp_path):
    import matplotlib.image

    out = plot(["20260101-000000", "20260101-000001"], tmp_path / "compare.png")
    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 20_000
    height, width, _ = matplotlib.image.imread(out).shape
    assert (width, height) == (1320, 880)


@pytest.mark.train
def test_runs_are_named_by_job_id_else_folder_and_sweep_tasks_by_their_values(jobs_root):
    named = jobs_root / "20260101-000000-tiny-aaaaaa"
    jobdir.write_record(named, executor="slurm", job_id="4242")
    sweep = jobs_root / "20260101-000002-sweep-cccccc"
    for task, lr in (("0", 0.001), ("1", 0.0003)):
        (sweep / "tasks" / task).mkdir(parents=True)
        shutil.copy(named / "metrics.jsonl", sweep / "tasks" / task / "metrics.jsonl")
        (sweep / "tasks" / task / jobdir.CONFIG).write_text(f"name: tiny\noptim:\n  lr: {lr}\n  eps: 1.0e-08\n")
    shutil.copy(named / jobdir.CONFIG, sweep / jobdir.CONFIG)
    try:
        runs = collect(["4242", "20260101-000001", str(sweep)])
        assert [r.label for r in runs] == ["4242", "20260101-000001-tiny-bbbbbb",
                                           "20260101-000002-sweep-cccccc_0 lr=1e-3",
                                           "20260101-000002-sweep-cccccc_1 lr=3e-4"]
        fig = figure(runs)
        assert fig._suptitle.get_text() == ("ft plot: 4242 (test), 20260101-000001-tiny-bbbbbb (test), "
                                            "20260101-000002-sweep-cccccc (test)")
        loss, _, tps, memory = fig.axes
        assert memory.get_ylim()[0] == 0 and tps.get_ylim()[0] == 0  # flat memory stays flat
        assert "20260101-000002-sweep-cccccc_1 lr=3e-4 train" in [t.get_text() for t in loss.get_legend().texts]
        assert default_output(runs) == named / "compare-4242-20260101-000001-tiny-bbbbbb-20260101-000002-sweep-cccccc.png"
        assert default_output(collect([str(sweep)])) == sweep / "metrics.png"
    finally:
        (named / jobdir.RECORD).unlink()
        shutil.rmtree(sweep)


@pytest.mark.train
def test_cli_default_output_is_in_the_job_folder(ft, jobs_root):
    result = ft("plot", "20260101-000001", env={"FT_HOME": str(jobs_root.parent)})
    assert result.returncode == 0, result.stderr
    out = jobs_root / "20260101-000001-tiny-bbbbbb" / "metrics.png"
    assert result.stdout.strip() == str(out) and out.read_bytes().startswith(PNG_SIGNATURE)


def test_a_job_without_metrics_is_an_error(tmp_path):
    job = tmp_path / "jobs" / "20260101-000009-tiny-dddddd"
    job.mkdir(parents=True)
    (job / jobdir.CONFIG).write_text("name: tiny\n")
    with pytest.raises(UserError, match="no training metrics yet"):
        collect([str(job)])


def test_preference_runs_get_a_row_of_trls_reward_figures(tmp_path):
    pytest.importorskip("matplotlib")
    from launcher.plot import Run

    folder = tmp_path / "dpo"
    folder.mkdir()
    rows = [{"step": s, "loss": 0.69 - s / 100, "rewards/margins": s / 10, "rewards/accuracies": 0.5 + s / 20}
            for s in (1, 2, 3)] + [{"step": 3, "val_loss": 0.6, "val_rewards/margins": 0.2, "val_rewards/accuracies": 0.7}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    fig = figure([Run("dpo", folder, read_metrics(folder / "metrics.jsonl"), job="dpo")])
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[4:] == ["rewards/margins", "rewards/accuracies"]
    margins = fig.axes[4]
    assert [list(line.get_ydata()) for line in margins.lines] == [[0.1, 0.2, 0.3], [0.2]]  # train, validation
    sft = tmp_path / "sft"
    sft.mkdir()
    (sft / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    assert len(figure([Run("sft", sft, read_metrics(sft / "metrics.jsonl"), job="sft")]).axes) == 4
