"""Benchmark the Prefect flows on the tiny four-stage DVC project of tests/conftest.py.

1. Pipeline flow with every stage up to date, against a local Prefect server (started here on
   127.0.0.1 and stopped afterwards) and in ephemeral mode, next to a plain no-op
   ``dvc repro`` measured in the same run. Target: <= 10 s against the server.
2. Sweep of 8 experiments whose stages burn ~2.5 s of CPU each, on a local Dask cluster
   with 1, 2, 2 and 1 workers (so that a drifting machine load cancels out), against the same
   server. Target: 2 workers <= 0.65 x the 1-worker wall time (experiments one after
   another). Next to each sweep, the machine's own reference: two CPU-bound processes at
   once over the same two one after another (0.50 on two idle cores).

Each measurement runs in a fresh child process (a new interpreter, as `gmg run` would), with
PREFECT_HOME in a temp folder. Run from the repository root:

    .venv/bin/python bench/bench_flows.py [--repeats 3] [--work 2.5]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from conftest import GIT_IDENTITY, QUIET_TOOLS, make_tiny_project  # noqa: E402


def child_pipeline(root: str) -> dict:
    from pipelines.pipeline import pipeline

    start = time.perf_counter()
    statuses = pipeline(root=root)
    return {"flow_s": time.perf_counter() - start, "statuses": statuses}


def child_sweep(root: str, workers: int, name: str, values: list[int]) -> dict:
    from pipelines.sweep import dask_task_runner, sweep

    start = time.perf_counter()
    outcomes = sweep.with_options(task_runner=dask_task_runner(workers=workers))(
        grid={"train.add": values}, root=root, name=name, retries=0)
    return {"flow_s": time.perf_counter() - start,
            "statuses": [o["status"] for o in outcomes]}


def run_child(env: dict[str, str], *args: str) -> dict:
    """Run this file as a child (`child ...`), return its JSON line and total wall time."""
    start, cpu = time.perf_counter(), _children_cpu()
    proc = subprocess.run([sys.executable, __file__, "child", *args], env=env, cwd=REPO,
                          capture_output=True, text=True)
    total = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = total
    result["cpu_s"] = _children_cpu() - cpu  # the child and every DVC/stage process under it
    return result


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(env: dict[str, str], port: int) -> subprocess.Popen:
    argv = [str(Path(sys.executable).parent / "prefect"), "server", "start",
            "--host", "127.0.0.1", "--port", str(port)]
    log = open(Path(env["PREFECT_HOME"]) / "server.log", "w")  # noqa: SIM115 - closed with proc
    server = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"prefect server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
                if r.status == 200:
                    return server
        except OSError:
            time.sleep(0.5)
    stop_server(server)
    raise RuntimeError("prefect server did not become healthy within 120 s")


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait()


def median_runs(env: dict[str, str], repeats: int, *args: str) -> tuple[float, float, float]:
    runs = [run_child(env, *args) for _ in range(repeats)]
    for r in runs:
        assert set(r["statuses"].values()) == {"skipped"}, r["statuses"]
    return tuple(statistics.median(r[key] for r in runs)
                 for key in ("flow_s", "process_s", "cpu_s"))


def bench(repeats: int, work: float) -> None:
    print(f"load average at start: {os.getloadavg()}")
    scratch = Path(tempfile.mkdtemp(prefix="bench-flows-"))
    env = {**os.environ, **QUIET_TOOLS, **GIT_IDENTITY,
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    os.environ.update(GIT_IDENTITY)
    noop_repo = make_tiny_project(scratch / "noop", reproduce=True)
    sweep_repo = make_tiny_project(scratch / "sweep", work=work, reproduce=True)
    ref_s = statistics.median(_timed_dvc_repro(noop_repo, env) for _ in range(repeats))

    server_env = {**env, "PREFECT_HOME": str(scratch / "prefect-server")}
    Path(server_env["PREFECT_HOME"]).mkdir()
    port = free_port()
    server = start_server(server_env, port)
    try:
        server_env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
        run_child(server_env, "pipeline", str(noop_repo))  # warm-up: registers the flow
        noop_server = median_runs(server_env, repeats, "pipeline", str(noop_repo))
        sweeps: dict[int, list[dict]] = {1: [], 2: []}
        machine = []
        # 1, 2, 2, 1 workers: drift in the machine's load cancels out of the ratio.
        for run, workers in enumerate((1, 2, 2, 1)):
            machine.append(machine_parallel_ratio())
            values = ",".join(str(100 * (run + 1) + i) for i in range(8))  # no run-cache hits
            out = run_child(server_env, "sweep", str(sweep_repo), str(workers), f"r{run}", values)
            assert out["statuses"] == ["succeeded"] * 8, out
            sweeps[workers].append(out)
    finally:
        stop_server(server)
    eph_env = {**env, "PREFECT_HOME": str(scratch / "prefect-ephemeral")}
    Path(eph_env["PREFECT_HOME"]).mkdir()
    run_child(eph_env, "pipeline", str(noop_repo))  # warm-up: creates the database
    noop_eph = median_runs(eph_env, repeats, "pipeline", str(noop_repo))
    _report(repeats, work, ref_s, noop_server, noop_eph, sweeps, statistics.mean(machine))
    print(f"load average at end: {os.getloadavg()}")
    from pipelines.workspace import remove_tree

    remove_tree(scratch)


def _timed_dvc_repro(repo: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=repo, env=env, check=True,
                   capture_output=True)
    return time.perf_counter() - start


def machine_parallel_ratio(iterations: int = 20_000_000) -> float:
    """Wall time of two CPU-bound processes at once over the same two one after another.

    0.5 on two idle cores; higher when other jobs share the cores. Measured next to each sweep
    as the reference for what two workers can gain at that moment.
    """
    argv = [sys.executable, "-c", f"x = 0\nfor i in range({iterations}): x += i"]
    start = time.perf_counter()
    for _ in range(2):
        subprocess.run(argv, check=True)
    sequential = time.perf_counter() - start
    start = time.perf_counter()
    procs = [subprocess.Popen(argv) for _ in range(2)]
    for proc in procs:
        proc.wait()
    return (time.perf_counter() - start) / sequential


def _report(repeats: int, work: float, ref_s: float, server: tuple, eph: tuple,
            sweeps: dict[int, list[dict]], machine_ratio: float) -> None:
    print(f"\nno-op pipeline (4 stages up to date), median of {repeats}:")
    print(f"  plain `dvc repro` (reference)  {ref_s:6.2f} s")
    for label, (flow_s, proc_s, cpu_s) in (("local server", server), ("ephemeral", eph)):
        print(f"  flow, {label:<24} {flow_s:6.2f} s flow, {proc_s:6.2f} s process, "
              f"{cpu_s:5.2f} s CPU  ({proc_s / ref_s:.1f}x reference)")
    print(f"  target <= 10 s against the server: {'met' if server[1] <= 10 else 'MISSED'}")
    wall = {w: sum(r["flow_s"] for r in runs) / len(runs) for w, runs in sweeps.items()}
    cpu = {w: sum(r["cpu_s"] for r in runs) / len(runs) for w, runs in sweeps.items()}
    ratio = wall[2] / wall[1]
    print(f"\nsweep of 8 experiments (3 stages x {work} s CPU rerun in each), local server, "
          f"runs with 1, 2, 2, 1 workers:")
    for workers in (1, 2):
        runs = ", ".join(f"{r['flow_s']:.1f}" for r in sweeps[workers])
        print(f"  {workers} worker(s)  mean {wall[workers]:6.1f} s ({runs}), "
              f"{cpu[workers]:.1f} s CPU")
    print(f"  ratio 2 workers / 1 worker: {ratio:.2f} (target <= 0.65: "
          f"{'met' if ratio <= 0.65 else 'MISSED'})")
    print(f"  reference: 2 CPU-bound processes at once / one after another on this machine "
          f"now: {machine_ratio:.2f} (0.50 on 2 idle cores)")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        kind, root, *rest = sys.argv[2:]
        if kind == "pipeline":
            result = child_pipeline(root)
        else:
            workers, name, values = rest
            result = child_sweep(root, int(workers), name, [int(v) for v in values.split(",")])
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=float, default=2.5, help="CPU seconds per stage")
    args = parser.parse_args()
    bench(args.repeats, args.work)


if __name__ == "__main__":
    main()
