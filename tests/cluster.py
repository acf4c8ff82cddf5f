"""Real infrastructure on one machine for the launcher tests (recipes: ../shared/INFRA.md).

``SlurmCluster``: a private Slurm cluster — munged with its own key and socket, slurmctld, and one
slurmd per node (several nodes on this host through Debian's MULTIPLE_SLURMD build, each with its
own port) — configured and logged under a private directory, on free ports; nothing under /etc
is touched. Clients and jobs find it through ``SLURM_CONF``.

``NetnsHosts``: "hosts" made of Linux network namespaces joined by a veth pair (private test
addresses 10.77.0.x/24 that exist only inside those namespaces: no route leads anywhere else).
Commands run on a host inside its own UTS and mount namespaces, with a private host name and a
bind-mounted /etc/hosts naming every host: torchrun's c10d rendezvous and gloo find a host's
address from its host name, which otherwise resolves to 127.0.0.1 in every namespace alike.

Both start their daemons and commands as our own child processes, so ``stop()`` ends each one
by its pid and reaps it; anything they spawned that outlived them (Slurm job steps, workers
inside a namespace) is found by pid — by our SLURM_CONF in its environment, or by
``ip netns pids`` — and ended too. Tests call ``stop()`` from fixture finalizers so that a
failing test still leaves nothing behind.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

SLURM_TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo", "scancel")
NETNS_TOOLS = ("ip", "unshare", "mount", "hostname")
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


def missing(tools: Sequence[str], what: str) -> Optional[str]:
    """Why these tests cannot run here (not root, or a tool missing), or None."""
    if os.geteuid() != 0:
        return f"{what} needs root (daemons, namespaces); run pytest as root as CI does"
    absent = [t for t in tools if shutil.which(t) is None]
    if absent:
        return f"{what} needs {', '.join(absent)}: apt-get install -y slurm-wlm munge iproute2 util-linux (as .ci/run does)"
    return None


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on this host (held open together while choosing)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _alive(pid: int) -> bool:
    """Running and not a zombie waiting for a late reaper (PID 1 here reaps ~1 s late)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def end_pids(pids: Sequence[int], grace: float = 5.0) -> None:
    """SIGTERM each pid, wait up to ``grace`` seconds, then SIGKILL those still running."""
    pids = [p for p in pids if p > 1 and p != os.getpid()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)
        pids = [p for p in pids if _alive(p)]
        if not pids:
            return


def end_children(procs: Sequence[subprocess.Popen], grace: float = 10.0) -> None:
    """Stop processes we started (newest first) by pid and reap them."""
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(grace)


def pids_with_env(marker: str) -> list[int]:
    """Processes whose environment holds ``marker`` (e.g. SLURM_CONF=<our conf>)."""
    needle = marker.encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            pass
    return found


