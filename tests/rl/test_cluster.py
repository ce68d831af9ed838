"""The quiet local Ray start: every port Ray opens is on 127.0.0.1, the node reports 127.0.0.1 (so the trainer-rank
and weight-sync rendezvous bind there too), no auth token lands in the home directory, and the loopback switch is
put back so this process can still join a real cluster afterwards."""
import contextlib
import functools
import ipaddress
import os
import shutil
import time

import psutil
import pytest

from rl.cluster import ClusterConfig, gloo_interface, init_ray, node_ip


def _loopback(ip: str) -> bool:
    return ipaddress.ip_address(ip.removeprefix("::ffff:")).is_loopback


@pytest.fixture()
def fresh_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


def test_local_ray_listens_on_loopback_only(fresh_home):
    import ray
    from ray._private import ray_constants

    if ray.is_initialized():
        ray.shutdown()
    flag = ray_constants.ENABLE_RAY_CLUSTER
    before = {p.pid for p in psutil.Process().children(recursive=True)}  # what is not this Ray's
    assert init_ray(ClusterConfig())
    try:
        @ray.remote(num_cpus=0)
        def where():
            return node_ip()

        assert ray.get(where.remote()) == "127.0.0.1"  # a worker process is up and sees the loopback node too
        assert node_ip() == "127.0.0.1"
        assert [n["NodeManagerAddress"] for n in ray.nodes()] == ["127.0.0.1"]
        procs = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
        names = {p.name() for p in procs}
        assert {"gcs_server", "raylet"} <= names, names
        listening = [(p.name(), c.laddr.ip, c.laddr.port) for p in procs for c in p.net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN]
        assert any(n == "gcs_server" for n, _, _ in listening), listening
        assert all(_loopback(ip) for _, ip, _ in listening), [x for x in listening if not _loopback(x[1])]
        assert not any(fresh_home.rglob("*")), list(fresh_home.rglob("*"))
        # The switch is put back in this process: a later ray.init(address=...) would find the machine's address.
        assert ray_constants.ENABLE_RAY_CLUSTER == flag
        assert ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR not in os.environ
    finally:
        ray.shutdown()


def test_gloo_interface_names_the_interface_holding_the_address():
    assert gloo_interface("127.0.0.1") in psutil.net_if_addrs()
    assert gloo_interface("203.0.113.254") is None  # TEST-NET-3: on no interface here


@pytest.mark.slow
def test_rl_train_joins_a_running_cluster(tmp_path):
    """`cluster.address=host:port` joins a cluster started with `ray start --head` instead of starting Ray: the
    rollout workers run on that cluster (their logs are in its session), and the job only disconnects from it."""
    import signal
    import socket
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    import ray

    from rl.cli import launch
    from tests.trainers.grpo.test_async import RAY

    if ray.is_initialized():
        ray.shutdown()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = Path(tempfile.mkdtemp(prefix="orh-"))  # short: Ray's socket paths must fit in 107 bytes
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    ray_cli = str(Path(sys.executable).with_name("ray"))
    head = subprocess.Popen([ray_cli, "start", "--head", f"--port={port}", "--num-cpus=2", f"--temp-dir={temp}",
                             "--include-dashboard=false", "--disable-usage-stats", "--block"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:  # until the head's GCS accepts connections (pytest-timeout bounds a head that never comes up)
            assert head.poll() is None, "ray start --head exited"
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        summary = launch("configs/grpo_tiny.yaml", [*RAY, f"cluster.address=127.0.0.1:{port}", "max_steps=2",
                                                    f"run_dir={tmp_path / 'run'}"])
        assert summary["rollout_ledger"]["draws"] == summary["rollout_ledger"]["consumed"] == 2 * 4  # prompts
        assert not ray.is_initialized() and head.poll() is None  # disconnected; the cluster is still up
        logs = (temp / "session_latest" / "logs").glob("worker-*.out")
        assert sum(":actor_name:RolloutWorker" in p.read_text() for p in logs) == 2
    finally:
        procs = [head, *psutil.Process(head.pid).children(recursive=True)] if head.poll() is None else []
        for p in procs:
            with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
                p.send_signal(signal.SIGKILL)
        head.wait()
        shutil.rmtree(temp, ignore_errors=True)


def test_thread_plan_gives_waiting_cores_to_whoever_runs(monkeypatch):
    """Synchronous (no overlap): the workers share every core, since the trainer waits while they generate.
    Overlapped: each worker keeps its reserved CPUs and the in-process trainer takes the rest. A joined cluster,
    pinning or an explicit count keep the reserved/explicit number."""
    from rl.cluster import thread_plan

    Ray = functools.partial(ClusterConfig, backend="ray")
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert thread_plan(Ray(), overlap=False) == (None, 8)
    assert thread_plan(Ray(rollout_workers=3), overlap=False) == (None, 2)
    assert thread_plan(Ray(), overlap=True) == (7, 1)
    assert thread_plan(Ray(rollout_workers=2, cpus_per_worker=2), overlap=True) == (4, 2)
    assert thread_plan(Ray(rollout_workers=8, cpus_per_worker=2), overlap=True) == (1, 2)
    assert thread_plan(Ray(trainer_ranks=2), overlap=True) == (None, 1)  # ranks have their own threads
    assert thread_plan(Ray(address="auto"), overlap=False) == (None, 1)
    assert thread_plan(Ray(pin_cpus=True), overlap=False) == (None, 1)
    assert thread_plan(Ray(worker_threads=3), overlap=False) == (None, 3)
    assert thread_plan(ClusterConfig(backend="local"), overlap=False) == (None, 1)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's thread budget is the machine's
    assert thread_plan(Ray(), overlap=False) == (None, 2)
    assert thread_plan(Ray(), overlap=True) == (1, 1)
    with pytest.raises(ValueError, match="worker_threads=0"):
        ClusterConfig(worker_threads=0)


@pytest.mark.parametrize("overrides,backend", [
    ([], "local"),  # the default recipe: synchronous, one worker, one rank, HF
    (["max_staleness=1"], "ray"), (["cluster.rollout_workers=2"], "ray"), (["rollout.engine=vllm"], "ray"),
    (["cluster.address=auto"], "ray"), (["cluster.gpus_per_worker=1"], "ray"), (["cluster.backend=ray"], "ray"),
    (["cluster.backend=local", "max_staleness=1"], "local"),
])
def test_backend_auto_runs_in_process_only_where_that_is_equivalent(overrides, backend):
    from rl.config import load_config

    assert load_config("configs/grpo_tiny.yaml", overrides).cluster.backend == backend
    if not any(o.startswith("rollout.") for o in overrides):  # agent jobs have no engine choice (HF)
        assert load_config("configs/archer_twenty_questions.yaml", overrides).cluster.backend == backend
