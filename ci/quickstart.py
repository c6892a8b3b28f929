"""`make quickstart-check`: the README's quick start, pasted as a new user would, in fresh clones.

For each way uv can be found, a fresh ``git clone`` of this checkout runs ``make serve PORT=…`` and then the
bash block of "Command line and Python" exactly as the README writes it, except that its ``export`` line is
the one ``serve`` printed (as the README says to paste):

- no uv on the PATH: the Makefile installs its pinned uv into ``.tools/``; the whole block runs, the digits
  job to its end, and the downloaded files are checked;
- uv on the PATH behind a shim script (how pyenv, asdf and mise install tools): the block's commands up to
  the submission run verbatim, then ``jobs list`` shows the job and it is cancelled, since the job itself
  does not depend on how uv was found.

Needs only Python's standard library, git, make and access to PyPI (or uv's cache); prints one line per step
and how long the whole took, and exits non-zero at the first step that fails.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVE_READY_S = 900  # the first `make serve` of a clone installs uv and builds .venv
JOB_S = 900
EXPORT = re.compile(r"command line: (export RLPRUNE_URL=\S+ RLPRUNE_API_KEY=\S+)")
BEGAN = time.monotonic()


def log(message: str) -> None:
    print(f"[quickstart {time.monotonic() - BEGAN:5.0f}s] {message}", flush=True)


def readme_block(readme: Path) -> list[str]:
    """The command lines of the first bash block after the "Command line and Python" heading."""
    text = readme.read_text()
    section = text[text.index("### Command line and Python"):]
    block = section[section.index("```bash\n") + len("```bash\n"):]
    return [line for line in block[:block.index("```")].splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def path_without_uv() -> str:
    """PATH minus every folder that holds a ``uv``."""
    return os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep)
                           if d and not os.access(Path(d, "uv"), os.X_OK))


def clean_environment(path: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RLPRUNE_", "UV_", "VIRTUAL_ENV"))}
    return {**env, "PATH": path}


class Serve:
    """``make serve PORT=…`` in a clone, in its own process group, until the export line appears."""

    def __init__(self, clone: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.output: list[str] = []
        self.process = subprocess.Popen(["make", "serve", f"PORT={self.port}"], cwd=clone, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True)

    def export_line(self) -> str:
        deadline = time.monotonic() + SERVE_READY_S
        assert self.process.stdout is not None
        for line in self.process.stdout:  # a server that dies ends the loop; a silent one is caught below
            self.output.append(line.rstrip())
            if found := EXPORT.search(line):
                return found.group(1).replace("0.0.0.0", "127.0.0.1")
            if time.monotonic() > deadline:
                break
        raise SystemExit("quickstart: make serve printed no export line:\n" + "\n".join(self.output[-30:]))

    def stop(self) -> None:
        """Ctrl-C, as the README says, then a kill if it lingers."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def bash(script: str, clone: Path, env: dict[str, str], timeout: float) -> str:
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=clone, env=env, text=True,
                          capture_output=True, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"quickstart: the README's commands failed ({done.returncode}):\n{script}\n"
                         f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def pasted(lines: list[str], export: str) -> str:
    """The block as a user pastes it: the export line replaced by the one serve printed."""
    return "\n".join(export if line.startswith("export RLPRUNE_URL=") else line for line in lines)


def run_whole_block(clone: Path, env: dict[str, str], lines: list[str]) -> None:
    serve = Serve(clone, env)
    try:
        script = pasted(lines, serve.export_line())
        log(f"make serve is up on port {serve.port}; running the README's block")
        began = time.monotonic()
        output = bash(script, clone, env, JOB_S)
        log(f"the block ran in {time.monotonic() - began:.0f} s; its last line: {output.strip().splitlines()[-1]}")
    finally:
        serve.stop()
    files = sorted(p.name for p in (clone / "out").iterdir())
    if not {"model.safetensors", "report.json"} <= set(files):
        raise SystemExit(f"quickstart: out/ holds {files}, not the job's artifacts")
    log(f"out/ holds {', '.join(files)}")


def run_up_to_submission(clone: Path, env: dict[str, str], lines: list[str]) -> None:
    submit = next(i for i, line in enumerate(lines) if "jobs submit" in line)
    serve = Serve(clone, env)
    try:
        script = pasted(lines[:submit + 1], serve.export_line())
        script += '\n.venv/bin/rlprune jobs list | grep -q "$JOB"\n.venv/bin/rlprune jobs cancel "$JOB" >/dev/null'
        log(f"make serve is up on port {serve.port}; submitting as the README does")
        bash(script, clone, env, 120)
        log("the job was submitted, listed and cancelled")
    finally:
        serve.stop()


def main() -> None:
    lines = readme_block(REPO / "README.md")
    root = Path(tempfile.mkdtemp(prefix="rlprune-quickstart-"))
    try:
        plain = root / "without-uv"
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(plain)], check=True)
        log("fresh clone, no uv on the PATH")
        run_whole_block(plain, clean_environment(path_without_uv()), lines)

        shims = root / "shims"
        shims.mkdir()
        shim = shims / "uv"  # a script, as version managers install it, calling a real uv elsewhere
        shim.write_text(f'#!/usr/bin/env bash\nexec "{plain / ".tools/bin/uv"}" "$@"\n')
        shim.chmod(0o755)
        shimmed = root / "with-uv"
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(shimmed)], check=True)
        log("fresh clone, uv on the PATH behind a shim script")
        run_up_to_submission(shimmed, clean_environment(f"{shims}{os.pathsep}{path_without_uv()}"), lines)
        if (shimmed / ".tools").exists():
            raise SystemExit("quickstart: with uv on the PATH, make still installed its own into .tools/")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    log("the quick start works as written")


if __name__ == "__main__":
    sys.exit(main())
