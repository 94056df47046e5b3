"""The job folder's records have one schema each: the sbatch script's event lines and
`record_event`'s are the same JSON, and submission.json takes only the fields it names."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from ftcore import layout, records
from launcher import config, jobdir, render


def _script_events(tmp_path: Path) -> list[dict]:
    """Run the rendered script's own ft_event function and start/exit lines in bash."""
    tmp_path.mkdir()
    text = render.render_sbatch(config.resolve("tiny", []).job, tmp_path)
    function = re.search(r"^ft_event\(\) \{\n.*?^\}\n", text, re.M | re.S).group(0)
    calls = [line for line in text.splitlines() if re.match(r"^\s*ft_event (start|exit|requeue)\b", line)]
    assert len(calls) == 3, calls
    env = {"FT_RUN_DIR": str(tmp_path), "SLURM_JOB_ID": "4242", "SLURM_RESTART_COUNT": "1",
           "SLURM_JOB_NODELIST": "node[1-2]", "PATH": "/usr/bin:/bin"}
    subprocess.run(["bash", "-c", f"set -u\n{function}status=3\n" + "\n".join(c.strip() for c in calls)],
                   env=env, check=True)
    return records.read_jsonl(tmp_path / layout.EVENTS)


def test_the_script_writes_the_events_record_event_writes(tmp_path):
    written = _script_events(tmp_path / "script")
    assert [e[records.EVENT] for e in written] == [records.START, records.EXIT, records.REQUEUE]
    names = [name for name, _ in records.EVENT_FIELDS]
    for event in written:
        assert list(event)[: len(names)] == names
        assert all(isinstance(event[name], kind) for name, kind in records.EVENT_FIELDS), event
    assert written[0][records.NODES] == "node[1-2]" and written[1][records.CODE] == 3

    python = tmp_path / "python"
    python.mkdir()
    ids = {records.JOB_ID: "4242", records.RESTART: 1}
    records.record_event(python, records.START, **ids, nodes="node[1-2]")
    records.record_event(python, records.EXIT, **ids, code=3)
    records.record_event(python, records.REQUEUE, **ids)
    same = records.read_jsonl(python / layout.EVENTS)
    strip = [{k: v for k, v in e.items() if k != records.TIME} for e in same]
    assert strip == [{k: v for k, v in e.items() if k != records.TIME} for e in written]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", e[records.TIME]) for e in written + same)


def test_submission_json_takes_only_its_schemas_fields(tmp_path):
    text = jobdir.record_text(executor="slurm", job_id="1", factory="tiny", folder=str(tmp_path), history=[])
    assert set(json.loads(text)) <= set(records.SUBMISSION_FIELDS)
    with pytest.raises(TypeError, match="no field job_idd"):
        jobdir.record_text(executor="slurm", job_idd="1")
