"""Every ```python block of README.md runs as written, and so does its shell block that starts
two processes of one `jax.distributed` job on localhost.

Each runs in a fresh interpreter (a subprocess: the test session's jax settings do not leak in),
in a temporary folder, on the CPU, in the way its text says:

- a block of the reader's session (most): in order with the other such blocks, in one
  interpreter, as a reader pastes them one after the other;
- a block that calls `simulate_devices` (which must come before jax starts): in its own;
- a block that calls `jax.distributed.initialize(..., num_processes=N, ...)`: saved as a script
  and run as N processes `python SCRIPT I` at once (on a free port instead of the block's);
- the indented shell block that starts `isometry train` on every process with
  `--coordinator localhost:PORT`: with bash, as written (again on a free port).

A block is not run only with a first-line comment `# not run: WHY`; such blocks are listed here
and there may be at most two. The sizes in the README are small enough to run here.
"""

import os
import pathlib
import re
import socket
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
NOT_RUN = "# not run:"
MAX_NOT_RUN = 2
#: Of the blocks run, the most seconds one may take (a hang fails instead of blocking CI).
TIMEOUT = 600


def _blocks() -> list[tuple[str, str]]:
    """(the heading it is under, code) of every ```python block, in the README's order."""
    found = []
    for match in re.finditer(r"^```python\n(.*?)^```[ \t]*$", README, re.S | re.M):
        headings = re.findall(r"^#{2,4} (.+)$", README[:match.start()], re.M)
        found.append((headings[-1] if headings else "top", match.group(1)))
    return found


def _shell_blocks() -> list[str]:
    """The indented (4-space) shell blocks that start processes of one job on localhost."""
    blocks = re.findall(r"\n\n((?:    .*\n)+)", README)  # after a blank line, indented
    return [re.sub(r"^    ", "", b, flags=re.M) for b in blocks
            if "--coordinator" in b and "localhost:" in b]


BLOCKS = _blocks()
RUN = [(heading, code) for heading, code in BLOCKS if not code.startswith(NOT_RUN)]
OWN_INTERPRETER = [b for b in RUN if "simulate_devices(" in b[1]
                   and "jax.distributed.initialize(" not in b[1]]
DISTRIBUTED = [b for b in RUN if "jax.distributed.initialize(" in b[1]]
SESSION = [b for b in RUN if b not in OWN_INTERPRETER and b not in DISTRIBUTED]


def _ids(blocks):
    return [f"{heading}-{i}" for i, (heading, _) in enumerate(blocks)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _on_a_free_port(code: str) -> str:
    return re.sub(r"localhost:\d+", f"localhost:{_free_port()}", code)


def _env() -> dict:
    """The CPU, this checkout's package first, and its console script on PATH."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    return env


def _run_at_once(commands: list[list[str]], cwd) -> list[str]:
    """Starts the commands together (the processes of one job); their stdout, after asserting
    that each exited with 0."""
    procs = [subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for cmd in commands]
    try:
        logs = [p.communicate(timeout=TIMEOUT) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (out, err) in zip(procs, logs):
        assert p.returncode == 0, out[-2000:] + err[-4000:]
    return [out for out, _ in logs]


def test_the_readme_has_its_blocks_and_runs_all_but_the_listed_few():
    not_run = [(heading, code.splitlines()[0]) for heading, code in BLOCKS
               if code.startswith(NOT_RUN)]
    print(f"{len(BLOCKS)} python blocks, {len(not_run)} not run:", *not_run, sep="\n  ")
    assert len(not_run) <= MAX_NOT_RUN, not_run
    assert len(BLOCKS) >= 5 and SESSION and OWN_INTERPRETER and DISTRIBUTED
    assert len(_shell_blocks()) == 1
    assert len(SESSION) + len(OWN_INTERPRETER) + len(DISTRIBUTED) + len(not_run) == len(BLOCKS)


def test_the_session_blocks_run_in_order_in_one_interpreter(tmp_path):
    script = "\n".join(f"{code}\nprint('README block {i} ran', flush=True)"
                       for i, (_, code) in enumerate(SESSION))
    (out,) = _run_at_once([[sys.executable, "-c", script]], tmp_path)
    assert f"README block {len(SESSION) - 1} ran" in out


@pytest.mark.parametrize("block", OWN_INTERPRETER, ids=_ids(OWN_INTERPRETER))
def test_a_block_with_simulated_devices_runs_in_its_own_interpreter(block, tmp_path):
    _run_at_once([[sys.executable, "-c", block[1]]], tmp_path)


@pytest.mark.parametrize("block", DISTRIBUTED, ids=_ids(DISTRIBUTED))
def test_a_distributed_block_runs_as_its_processes(block, tmp_path):
    code = _on_a_free_port(block[1])
    processes = int(re.search(r"num_processes=(\d+)", code).group(1))
    script = tmp_path / "script.py"
    script.write_text(code)
    outs = _run_at_once([[sys.executable, str(script), str(i)] for i in range(processes)],
                        tmp_path)
    assert processes > 1 and len(outs) == processes
    printed = [[line for line in out.splitlines() if not line.startswith("[Gloo]")]
               for out in outs]  # (the collectives' library logs its connections to stdout)
    assert printed[0] and not any(printed[1:])  # process 0 alone prints


@pytest.mark.parametrize("block", _shell_blocks(), ids=lambda b: "localhost-job")
def test_the_shell_block_of_processes_on_localhost_runs(block, tmp_path):
    code = _on_a_free_port(block)
    _run_at_once([["bash", "-euo", "pipefail", "-c", code]], tmp_path)  # `wait` says 0 anyway:
    run_dir = tmp_path / re.search(r"--run-dir (\S+)", code).group(1)
    steps = int(re.search(r"--steps (\d+)", code).group(1))
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert f'"step": {steps},' in lines[-1], lines[-1][:200]  # the files say the job finished
    assert (run_dir / "checkpoint.npz").exists()
