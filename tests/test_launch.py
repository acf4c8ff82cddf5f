"""The launchers (launch/), proven on real components.

- ``launch/run_train.sh`` on one node (2 processes): the reference run of this module.
- Two "hosts" made of network namespaces (10.77.0.1 and 10.77.0.2, each with its own host name
  and /etc/hosts) run a 2-node x 1-process job through ``run_train.sh`` with a c10d rendezvous.
- A real local Slurm cluster (munged, slurmctld, slurmd) runs ``train_1node.sbatch`` (1 node x 2
  processes) and, with two slurmd on this host, ``train_multinode.sbatch`` (2 nodes x 1 process);
  a requeued job passes --resume.

Every multi-process run has world size 2, and the data path is world-size invariant (every draw
is keyed by the global row), so each equals the reference up to summation order. The Slurm and
namespace tests need root and the system packages that .ci/run installs; they skip with the
reason elsewhere. Their fixtures stop every daemon and process they started and delete the
namespaces, also when a test fails (tests/cluster.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cluster import NETNS_TOOLS, SLURM_TOOLS, NetnsHosts, SlurmCluster, missing

REPO = Path(__file__).resolve().parents[1]
RUN_TRAIN = REPO / "launch" / "run_train.sh"
SBATCH_1NODE = REPO / "launch" / "slurm" / "train_1node.sbatch"
SBATCH_MULTINODE = REPO / "launch" / "slurm" / "train_multinode.sbatch"

# test_train.py's SMALL settings with one epoch per phase, as a config file (the launchers take
# CONFIG). Dropout off (dropout across process counts is tests/test_train.py's). The sharding type is fixed:
# TorchRec's planner sees the topology (2 nodes x 1 process or 1 node x 2) and would choose
# differently per topology (data_parallel instead of row_wise for the small category table, a
# different optimiser path: ~1e-5 apart after 6 steps); with the same plan the runs agree.
SMALL_YAML = """\
dist:
  sharding: row_wise
data:
  path: {data}
  mode: paper
train:
  batch_size: 64
  epochs: 1
  log_every: 2
  lr: 0.000815
atjt:
  recognizer_batch_size: 32
  recognizer_lrs: [0.023, 0.025]
  recognizer_warmup_steps: 0
  recognizer:
    dropout: 0
eval:
  batch_users: 64