def _wait_for(check, timeout: float, what: str, log: Optional[Path] = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s\n{tail}")


class SlurmCluster:
    """A private Slurm cluster with ``nodes`` (names) on this host; ``cpus`` CPUs each."""

    def __init__(self, nodes: Sequence[str] = ("n1",), cpus: Optional[int] = None) -> None:
        self.nodes = list(nodes)
        self.cpus = cpus or len(os.sched_getaffinity(0))  # nproc
        # munged refuses a socket in a directory that others cannot traverse, and pytest's
        # temporary directories are private (0700): a 0755 directory of our own under /tmp.
        self.base = Path(tempfile.mkdtemp(prefix="atjt-slurm-", dir="/tmp"))
        self.base.chmod(0o755)
        self.conf = self.base / "slurm.conf"
        self.procs: list[subprocess.Popen] = []
        self.jobs: list[str] = []
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> "SlurmCluster":
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        b = self.base
        for d in ("munge", "state", "spool", "log"):
            (b / d).mkdir(mode=0o755)
        for n in self.nodes:
            (b / "spool" / n).mkdir(mode=0o755)
        key = b / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.munge_socket = b / "munge" / "munge.socket"
        self._spawn(
            [
                "munged",
                "--foreground",
                "--force",
                f"--key-file={key}",
                f"--socket={self.munge_socket}",
                f"--pid-file={b / 'munge' / 'munged.pid'}",
                f"--log-file={b / 'log' / 'munged.log'}",
                f"--seed-file={b / 'munge' / 'munged.seed'}",
            ],
            b / "log" / "munged.out",
        )
        _wait_for(self.munge_socket.exists, 20, "munged", b / "log" / "munged.log")
        ctld_port, *node_ports = free_ports(1 + len(self.nodes))
        self.conf.write_text(self._slurm_conf(ctld_port, node_ports))
        self._spawn(["slurmctld", "-D", "-i"], b / "log" / "slurmctld.out")
        _wait_for(lambda: self.run("scontrol", "ping", check=False).returncode == 0, 30, "slurmctld", b / "log" / "slurmctld.log")
        for n in self.nodes:
            self._spawn(["slurmd", "-D", "-N", n], b / "log" / f"slurmd-{n}.out")
        _wait_for(self._nodes_idle, 30, "slurmd nodes", b / "log" / f"slurmd-{self.nodes[-1]}.log")

    def _slurm_conf(self, ctld_port: int, node_ports: list[int]) -> str:
        b = self.base
        lines = [
            "ClusterName=atjttest",
            "SlurmctldHost=localhost",
            f"SlurmctldPort={ctld_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={b / 'state'}",
            f"SlurmdSpoolDir={b / 'spool' / '%n'}",
            f"SlurmctldPidFile={b / 'slurmctld.pid'}",
            f"SlurmdPidFile={b / 'slurmd-%n.pid'}",
            f"SlurmctldLogFile={b / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={b / 'log' / 'slurmd-%n.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "MailProg=/bin/true",
            "ReturnToService=2",
            "SchedulerType=sched/backfill",
            "SlurmdTimeout=60",
            "MinJobAge=600",
            # Job ids (and so the multi-node script's rendezvous port, derived from the job id)
            # differ between clusters that other test runs may start on this machine.
            f"FirstJobId={random.randint(1000, 999_999)}",
        ]
        host = socket.gethostname()
        for n, port in zip(self.nodes, node_ports):
            # The node names do not resolve: Slurm reaches each slurmd at NodeAddr and its Port.
            lines.append(f"NodeName={n} NodeHostname={host} NodeAddr=127.0.0.1 Port={port} CPUs={self.cpus} State=UNKNOWN")
        lines.append(f"PartitionName=test Nodes={','.join(self.nodes)} Default=YES MaxTime=INFINITE State=UP")
        return "\n".join(lines) + "\n"

    def _spawn(self, cmd: list[str], out: Path) -> subprocess.Popen:
        with open(out, "ab") as f:
            proc = subprocess.Popen(cmd, env=self.env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        return proc

    def _nodes_idle(self) -> bool:
        out = self.run("sinfo", "-h", "-N", "-o", "%N %T", check=False).stdout.split()
        states = dict(zip(out[::2], out[1::2]))
        return all(states.get(n, "").startswith("idle") for n in self.nodes)

    def stop(self) -> None:
        """Cancel our jobs, stop the daemons by pid, end leftover job processes, remove files."""
        try:
            if self.jobs and any(p.poll() is None for p in self.procs):
                self.run("scancel", *self.jobs, check=False)
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline and any(self.state(j) not in FINAL_STATES | {"?"} for j in self.jobs):
                    time.sleep(0.3)
        finally:
            end_children(self.procs)
            # Job steps (slurmstepd and what it ran) carry our SLURM_CONF in their environment.
            end_pids(pids_with_env(f"SLURM_CONF={self.conf}"))
            shutil.rmtree(self.base, ignore_errors=True)

    def logs(self) -> str:
        """The daemons' logs (for assertion messages)."""
        parts = []
        for p in sorted((self.base / "log").glob("*")):
            parts.append(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}")
        return "\n".join(parts)

    # -- clients ----------------------------------------------------------------------------

    def run(self, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
        return proc

    def sbatch(self, script: Path, args: Sequence[str] = (), options: Sequence[str] = (), env: Optional[dict] = None, cwd: Optional[Path] = None) -> str:
        """Submit; returns the job id. ``env`` is the job's environment (sbatch exports it)."""
        job_env = dict(env if env is not None else os.environ, SLURM_CONF=str(self.conf))
        proc = subprocess.run(["sbatch", "--parsable", *options, str(script), *args], env=job_env, cwd=cwd, capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise RuntimeError(f"sbatch failed ({proc.returncode}): {proc.stderr}\n{self.logs()}")
        job = proc.stdout.strip().split(";")[0]
        self.jobs.append(job)
        return job

    def state(self, job: str) -> str:
        out = self.run("scontrol", "show", "job", "-o", job, check=False).stdout
        for field in out.split():
            if field.startswith("JobState="):
                return field.split("=", 1)[1]
        return "?"

    def job_info(self, job: str) -> dict:
        out = self.run("scontrol", "show", "job", "-o", job, check=False).stdout
        return dict(f.split("=", 1) for f in out.split() if "=" in f)

    def wait(self, job: str, timeout: float) -> str:
        """Wait for the job to end; returns its final state (cancels it on timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.state(job)
            if state in FINAL_STATES:
                return state
            time.sleep(0.5)
        self.run("scancel", job, check=False)
        raise TimeoutError(f"job {job} still {self.state(job)} after {timeout:.0f} s")


class NetnsHosts:
    """Two "hosts" in network namespaces joined by a veth pair: 10.77.0.1/24 and 10.77.0.2/24."""

    SUBNET = "10.77.0"

    def __init__(self, count: int = 2) -> None:
        if count != 2:
            raise ValueError("a veth pair joins exactly two namespaces")
        tag = f"atjt{os.getpid() % 100000}"
        self.names = [f"{tag}h{i + 1}" for i in range(count)]  # namespace = host name
        self.addrs = [f"{self.SUBNET}.{i + 1}" for i in range(count)]
        self.veths = [f"{tag}v{i + 1}" for i in range(count)]
        self.base = Path(tempfile.mkdtemp(prefix="atjt-netns-", dir="/tmp"))
        self.base.chmod(0o755)
        self.procs: list[subprocess.Popen] = []
        self.created: list[str] = []

    def start(self) -> "NetnsHosts":
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _ip(self, *args: str) -> None:
        proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")

    def _start(self) -> None:
        for ns in self.names:
            self._ip("netns", "add", ns)
            self.created.append(ns)
        # Created inside the first namespace, so the pair never appears on the host's network.
        self._ip("-n", self.names[0], "link", "add", self.veths[0], "type", "veth", "peer", "name", self.veths[1], "netns", self.names[1])
        for ns, veth, addr in zip(self.names, self.veths, self.addrs):
            self._ip("-n", ns, "addr", "add", f"{addr}/24", "dev", veth)
            self._ip("-n", ns, "link", "set", veth, "up")
            self._ip("-n", ns, "link", "set", "lo", "up")
        hosts = ["127.0.0.1 localhost"] + [f"{a} {n}" for a, n in zip(self.addrs, self.names)]
        (self.base / "hosts").write_text("\n".join(hosts) + "\n")
        # No name server: nothing is looked up outside the namespaces (there is no route anyway).
        (self.base / "resolv.conf").write_text("# private test network: no name server\noptions attempts:1 timeout:1\n")

    def command(self, host: int, cmd: Sequence[str]) -> list[str]:
        """``cmd`` run on host ``host`` (0-based): its namespace, host name and /etc/hosts."""
        setup = 'hostname "$1" && mount --bind "$2" /etc/hosts && mount --bind "$3" /etc/resolv.conf && shift 3 && exec "$@"'
        return [
            "ip",
            "netns",
            "exec",
            self.names[host],
            "unshare",
            "--uts",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            setup,
            "sh",
            self.names[host],
            str(self.base / "hosts"),
            str(self.base / "resolv.conf"),
            *cmd,
        ]

    def popen(self, host: int, cmd: Sequence[str], **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(self.command(host, cmd), start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        """End our commands and everything left in the namespaces (by pid), delete them."""
        end_children(self.procs)
        for ns in self.created:
            out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=30).stdout
            end_pids([int(p) for p in out.split() if p.isdigit()])
        for ns in self.created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.created.clear()
        shutil.rmtree(self.base, ignore_errors=True)
