"""A multi-node Ray cluster on one machine: a head and worker nodes, each its own raylet.

    sbs local-cluster up --node teacher:1 --node trainer:1 --node trainer:1 --node serve:1
    export RAY_ADDRESS=http://127.0.0.1:<dashboard port it prints> RAY_AUTH_MODE=disabled
    scripts/run_pipeline.sh ...                       # or ray job submit ... / sbs ... directly
    sbs local-cluster kill trainer-1                  # SIGKILL one node's raylet and its workers
    sbs local-cluster add trainer-1                   # bring a node of that role back
    sbs local-cluster down                            # stop exactly this cluster's processes

Each worker node gets its CPU count and one custom resource naming its role (`{"trainer": 1}`),
the resources the stage configs ask for on a real cluster (cluster/*.yaml), so placement
mistakes show here. Everything binds 127.0.0.1 with private ports and a private temp dir, and
the cluster is stopped through its own processes (found by that temp dir), never `ray stop`
(which would end every Ray process on the host). The tests use the same class
(tests/test_multinode.py); the state of a CLI cluster is kept in <temp dir>/sbs_cluster.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE = "sbs_cluster.json"
# The GCS checks each raylet every period; a node that fails `threshold` checks in a row is dead. Ray's
# defaults (3 s x 5) declare a SIGKILLed node dead ~15 s after the kill, this cluster's after ~5 s: a
# dead raylet refuses at once, while a live one must stay unanswering for 5 checks of up to 10 s each
# (health_check_timeout_ms) before it is dropped, far past what a loaded 2-core machine was seen to do.
HEALTH_CHECK = {"health_check_period_ms": 1000, "health_check_failure_threshold": 5}
DEFAULT_STATE_LINK = Path(tempfile.gettempdir()) / "sbs_local_cluster"  # the CLI's current cluster


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Node:
    name: str  # head, or <role>-<i>
    role: str
    cpus: int
    node_manager_port: int
    resources: dict[str, float] = field(default_factory=dict)


def ray_env() -> dict[str, str]:
    """The environment nodes (and the jobs they run) start with: this interpreter's venv first on
    PATH (jobs run `python`), auth off, one thread per process (workers own their threads)."""
    bin_dir = str(Path(sys.executable).parent)
    return dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", RAY_AUTH_MODE="disabled",
                RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
                MKL_NUM_THREADS=os.environ.get("MKL_NUM_THREADS", "1"))


class LocalCluster:
    """Start with `up()`; `kill(name)` / `add(role)` for failures; `down()` ends it all."""

    def __init__(self, temp_dir: str | None = None, head_cpus: int = 1):
        # short: Ray's unix sockets live under the temp dir and their paths are length-limited
        self.temp_dir = temp_dir or tempfile.mkdtemp(prefix="sbsray", dir="/tmp")
        self.head_cpus = head_cpus
        self.ray = str(Path(sys.executable).parent / "ray")
        self.gcs_port = self.dashboard_port = 0
        self.nodes: dict[str, Node] = {}

    # ---- addresses ---------------------------------------------------------------------------
    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    # ---- start / stop ------------------------------------------------------------------------
    def _start(self, args: list[str]) -> None:
        r = subprocess.run([self.ray, "start", *args], env=ray_env(), capture_output=True, text=True, timeout=180)
        if r.returncode:
            raise RuntimeError(f"ray start {' '.join(args[:2])} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")

    def _node_ports(self) -> tuple[int, list[str]]:
        nm, om, agent, agent_grpc, rt_agent, metrics = free_ports(6)
        return nm, ["--node-ip-address", "127.0.0.1", "--node-manager-port", str(nm), "--object-manager-port",
                    str(om), "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port",
                    str(agent_grpc), "--runtime-env-agent-port", str(rt_agent), "--metrics-export-port",
                    str(metrics), "--disable-usage-stats"]

    def up(self, workers: list[tuple[str, int]] = ()) -> "LocalCluster":
        """Head (dashboard for the Jobs API, `{"head": 1}`) plus one worker node per (role, cpus)."""
        self.gcs_port, self.dashboard_port, client = free_ports(3)
        nm, common = self._node_ports()
        self._start(["--head", "--port", str(self.gcs_port), "--temp-dir", self.temp_dir, "--num-cpus",
                     str(self.head_cpus), "--resources", json.dumps({"head": 1}), "--include-dashboard", "true",
                     "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
                     "--ray-client-server-port", str(client), "--system-config", json.dumps(HEALTH_CHECK), *common])
        self.nodes["head"] = Node("head", "head", self.head_cpus, nm, {"head": 1})
        # one at a time: 3 `ray start`s at once here timed out in the raylets' 30-s registration
        # (the retry in add() then costs more than the overlap saves)
        for role, cpus in workers:
            self.add(role, cpus)
        self.save()
        return self

    def add(self, role: str, cpus: int = 1, name: str | None = None, attempts: int = 3) -> Node:
        """Start one worker node with `{role: 1}` (named <role>-<i>, or `name` to bring one back).

        `ray start` gives a raylet 30 s to register with the GCS (fixed in Ray 2.60's node.py); on a
        loaded 2-core machine that was seen to run out (CI: "The current node timed out during
        startup"). Such a start is cleaned up (its processes, by its node-manager port) and retried
        with fresh ports, up to `attempts` times."""
        if name is None:
            i = sum(n.role == role for n in self.nodes.values())
            name = f"{role}-{i}"
        res = {role: 1.0}
        for attempt in range(1, attempts + 1):
            nm, common = self._node_ports()
            try:
                # one log monitor per host (Ray's own advice): the nodes share the head's session dir,
                # so the head's monitor already tails every node's logs; one per node sent each line
                # to the drivers once per node and cost ~3% of a core each
                self._start(["--address", self.gcs_address, "--num-cpus", str(cpus), "--resources", json.dumps(res),
                             "--include-log-monitor", "false", *common])
                break
            except RuntimeError as e:
                self._kill_node_procs(nm)
                if attempt == attempts:
                    raise RuntimeError(f"node {name}: {attempts} starts failed; the last: {e}") from None
                last = (str(e).strip().splitlines() or [""])[-1][:200]
                print(f"sbs local-cluster: node {name} did not start (attempt {attempt}/{attempts}: {last}), retrying",
                      file=sys.stderr)
        self.nodes[name] = Node(name, role, cpus, nm, res)
        self.save()
        return self.nodes[name]

    def _procs(self, match: str):
        import psutil

        for p in psutil.process_iter(["cmdline"]):
            try:
                if any(match in a for a in (p.info["cmdline"] or [])):
                    yield p
            except psutil.Error:
                continue

    def _kill_node_procs(self, node_manager_port: int) -> list[int]:
        """SIGKILL the raylet of this cluster listening on `node_manager_port` and everything under it."""
        import psutil

        procs: dict[int, psutil.Process] = {}
        for p in self._procs(f"--node_manager_port={node_manager_port}"):
            try:
                if self.temp_dir in " ".join(p.cmdline()):
                    procs[p.pid] = p
                    procs.update({c.pid: c for c in p.children(recursive=True)})
            except psutil.Error:
                continue
        for p in procs.values():
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        psutil.wait_procs(list(procs.values()), timeout=10)
        return sorted(procs)

    def kill(self, name: str) -> list[int]:
        """SIGKILL node `name`'s raylet and everything under it (its workers and agents): a node
        lost without warning. The head declares it dead after HEALTH_CHECK's failed checks (~5 s)."""
        node = self.nodes.pop(name)
        pids = self._kill_node_procs(node.node_manager_port)
        self.save()
        return pids

    def down(self) -> list[int]:
        """End exactly this cluster's processes (and their children); returns their pids."""
        import psutil

        procs: dict[int, psutil.Process] = {}
        # the head's Ray client server names no temp dir and outlives its parent: found by the GCS
        # address it serves (`--address=<node ip>:<gcs port>`)
        gcs = f":{self.gcs_port}"
        clients = [p for p in self._procs("--address=") if self.gcs_port
                   and any(a.startswith("--address=") and a.endswith(gcs) for a in p.info["cmdline"] or [])]
        for p in [*self._procs(self.temp_dir), *clients]:
            procs[p.pid] = p
            try:
                procs.update({c.pid: c for c in p.children(recursive=True)})
            except psutil.Error:
                pass
        for p in procs.values():
            try:
                p.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(list(procs.values()), timeout=5)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=5)
        self.nodes.clear()
        return sorted(procs)

    def wait_nodes(self, alive: int, timeout_s: float = 90.0) -> float:
        """Block until the head counts `alive` live nodes; returns the seconds it took."""
        t0 = time.time()
        while time.time() - t0 < timeout_s:
            r = subprocess.run([sys.executable, "-c", _COUNT_ALIVE, self.gcs_address], env=ray_env(),
                               capture_output=True, text=True, timeout=60)
            if r.returncode == 0 and r.stdout.strip() == str(alive):
                return time.time() - t0
            time.sleep(1.0)
        raise TimeoutError(f"the head did not count {alive} live nodes within {timeout_s:.0f} s")

    # ---- CLI state ---------------------------------------------------------------------------
    def save(self) -> None:
        state = {"temp_dir": self.temp_dir, "head_cpus": self.head_cpus, "gcs_port": self.gcs_port,
                 "dashboard_port": self.dashboard_port, "nodes": [asdict(n) for n in self.nodes.values()]}
        Path(self.temp_dir, STATE).write_text(json.dumps(state, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, temp_dir: str) -> "LocalCluster":
        p = Path(temp_dir, STATE)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no sbs local cluster there (start one with `sbs local-cluster up`)")
        s = json.loads(p.read_text(encoding="utf-8"))
        c = cls(s["temp_dir"], s["head_cpus"])
        c.gcs_port, c.dashboard_port = s["gcs_port"], s["dashboard_port"]
        c.nodes = {n["name"]: Node(**n) for n in s["nodes"]}
        return c


# How many nodes the head counts alive, asked from a fresh driver (the caller may own another Ray).
_COUNT_ALIVE = ("import sys, ray; ray.init(address=sys.argv[1], log_to_driver=False); "
                "print(sum(n['Alive'] for n in ray.nodes()))")


def _parse_node(spec: str) -> tuple[str, int]:
    role, _, cpus = spec.partition(":")
    if not role or not role.replace("_", "").isalnum() or (cpus and not cpus.isdigit()):
        raise argparse.ArgumentTypeError(f"--node {spec!r}: expected ROLE[:CPUS], e.g. trainer:1")
    return role, int(cpus or 1)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["up", "down", "kill", "add", "status"])
    p.add_argument("name", nargs="?", help="kill: the node (e.g. trainer-1); add: a role or a killed node's name")
    p.add_argument("--node", action="append", type=_parse_node, default=[],
                   help="up: one worker node ROLE[:CPUS] (repeatable), e.g. --node teacher:1 --node trainer:1")
    p.add_argument("--head-cpus", type=int, default=1, help="up: CPUs of the head node (drivers of the jobs)")
    p.add_argument("--temp-dir", default=None, help="the cluster's temp dir (default: the last one started)")


def run(args: argparse.Namespace) -> int:
    link = DEFAULT_STATE_LINK
    if args.action == "up":
        c = LocalCluster(args.temp_dir, args.head_cpus).up(args.node)
        link.unlink(missing_ok=True)
        link.symlink_to(c.temp_dir)
        print(json.dumps({"RAY_ADDRESS": c.dashboard_url, "gcs": c.gcs_address, "temp_dir": c.temp_dir,
                          "nodes": {n.name: n.resources | {"CPU": n.cpus} for n in c.nodes.values()}}))
        return 0
    temp_dir = args.temp_dir or (os.path.realpath(link) if link.exists() else None)
    if not temp_dir:
        print("sbs local-cluster: no cluster started here (sbs local-cluster up ...)", file=sys.stderr)
        return 2
    c = LocalCluster.load(temp_dir)
    if args.action == "down":
        print(json.dumps({"stopped_pids": c.down()}))
        shutil.rmtree(temp_dir, ignore_errors=True)
        link.unlink(missing_ok=True)
    elif args.action == "kill":
        if args.name not in c.nodes or args.name == "head":
            print(f"sbs local-cluster kill: {args.name!r} is not a worker node; nodes: {sorted(c.nodes)}",
                  file=sys.stderr)
            return 2
        print(json.dumps({"killed": args.name, "pids": c.kill(args.name)}))
    elif args.action == "add":
        if not args.name:
            print("sbs local-cluster add: give a role (trainer) or a killed node's name (trainer-1)", file=sys.stderr)
            return 2
        role = args.name.rsplit("-", 1)[0] if args.name[-1].isdigit() else args.name
        n = c.add(role, name=args.name if args.name != role else None)
        print(json.dumps(asdict(n)))
    else:
        print(json.dumps({"RAY_ADDRESS": c.dashboard_url, "nodes": [asdict(n) for n in c.nodes.values()]}))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="sbs local-cluster")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