"""
TIMEOUT = 420  # seconds per run; a run takes ~40 s on an idle 2-core machine
LAUNCH_VARS = {
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "NPROC",
    "NNODES",
    "NODE_RANK",
    "RDZV_ENDPOINT",
    "RDZV_ID",
    "RDZV_CONF",
    "LOCAL_ADDR",
    "CONFIG",
    "RUN_DIR",
    "LOG_RANK",
    "LOG_DIR",
    "MAX_RESTARTS",
    "DRY_RUN",
    "ATJT_ROOT",
    "ATJT_VENV",
}


def launch_env(**extra: str) -> dict:
    """This interpreter's environment, minus launcher and Slurm settings from outside."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith(("SLURM_", "TORCHELASTIC_"))}
    env.update(
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        PYTHON=sys.executable,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    env.update(extra)
    return env


def train_records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind", "train") == "train" and "loss" in r]


def assert_same_run(run: Path, reference: Path) -> None:
    """Same steps, losses and test metrics as the reference, up to summation order."""
    r, ref = train_records(run), train_records(reference)
    assert len(r) == len(ref) > 0
    for a, b in zip(r, ref):
        assert a["step"] == b["step"]
        for key in ("loss", "loss_rec", "loss_aux", "w_clean", "w_noisy", "recognizer_auc"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), (a["step"], key)
    m, mref = (json.loads((d / "metrics.json").read_text()) for d in (run, reference))
    assert m["steps"] == mref["steps"] and m["users"] == mref["users"]
    for key in ("auc", "hr@5", "ndcg@5"):
        assert m[key] == pytest.approx(mref[key], rel=1e-5, abs=1e-6), key
        assert m["paper_compat"][key] == pytest.approx(mref["paper_compat"][key], rel=1e-5, abs=1e-6), key


def rank_logs(run_dir: Path, node: str) -> set[str]:
    """Local ranks whose output torchrun wrote under RUN_DIR/logs/<node>."""
    return {p.parent.name for p in (run_dir / "logs" / node).glob("*/attempt_0/*/stdout.log")}


@pytest.fixture(scope="module")
def small_config(tiny_dataset, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("launch") / "small.yaml"
    path.write_text(SMALL_YAML.format(data=tiny_dataset))
    return path


@pytest.fixture(scope="module")
def reference_run(small_config, tmp_path_factory):
    """``NPROC=2 CONFIG=... RUN_DIR=... launch/run_train.sh`` on this machine: (run dir, process)."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    env = launch_env(NPROC="2", CONFIG=str(small_config), RUN_DIR=str(run_dir))
    proc = subprocess.run([str(RUN_TRAIN)], cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    return run_dir, proc


# ---------------------------------------------------------------------------------------------
# run_train.sh and the sbatch scripts' command lines (no training)
# ---------------------------------------------------------------------------------------------


def _dry(*args: str, cwd: Path = REPO, script: Path = RUN_TRAIN, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script), *args], cwd=cwd, env=launch_env(DRY_RUN="1", **env), capture_output=True, text=True, timeout=60)


def test_run_train_usage_and_command_lines(tmp_path):
    usage = subprocess.run([str(RUN_TRAIN), "-h"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 0
    for var in ("NPROC", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "RDZV_ENDPOINT", "CONFIG", "RUN_DIR", "LOG_RANK", "MAX_RESTARTS"):
        assert var in usage.stdout

    one = _dry("--train.epochs=3", NPROC="2", CONFIG="c.yaml", RUN_DIR="/r", MAX_RESTARTS="1")
    assert one.returncode == 0, one.stderr
    assert "--standalone" in one.stdout and "--nproc-per-node=2" in one.stdout and "--max-restarts=1" in one.stdout
    assert "--local-ranks-filter=0" in one.stdout and "--tee=3" in one.stdout and "--log-dir=/r/logs/" in one.stdout
    assert one.stdout.split(" -m atjt_dist.train ")[1].split() == ["--config", "c.yaml", "--run-dir", "/r", "--train.epochs=3"]

    many = _dry(NNODES="2", NPROC="1", MASTER_ADDR="10.0.0.9", MASTER_PORT="1234", RDZV_ID="exp", LOG_RANK="all")
    assert many.returncode == 0, many.stderr
    for flag in ("--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=10.0.0.9:1234", "--rdzv-id=exp"):
        assert flag in many.stdout
    assert "--standalone" not in many.stdout and "--local-ranks-filter" not in many.stdout

    no_master = _dry(NNODES="2")
    assert no_master.returncode == 2 and "MASTER_ADDR" in no_master.stderr
    assert _dry(NPROC="two").returncode == 2

    # The sbatch script outside Slurm: relative paths from the submit directory, --resume only
    # when Slurm restarted (requeued) the job.
    first = _dry("cfg.yaml", "run", "--seed=1", cwd=tmp_path, script=SBATCH_1NODE, ATJT_ROOT=str(REPO), NPROC="2")
    assert first.returncode == 0, first.stderr
    assert f"--config {tmp_path}/cfg.yaml --run-dir {tmp_path}/run --seed=1" in first.stdout and "--resume" not in first.stdout
    again = _dry("-", "run", cwd=tmp_path, script=SBATCH_1NODE, ATJT_ROOT=str(REPO), SLURM_RESTART_COUNT="1")
    assert again.returncode == 0, again.stderr
    assert "--config" not in again.stdout and again.stdout.rstrip().endswith("--resume")
    lost = _dry("cfg.yaml", "run", cwd=tmp_path, script=SBATCH_1NODE)
    assert lost.returncode == 2 and "ATJT_ROOT" in lost.stderr


@pytest.mark.slow
@pytest.mark.multiprocess
def test_run_train_on_one_node(reference_run):
    """``NPROC=2 launch/run_train.sh`` trains, shows rank 0 and keeps every rank's output."""
    run_dir, proc = reference_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "| din atjt |" in proc.stdout
    assert "[default1]" not in proc.stdout + proc.stderr  # LOG_RANK=0: only local rank 0 shown
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["users"] == 120 and 0.0 <= metrics["auc"] <= 1.0
    (node,) = [p.name for p in (run_dir / "logs").iterdir()]
    assert rank_logs(run_dir, node) == {"0", "1"}


# ---------------------------------------------------------------------------------------------
# Two hosts in network namespaces
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def netns_hosts():
    reason = missing(NETNS_TOOLS, "the network-namespace hosts")
    if reason:
        pytest.skip(reason)
    hosts = NetnsHosts().start()
    yield hosts
    hosts.stop()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_hosts_in_network_namespaces(netns_hosts, reference_run, small_config, tmp_path):
    """Two namespaces, one ``run_train.sh`` each, c10d rendezvous on 10.77.0.1: the same run."""
    run_dir = tmp_path / "run"
    env = launch_env(
        NNODES="2",
        NPROC="1",
        MASTER_ADDR=netns_hosts.addrs[0],
        MASTER_PORT="29400",
        RDZV_ID="netns-test",
        CONFIG=str(small_config),
        RUN_DIR=str(run_dir),
    )
    outs = [tmp_path / f"host{i}.out" for i in range(2)]
    procs = []
    for i, out in enumerate(outs):
        with open(out, "w") as f:
            procs.append(netns_hosts.popen(i, [str(RUN_TRAIN)], env=env, cwd=tmp_path, stdout=f, stderr=subprocess.STDOUT))
    codes = [p.wait(TIMEOUT) for p in procs]
    logs = "\n".join(f"--- host {i}\n{o.read_text()[-4000:]}" for i, o in enumerate(outs))
    assert codes == [0, 0], logs
    assert "| din atjt |" in logs  # printed by global rank 0, on whichever host it landed
    for name in netns_hosts.names:  # each torchrun ran on its own host name
        assert rank_logs(run_dir, name) == {"0"}, logs
    assert_same_run(run_dir, reference_run[0])


# ---------------------------------------------------------------------------------------------
# A local Slurm cluster
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def slurm():
    """A factory: slurm(["n1", "n2"]) starts a private cluster with those nodes on this host."""
    reason = missing(SLURM_TOOLS, "the local Slurm cluster")
    if reason:
        pytest.skip(reason)
    clusters: list[SlurmCluster] = []

    def start(nodes):
        cluster = SlurmCluster(nodes)
        clusters.append(cluster)
        return cluster.start()

    yield start
    for cluster in clusters:
        cluster.stop()


def _run_job(cluster: SlurmCluster, script: Path, args: list[str], options: list[str], env: dict, cwd: Path):
    """Submit, wait; returns (job id, final state, scontrol record, job output)."""
    job = cluster.sbatch(script, args, [f"--output={cwd}/slurm-%j.out", *options], env=env, cwd=cwd)
    state = cluster.wait(job, TIMEOUT)
    output = (cwd / f"slurm-{job}.out").read_text()
    return job, state, cluster.job_info(job), output


@pytest.mark.slow
@pytest.mark.multiprocess
def test_slurm_one_node(slurm, reference_run, small_config, tmp_path):
    cluster = slurm(["n1"])
    env = launch_env(ATJT_ROOT=str(REPO), NPROC="2")
    # RUN_DIR relative: the script resolves it against the submit directory.
    job, state, info, output = _run_job(cluster, SBATCH_1NODE, [str(small_config), "run"], [f"--cpus-per-task={cluster.cpus}"], env, tmp_path)
    assert state == "COMPLETED" and info.get("ExitCode") == "0:0", output[-5000:] + cluster.logs()
    assert "| din atjt |" in output
    run_dir = tmp_path / "run"
    assert rank_logs(run_dir, "n1") == {"0", "1"}
    assert_same_run(run_dir, reference_run[0])


@pytest.mark.slow
@pytest.mark.multiprocess
def test_slurm_two_nodes(slurm, reference_run, small_config, tmp_path):
    cluster = slurm(["n1", "n2"])
    env = launch_env(ATJT_ROOT=str(REPO))
    job, state, info, output = _run_job(
        cluster, SBATCH_MULTINODE, [str(small_config), str(tmp_path / "run")], ["--nodes=2", f"--cpus-per-task={cluster.cpus}"], env, tmp_path
    )
    assert state == "COMPLETED" and info.get("ExitCode") == "0:0", output[-5000:] + cluster.logs()
    # n1 does not resolve: the script took the rendezvous address from Slurm's NodeAddr.
    assert f"2 nodes (n[1-2]) x 1 process(es), rendezvous 127.0.0.1:{20000 + int(job) % 20000}" in output
    assert "| din atjt |" in output
    run_dir = tmp_path / "run"
    assert rank_logs(run_dir, "n1") == rank_logs(run_dir, "n2") == {"0"}  # one torchrun per node
    assert_same_run(run_dir, reference_run[0])


@pytest.mark.slow
def test_slurm_requeued_job_resumes(slurm, small_config, tmp_path):
    """A requeued job (SLURM_RESTART_COUNT=1) passes --resume; its first run did not.

    DRY_RUN=1 makes run_train.sh print its torchrun command instead of training: this test is
    about the script's behaviour under Slurm's requeue, not the trainer's resume.
    """
    cluster = slurm(["n1"])
    env = launch_env(ATJT_ROOT=str(REPO), DRY_RUN="1")
    job, state, _, output = _run_job(cluster, SBATCH_1NODE, [str(small_config), "run"], [], env, tmp_path)
    assert state == "COMPLETED", output + cluster.logs()
    assert "atjt_dist.train" in output and "--resume" not in output
    cluster.run("scontrol", "requeue", job)
    cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")  # requeued jobs otherwise wait ~2 min
    state = cluster.wait(job, 120)
    info = cluster.job_info(job)
    output = (tmp_path / f"slurm-{job}.out").read_text()  # --open-mode=append: both attempts
    assert state == "COMPLETED" and info.get("Restarts") == "1", output + cluster.logs()
    first, second = [line for line in output.splitlines() if "atjt_dist.train" in line]
    assert "--resume" not in first and second.rstrip().endswith("--resume")
    assert "restart 1: resuming in" in output
