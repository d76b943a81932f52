"""A medfm federation deployed as hospitals run it: a real SuperLink and three SuperNodes (one per hospital,
each given only its own client file) on loopback, the Flower App in deploy/ started with ``flwr run``, and
one hospital's SuperNode killed mid-run. The commands are those of deploy/README.md.

Every process gets its own FLWR_HOME and an environment tag; SuperLink and SuperNodes start their workers
(SuperExec, flwr-serverapp, flwr-clientapp) in new sessions, so the tag in /proc/<pid>/environ is how the
test finds, kills and accounts for all of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from medfm.federated.config import FederateConfig, FedTaskConfig, StrategyConfig
from medfm.federated.job import prepare_run
from medfm.federated.partition import PartitionConfig

BIN = Path(sys.executable).parent  # flower-superlink, flower-supernode, flwr and the workers they spawn
pytestmark = [
    pytest.mark.multiprocess,
    pytest.mark.slow,
    pytest.mark.skipif(
        not (BIN / "flower-superlink").is_file(),
        reason=f"Flower's flower-superlink is not installed in {BIN}",
    ),
    pytest.mark.skipif(
        not Path("/proc/self/environ").is_file(), reason="finds processes through Linux's /proc"
    ),
]
REPO = Path(__file__).resolve().parents[2]  # the CLI runs here, as in the README: `flwr run deploy hospitals`
LINK = "hospitals"  # the CLI's name of the SuperLink connection; a folder of the same name would be read
# as a (legacy) app folder by the CLI, so it must not be "deploy"
TAG = "MEDFM_DEPLOY_TAG"
CLIENTS, KILLED = 3, 2  # three hospitals; the one with partition id 2 goes down
RUN_TIMEOUT = 240.0  # the run takes about 2 min on 2 cores, ~55 s of it waiting for the dead node


# ------------------------------------------------------------------ helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tagged(value: str, key: str = TAG) -> list[int]:
    """Live processes (not zombies) whose environment holds ``key=value``."""
    needle = f"{key}={value}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if needle in environ and state != "Z":
            found.append(int(proc.name))
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "(exited)"


def send(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 0.5) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"no {what} after {timeout:.0f} s")


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def read_rounds(output: Path) -> list[dict[str, Any]]:
    """The lines of the server's rounds.jsonl written so far (a line being written is skipped)."""
    path = output / "rounds.jsonl"
    rounds = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        with contextlib.suppress(json.JSONDecodeError):
            rounds.append(json.loads(line))
    return rounds


