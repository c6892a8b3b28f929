"""Running a function in a fresh process: its answer, its errors, its death, cancelling it, and its
caller's death."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlprune_core.fresh_process import FreshProcessError, run_in_fresh_process

from ..support.paths import REPO


def process_id(offset: int) -> int:
    return os.getpid() + offset


def refuse(reason: str) -> None:
    raise ValueError(reason)


def exit_abruptly(code: int) -> None:
    os._exit(code)


def wait_forever(pid_file: Path) -> None:
    pid_file.write_text(str(os.getpid()))
    time.sleep(600)


def test_the_function_runs_in_another_process_and_its_answer_comes_back():
    assert run_in_fresh_process(process_id, 0) != os.getpid()


def test_an_exception_in_the_child_is_raised_in_the_caller_with_its_message():
    with pytest.raises(FreshProcessError, match="ValueError: no such layer"):
        run_in_fresh_process(refuse, "no such layer")


def test_a_child_that_dies_without_answering_is_an_error_not_a_hang():
    with pytest.raises(FreshProcessError, match="exited with code 3 before it answered"):
        run_in_fresh_process(exit_abruptly, 3)


def test_stop_cancels_the_call_and_the_child_is_killed(tmp_path):
    pid_file = tmp_path / "pid"

    def stop() -> None:
        if pid_file.exists() and pid_file.read_text():
            raise KeyboardInterrupt("cancelled")

    with pytest.raises(KeyboardInterrupt):
        run_in_fresh_process(wait_forever, pid_file, stop=stop)
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


def test_a_child_outlives_a_killed_caller_by_at_most_a_few_seconds(tmp_path):
    pid_file = tmp_path / "pid"
    caller = subprocess.Popen([sys.executable, "-c", "import sys; from pathlib import Path; "
                               "from rlprune_core.fresh_process import run_in_fresh_process; "
                               "from tests.core.test_fresh_process import wait_forever; "
                               "run_in_fresh_process(wait_forever, Path(sys.argv[1]))", str(pid_file)], cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text()):
            assert time.monotonic() < deadline and caller.poll() is None, "the child never started"
            time.sleep(0.1)
    finally:
        caller.kill()  # no finally block of the caller's runs: only the child's own watch can end it
        caller.wait()
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _alive(child):
        assert time.monotonic() < deadline, "the child outlived its caller"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
