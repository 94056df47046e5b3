"""Progress as the log line and `ft status` both print it."""

from ftcore import progress


def test_clock_steps_and_times():
    assert [progress.clock(s) for s in (0, 7.4, 750, 3723)] == ["0:00", "0:07", "12:30", "1:02:03"]
    assert progress.steps(120, 250) == "120/250 (48%)" and progress.steps(7, None) == "7"
    assert progress.remaining(30.0, 10, 20) == 60.0 and progress.remaining(5.0, 0, 20) is None
    record = {"step": 120, "total_steps": 250, "elapsed_s": 30, "remaining_s": 32.5}
    assert progress.of_record(record) == "120/250 (48%), 0:30 elapsed, 0:32 left"
    assert progress.of_record({"step": 3}) == "3" and progress.of_record({}) == "-"