class Deployment:
    """A SuperLink and SuperNodes on loopback, started with the commands of deploy/README.md."""

    def __init__(self, root: Path):
        self.root, self.logs = root, root / "logs"
        self.logs.mkdir(parents=True)
        self.tag = uuid.uuid4().hex
        self.port = free_port()
        self.procs: dict[str, subprocess.Popen] = {}
        self.cli = self.env("cli")
        # The flwr CLI's connection to the SuperLink, named as in the README.
        connection = f'address = "127.0.0.1:{self.port}"\ninsecure = true\n'
        (root / "home" / "cli" / "config.toml").write_text(
            f'[superlink]\ndefault = "{LINK}"\n\n[superlink.{LINK}]\n{connection}'
        )

    def env(self, name: str) -> dict[str, str]:
        home = self.root / "home" / name
        home.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # SuperExec spawns the workers by name
            "FLWR_HOME": str(home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "PYTHONUNBUFFERED": "1",
            TAG: self.tag,
            f"{TAG}_PROC": f"{self.tag}/{name}",
        }
        env.pop("VIRTUAL_ENV", None)
        return env

    def start(self, name: str, *command: str) -> None:
        with (self.logs / f"{name}.log").open("w") as log:
            self.procs[name] = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=self.env(name), start_new_session=True
            )

    def flwr(self, *args: str, timeout: float = 120) -> dict[str, Any]:
        """A ``flwr`` CLI command's JSON answer (its exit code says little: a failed run exits 0)."""
        done = subprocess.run(
            [str(BIN / "flwr"), *args, "--format", "json"],
            env=self.cli,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        try:
            return json.loads(done.stdout)
        except json.JSONDecodeError:
            return {"success": False, "stdout": done.stdout, "stderr": tail(done.stderr, 20)}

    def start_superlink(self) -> None:
        self.start(
            "superlink",
            str(BIN / "flower-superlink"),
            "--insecure",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-runtime-dependency-installation",
        )

        def healthy() -> bool:
            if self.procs["superlink"].poll() is not None:
                raise RuntimeError(f"the SuperLink exited:\n{self.report()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as answer:
                    return answer.status == 200
            except OSError:
                return False

        wait_for(healthy, 60, "healthy SuperLink")

    def start_supernode(self, partition: int, data_path: Path) -> None:
        self.start(
            f"supernode-{partition}",
            str(BIN / "flower-supernode"),
            "--insecure",
            "--superlink",
            f"127.0.0.1:{self.port}",
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
            "--node-config",
            f"partition-id={partition} data-path='{data_path}'",
        )

    def online_nodes(self) -> list[int]:
        nodes = self.flwr("supernode", "ls", LINK).get("nodes", [])
        return [int(n["node-id"]) for n in nodes if n.get("status") == "online"]

    def submit(self, **run_config: str) -> int:
        overrides = " ".join(f"{key}='{value}'" for key, value in run_config.items())  # TOML literal strings
        answer = self.flwr("run", "deploy", LINK, "--run-config", overrides)
        assert answer.get("success") and "run-id" in answer, f"flwr run failed: {answer}\n{self.report()}"
        return int(answer["run-id"])

    def status(self, run: int) -> str:
        runs = self.flwr("ls", LINK, "--run-id", str(run)).get("runs", [])
        return str(runs[0]["status"]) if runs else ""

    def wait(self, check: Callable[[], Any], timeout: float, what: str, run: int | None = None) -> Any:
        """``wait_for``, failing with the logs (the ServerApp's when ``run`` is given)."""
        try:
            return wait_for(check, timeout, what, 0.25 if run is None else 1)
        except TimeoutError as error:
            status = f"; run status {self.status(run)!r}" if run is not None else ""
            raise AssertionError(f"{error}{status}\n{self.report(run)}") from None

    def wait_finished(self, run: int, timeout: float = RUN_TIMEOUT) -> str:
        return self.wait(
            lambda: (s := self.status(run)).startswith("finished") and s, timeout, "end of run", run
        )

    def kill(self, name: str) -> list[int]:
        """SIGKILL every process of one started process's tree (a hospital's machine going down)."""
        pids = tagged(f"{self.tag}/{name}", f"{TAG}_PROC")
        send(pids, signal.SIGKILL)
        self.procs[name].wait(timeout=10)
        return pids

    def server_log(self, run: int) -> str:
        """The run's log as ``flwr log`` prints it: what the ServerApp wrote (nothing else keeps it)."""
        try:
            shown = subprocess.run(
                [str(BIN / "flwr"), "log", str(run), LINK, "--show"],
                env=self.cli,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=60,
            )
            return shown.stdout + shown.stderr
        except subprocess.TimeoutExpired:
            return "(flwr log timed out)"

    def report(self, run: int | None = None) -> str:
        """The tail of the ServerApp's log and of every process log, for a failure message."""
        parts = [] if run is None else [f"--- flwr log {run} (ServerApp)\n{tail(self.server_log(run), 80)}"]
        for log in sorted(self.logs.glob("*.log")):
            parts.append(f"--- {log.name}\n{tail(log.read_text(errors='replace'))}")
        return "\n".join(parts)

    def close(self) -> list[int]:
        """Stop every tagged process: SIGTERM, a grace period, SIGKILL; return those still alive after it."""
        send(tagged(self.tag), signal.SIGTERM)
        try:
            wait_for(lambda: not tagged(self.tag), 30, "exit of all processes", 0.25)
        except TimeoutError:
            send(tagged(self.tag), signal.SIGKILL)
            time.sleep(1)
        for proc in self.procs.values():  # reap the children this process started
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        return tagged(self.tag)


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def federation(tmp_path_factory, data_root: Path) -> Path:
    """A prepared three-hospital federation of ICU stays (IID split), as ``medfm federate --prepare-only``."""
    config = FederateConfig(
        name="deploy",
        output=str(tmp_path_factory.mktemp("federation")),
        clients=CLIENTS,
        rounds=2,
        min_clients=2,
        round_timeout=120,
        tasks=[FedTaskConfig(name="icu_mortality", limit=300, partition=PartitionConfig(kind="iid"))],
        strategies=[StrategyConfig("fedavg")],
        baselines=[],
    )
    return prepare_run(config)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, federation: Path) -> Iterator[Deployment]:
    """A SuperLink and one SuperNode per hospital, each SuperNode given only its hospital's files (the
    hospital-down test kills one: tests needing all three must come before it)."""
    root = tmp_path_factory.mktemp("deployment")
    deployment = Deployment(root)
    try:
        deployment.start_superlink()
        for i in range(CLIENTS):
            hospital = root / f"hospital_{i}"
            hospital.mkdir()
            for suffix in (".safetensors", ".json"):
                shutil.copy(federation / "federation" / f"client_{i}{suffix}", hospital)
            deployment.start_supernode(i, hospital / f"client_{i}.safetensors")
        deployment.wait(lambda: len(deployment.online_nodes()) == CLIENTS, 90, f"{CLIENTS} SuperNodes online")
        yield deployment
    finally:
        left = {pid: command_line(pid) for pid in deployment.close()}
        assert not left, f"processes left after SIGKILL: {left}"


def run_config(federation: Path, output: Path, **changes: str) -> dict[str, str]:
    return {
        "config-file": str(federation / "config.yaml"),
        "strategy": "fedavg",
        "federation-dir": str(federation / "federation"),
        "output-dir": str(output),
        **changes,
    }


# ------------------------------------------------------------------ tests


def test_a_failing_server_app_shows_in_run_status_and_log(deployment: Deployment, federation: Path, tmp_path):
    """``flwr run`` succeeds whatever the ServerApp does: its failure is in ``flwr ls`` and ``flwr log``."""
    missing = tmp_path / "missing.yaml"
    run = deployment.submit(**run_config(federation, tmp_path / "out", **{"config-file": str(missing)}))
    status = deployment.wait_finished(run, timeout=120)
    assert status == "finished:failed", f"status {status!r}\n{deployment.report(run)}"
    log = deployment.server_log(run)
    assert "ConfigError" in log and str(missing) in log, f"the ServerApp's error is not in its log\n{log}"


def test_federation_survives_a_hospital_going_down(deployment: Deployment, federation: Path, tmp_path):
    """Round 0 evaluated, then hospital 2's SuperNode is SIGKILLed: the SuperLink answers its pending update
    with an error once its heartbeats stop (~55 s), the guard records the failure against that node, later
    rounds sample only the two live hospitals, and the run completes."""
    output = tmp_path / "out"
    run = deployment.submit(**run_config(federation, output))
    deployment.wait(
        lambda: any(r["round"] == 0 for r in read_rounds(output)), 120, "round 0 in rounds.jsonl", run
    )
    killed_pids = deployment.kill(f"supernode-{KILLED}")
    status = deployment.wait_finished(run)
    rounds = read_rounds(output)

    def why() -> str:
        return f"status {status!r}, killed pids {killed_pids}, rounds:\n{json.dumps(rounds, indent=1)}\n" + (
            deployment.report(run)
        )

    assert status == "finished:completed", why()
    assert [r["round"] for r in rounds] == [0, 1, 2], why()
    offline = [
        int(n["node-id"])
        for n in deployment.flwr("supernode", "ls", LINK).get("nodes", [])
        if n.get("status") != "online"
    ]
    assert len(offline) == 1, f"offline nodes {offline}; {why()}"
    lost = [e for r in rounds for e in r["events"] if e["event"] in ("failed", "no reply")]
    assert [e["node"] for e in lost] == offline, f"the lost update is not the killed node's; {why()}"
    living = {c["node"] for r in rounds for c in r["clients"]}
    assert offline[0] not in living, why()
    assert str(offline[0]) in deployment.server_log(run), f"the guard's warning is not in the log; {why()}"
    assert sorted(c["partition-id"] for c in rounds[-1]["clients"]) == [0, 1], why()
    best = json.loads((output / "best.json").read_text())
    assert best["round"] in (0, 1, 2), why()
    assert (output / "best.safetensors").is_file() and (output / "test_icu_mortality.npz").is_file(), why()
