"""Training curves of one or more jobs in one PNG, to compare runs at a glance.

    ft plot JOB                            # → JOB/metrics.png (a sweep: every task in it)
    ft plot 12345 12346 --out lr-sweep.png # several jobs; default JOB1/compare-12345-12346.png

Four panels against the optimizer step, from each run's metrics.jsonl (trainer/metrics.py):
loss (training solid, validation dashed with markers), learning rate, tokens per second and
peak memory (from zero, so that flat memory looks flat); preference tuning adds TRL's
`rewards/margins` and `rewards/accuracies`. One colour per run; the legend
names a sweep's tasks by the values they sweep (`lr=1e-3`), other runs by job id, else
folder name; the title names the jobs and their factories.
matplotlib is imported only when a plot is drawn, with the Agg backend (no display needed).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from launcher import jobs
from ftcore import layout, records
from ftcore.files import expand
from ftcore.errors import UserError

PANELS = (
    ("loss", "loss"),
    ("lr", "learning rate"),
    ("tps", "tokens / s"),
    ("mem_gib", "peak memory (GiB)"),
)
# Preference tuning's (TRL's names): a third row when any run recorded them, validation dashed.
PREFERENCE_PANELS = (
    (records.REWARDS_MARGINS, "rewards/margins"),
    (records.REWARDS_ACCURACIES, "rewards/accuracies"),
)


@dataclass
class Run:
    label: str
    folder: Path
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # name → [(step, value)]
    job: str = ""  # the job (id or folder name) and factory it belongs to, for the title
    job_folder: Path | None = None


def read_metrics(path: Path) -> dict[str, list[tuple[int, float]]]:
    try:
        return parse_metrics(path.read_bytes())
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None


def parse_metrics(data: bytes) -> dict[str, list[tuple[int, float]]]:
    """Every numeric field of metrics.jsonl as (step, value) pairs; a resumed run's repeated
    steps keep their last record, as the trainer's own rewrite on resume does."""
    by_name: dict[str, dict[int, float]] = {}
    for line in data.decode(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line being written right now
        if not isinstance(record, dict):
            continue
        step = record.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            continue
        for name, value in record.items():
            if name not in ("step", "time", "epoch") and isinstance(value, (int, float)) and not isinstance(value, bool):
                number = _plottable(value)
                if number is not None:
                    by_name.setdefault(name, {})[step] = number
    return {name: sorted(points.items()) for name, points in by_name.items()}


# Beyond this a value is a diverged run's, and an axis spanning it overflows matplotlib's arithmetic.
PLOTTABLE = 1e100


def _plottable(value: int | float) -> float | None:
    """The value as a float an axis can hold; None for NaN, ±Infinity, a 400-digit integer or
    1.7e308 (a diverged step: the trainer skips those, a hand-written file may hold them)."""
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) and abs(number) <= PLOTTABLE else None


def runs_of(spec: str, root: Path | None = None) -> list[Run]:
    """The runs a JOB argument names: a job (each sweep task separately), one task (`15_1`), or
    a folder holding metrics.jsonl."""
    folder = expand(spec)
    if folder.is_dir() and (folder / layout.METRICS).is_file() and not (folder / layout.CONFIG).is_file():
        return [Run(folder.name, folder, job=folder.name, job_folder=folder)]
    view = jobs.find(spec, root)
    tasks = view.run_dirs
    about = f"{view.label} ({view.factory})"
    if len(tasks) == 1:
        return [Run(view.label, tasks[0], job=about, job_folder=view.folder)]
    swept = swept_values(tasks)
    return [Run(f"{view.label}_{run.name} {swept[run]}".strip(), run, job=about, job_folder=view.folder)
            for run in tasks]


def swept_values(tasks: list[Path]) -> dict[Path, str]:
    """`lr=1e-3` for each task folder: the settings in which the tasks' configs differ."""
    import yaml

    from launcher.config import varying

    configs = []
    for run in tasks:
        try:
            loaded = yaml.safe_load((run / layout.CONFIG).read_text())
        except (OSError, yaml.YAMLError):
            loaded = None
        configs.append(loaded if isinstance(loaded, dict) else {})
    return {run: " ".join(f"{k.rpartition('.')[2]}={_short(v)}" for k, v in sorted(values.items()))
            for run, values in zip(tasks, varying(configs))}


