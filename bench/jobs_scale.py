"""`ft jobs -n 20` and `ft status ID` with many job folders: reading only what is shown
(launcher/jobindex.py, jobs.newest) against reading every folder (the way before), in one run.

    python bench/jobs_scale.py                    # 10,000 folders
    python bench/jobs_scale.py --folders 3000 --repeat 3

Makes the folders in a temporary $FT_HOME (each a resolved tiny config, a record with a SLURM
id, events, 50 metrics lines; every 20th a dry run), then times, in this process and through
the real command line (a fresh Python each time, as a user runs it):
  jobs -n 20    baseline: all_jobs + dry_runs + the first 20 rows   | jobs.newest(20) + rows
  status ID     baseline: the scan (no index)                       | the index: one folder
Prints a table with the ratios (baseline ÷ now; the baseline runs once, it is slow). No
scheduler is asked (PATH without squeue).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_folders(root: Path, count: int) -> list[str]:
    from launcher import config, jobdir
    from ftcore.schema import job_to_dict

    text = jobdir.config_text(job_to_dict(config.resolve("tiny", []).job))
    metrics = "".join(json.dumps({"step": s, "loss": 1.0 / s, "total_steps": 50, "elapsed_s": s, "remaining_s": 50 - s})
                      + "\n" for s in range(1, 51))
    ids = []
    for i in range(count):
        folder = root / f"2026{i:08d}-tiny-{i:06x}"
        (folder / "logs").mkdir(parents=True)
        (folder / "config.yaml").write_text(text)
        (folder / "metrics.jsonl").write_text(metrics)
        if i % 20:
            job_id = str(100000 + i)
            ids.append(job_id)
            (folder / "submission.json").write_text(jobdir.record_text(executor="slurm", job_id=job_id, factory="tiny",
                                                                      folder=str(folder), history=[]))
            (folder / "events.jsonl").write_text(
                "".join(json.dumps({"event": e, "job_id": job_id, **({"code": 0} if e == "exit" else {})}) + "\n"
                        for e in ("start", "exit")))
        stamp = 1_700_000_000 + i
        os.utime(folder / "config.yaml", (stamp, stamp))
    return ids


def timed(work, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folders", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="ft-jobs-bench-"))
    os.environ["FT_HOME"] = str(home)
    no_scheduler = Path(tempfile.mkdtemp(prefix="ft-no-slurm-"))
    os.environ["PATH"] = f"{no_scheduler}:/usr/bin:/bin"  # no squeue: the folders alone are timed
    sys.path.insert(0, str(REPO))
    from launcher import jobs, jobindex, paths

    root = paths.jobs_root()
    try:
        start = time.perf_counter()
        ids = make_folders(root, args.folders)
        made = time.perf_counter() - start
        target = ids[len(ids) // 3]  # an old job: the scan cannot stop early

        def jobs_before():
            views = jobs.all_jobs()
            hidden = jobs.dry_runs(views)
            jobs.summary_rows([v for v in views if v not in hidden][:20], ask_scheduler=False)

        def jobs_now():
            views, _ = jobs.newest(20)
            jobs.summary_rows(views, ask_scheduler=False)

        def status_before():  # what find did before the index: read every folder, match the id
            views = jobs.all_jobs()
            (view,) = [v for v in views if v.job_id == target or v.folder.name == target or target in v.earlier_ids]
            jobs.state(view, ask_scheduler=False)

        def status_rebuild():  # the index lost: the scan, which writes it again
            shutil.rmtree(jobindex.folder(root), ignore_errors=True)
            jobs.state(jobs.find(target), ask_scheduler=False)

        def status_now():
            jobs.state(jobs.find(target), ask_scheduler=False)

        env = dict(os.environ, PYTHONPATH=str(REPO))

        def cli(*words: str):
            def run():
                done = subprocess.run([sys.executable, "-m", "launcher", *words], capture_output=True, env=env)
                assert done.returncode == 0, done.stderr.decode()
            return run

        rows = [
            ("jobs -n 20 (library)", timed(jobs_before, 1), timed(jobs_now, args.repeat)),
            ("status ID (library)", timed(status_before, 1), (status_rebuild(), timed(status_now, args.repeat))[1]),
        ]
        rebuild = timed(status_rebuild, 1)
        startup = timed(cli("--version"), args.repeat)
        cli_rows = [("ft jobs -n 20 (command line)", timed(cli("jobs", "-n", "20"), args.repeat)),
                    ("ft status ID (command line)", timed(cli("status", target), args.repeat))]
    finally:
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(no_scheduler, ignore_errors=True)

    print(f"{args.folders} job folders ({args.folders // 20} dry runs), made in {made:.1f} s; now: median of {args.repeat}")
    print("| what | baseline: read every folder (s) | now (s) | baseline ÷ now |")
    print("| --- | ---: | ---: | ---: |")
    for name, before, now in rows:
        print(f"| {name} | {before:.3f} | {now:.4f} | {before / now:.0f}× |")
    print(f"| status ID, index lost (the scan, writing the index again) | {rows[1][1]:.3f} | {rebuild:.3f} | – |")
    print(f"\n| command line, a fresh Python (start-up alone: `ft --version` {startup:.2f} s) | now (s) |")
    print("| --- | ---: |")
    for name, now in cli_rows:
        print(f"| {name} | {now:.2f} |")


if __name__ == "__main__":
    main()