def _short(value) -> str:
    """1e-3 rather than 0.001; lists without spaces."""
    if isinstance(value, float) and value and abs(value) < 1e-2:
        mantissa, _, exponent = f"{value:.2e}".partition("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    if isinstance(value, list):
        return "[" + ",".join(_short(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def collect(specs: list[str], root: Path | None = None) -> list[Run]:
    if not specs:
        raise UserError("name at least one job to plot")
    runs = []
    for spec in specs:
        for run in runs_of(spec, root):
            path = run.folder / layout.METRICS
            run.series = read_metrics(path) if path.is_file() else {}
            runs.append(run)
    check_series(runs)
    return runs


def check_series(runs: list[Run]) -> None:
    missing = [f"{run.label}: no training metrics yet in {run.folder / 'metrics.jsonl'}" for run in runs
               if not run.series.get("loss") and not run.series.get("val_loss")]
    if missing:
        raise UserError(*missing)


def list_runs(specs: list[str], root: Path | None = None) -> list[dict[str, str]]:
    """The runs the specs name, without their metrics: what `ft plot --cluster` asks the cluster."""
    if not specs:
        raise UserError("name at least one job to plot")
    return [{"label": run.label, "folder": str(run.folder), "job": run.job}
            for spec in specs for run in runs_of(spec, root)]


def default_output(runs: list[Run]) -> Path:
    """Next to the job: JOB/metrics.png (a sweep's in the sweep folder, a task's in its own);
    several jobs: compare-<jobs>.png in the first one's folder."""
    if len(runs) == 1:
        return runs[0].folder / "metrics.png"
    folders = list(dict.fromkeys(run.job_folder or run.folder for run in runs))
    if len(folders) == 1:
        return folders[0] / "metrics.png"
    names = "-".join(dict.fromkeys(run.job.split(" ")[0] for run in runs))
    return folders[0] / f"compare-{names[:80]}.png"


def draw(runs: list[Run], out: Path) -> Path:
    """Write the PNG; the figure has a fixed size, so it reads the same for 1 or 10 runs."""
    fig = figure(runs)  # selects the Agg backend before pyplot is imported
    import matplotlib.pyplot as plt

    out = expand(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def figure(runs: list[Run]):
    """The matplotlib figure: four panels, one colour per run."""
    from ftcore import contract

    contract.require_extra("plot", "ft plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    preference = any(run.series.get(records.REWARDS_MARGINS) for run in runs)
    panels = PANELS + (PREFERENCE_PANELS if preference else ())
    fig, axes = plt.subplots(len(panels) // 2, 2, figsize=(12, 4 * len(panels) // 2), sharex=True, layout="constrained")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, run in enumerate(runs):
        colour = colours[index % len(colours)]
        for ax, (name, title) in zip(axes.flat, panels):
            points = run.series.get(name, [])
            if points:
                ax.plot(*zip(*points), color=colour, linewidth=1.5, label=f"{run.label} train" if name == "loss" else run.label)
            held_out = "val_loss" if name == "loss" else records.VAL_PREFIX + name
            if (name == "loss" or (preference and (name, title) in PREFERENCE_PANELS)) and run.series.get(held_out):
                ax.plot(*zip(*run.series[held_out]), color=colour, linestyle="--", marker="o", markersize=4,
                        label=f"{run.label} validation")
    for ax, (name, title) in zip(axes.flat, panels):
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if not ax.lines:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes, color="grey")
    for ax in axes[-1]:
        ax.set_xlabel("optimizer step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    axes[0][1].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    for ax in axes[1]:
        # Throughput and memory from zero: autoscaling would blow a 0.1 % wobble up to full height.
        if ax.lines:
            ax.set_ylim(bottom=0, top=max(max(line.get_ydata()) for line in ax.lines) * 1.15 or 1)
    axes[0][0].legend(fontsize="small")
    titles = list(dict.fromkeys(run.job for run in runs))
    fig.suptitle("ft plot: " + (", ".join(titles[:4]) + (" …" if len(titles) > 4 else "")))
    return fig


def plot(specs: list[str], out: Path | None = None, root: Path | None = None) -> Path:
    """`ft plot`: the runs' curves in one PNG; returns its path."""
    runs = collect(specs, root)
    return draw(runs, out or default_output(runs))
