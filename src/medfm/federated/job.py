"""``medfm federate``: prepare the federation's data, run every strategy and baseline, write the report.

The run folder ``<output>/<name>/`` holds ``config.yaml``, ``provenance.json``, ``metrics.jsonl``,
``federation/`` (client and server files, partition tables and figures), ``strategies/<label>/`` (each
federation's rounds, best model, test predictions, its wall time), ``baselines/`` and the report. A run
started again over the same folder reuses the prepared data when the data settings are unchanged, skips
strategies that finished and resumes one that stopped after its last saved round.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from medfm.config import config_to_dict
from medfm.errors import ConfigError
from medfm.federated.apps import make_client_app, make_server_app, saved_rounds
from medfm.federated.baselines import run_baselines
from medfm.federated.config import FederateConfig, StrategyConfig
from medfm.federated.data import prepare_federation
from medfm.federated.report import write_report
from medfm.federated.runtime import run_in_process, run_simulated
from medfm.log import get_logger
from medfm.runs import Run, fingerprint_path

log = get_logger("federated.job")


def data_key(config: FederateConfig) -> str:
    """What decides the prepared files: the tasks (with their partitions) and the number of clients."""
    settings = config_to_dict(config)
    chosen = {"tasks": settings["tasks"], "clients": settings["clients"]}
    return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:16]


def prepared(config: FederateConfig, folder: Path) -> dict[str, Any]:
    """The federation's files, prepared again only when the data settings changed."""
    key_file = folder / "data_key.txt"
    if (
        key_file.is_file()
        and key_file.read_text() == data_key(config)
        and (folder / "federation.json").is_file()
    ):
        log.info("reusing the prepared federation in %s", folder)
        return json.loads((folder / "federation.json").read_text())
    if folder.exists():
        shutil.rmtree(folder)
    info = prepare_federation(config, folder)
    key_file.write_text(data_key(config))
    return info


def run_strategy(config: FederateConfig, strategy: StrategyConfig, run_dir: Path) -> dict[str, Any]:
    """One strategy's federation in the configured runtime (resumed when it stopped part-way)."""
    run_dir = run_dir.resolve()  # the ServerApp takes absolute paths only
    output, federation = run_dir / "strategies" / strategy.folder, run_dir / "federation"
    done = output / "done.json"
    if done.is_file():
        log.info("%s finished before; kept", strategy.label)
        return json.loads(done.read_text())
    output.mkdir(parents=True, exist_ok=True)
    server = make_server_app(str(run_dir / "config.yaml"), strategy.label, str(federation), str(output))
    client = make_client_app(str(federation), inject_faults=True)
    log.info(
        "federating with %s (%s runtime, %d clients, %d rounds)",
        strategy.label,
        config.runtime,
        config.clients,
        config.rounds,
    )
    if config.runtime == "simulation":
        seconds = run_simulated(server, client, config.clients, cpus=torch.get_num_threads())
    else:
        seconds = run_in_process(server, client, config.clients)
    rounds = saved_rounds(output / "rounds")
    if not rounds or rounds[-1] < config.rounds:
        raise RuntimeError(
            f"the {strategy.label} federation stopped after round {rounds[-1] if rounds else 0} "
            f"of {config.rounds}; "
            f"see the log above (run again to resume)"
        )
    record = {
        "strategy": strategy.label,
        "seconds": round(seconds, 2),
        "seconds_per_round": round(seconds / config.rounds, 2),
    }
    done.write_text(json.dumps(record))
    return record


def prepare_run(config: FederateConfig) -> Path:
    """The run folder with its resolved config and prepared files, nothing trained (for deployments, whose
    clients never inject faults: an attack setting is refused)."""
    if config.attack.kind != "none":
        raise ConfigError(
            f"attack {config.attack.kind!r} runs only in medfm's simulation and in-process runtimes; a "
            "deployment's clients ignore it: prepare with attack.kind=none"
        )
    run_dir = Path(config.output) / config.name
    Run.create(run_dir, config, seeds={"federation": config.seed})
    prepared(config, run_dir / "federation")
    return run_dir


def run_federate(config: FederateConfig) -> Path:
    run_dir = Path(config.output) / config.name
    run = Run.create(run_dir, config, seeds={"federation": config.seed})
    start = time.perf_counter()
    info = prepared(config, run_dir / "federation")
    # What every model trained and was scored on: the prepared files' fingerprint.
    run.provenance["data"]["federation"] = fingerprint_path(run_dir / "federation")
    run.log(event="prepared", tasks=list(info["tasks"]), clients=info["clients"])
    timings = []
    for strategy in config.strategies:
        record = run_strategy(config, strategy, run_dir)
        run.log(event="federated", **record)
        timings.append(record)
    baselines = (
        run_baselines(config, run_dir / "federation", run_dir / "baselines") if config.baselines else []
    )
    for record in baselines:
        run.log(event="baseline", **record)
    summary = write_report(config, run_dir, timings, baselines)
    run.finish(wall_seconds_all=round(time.perf_counter() - start, 1), **summary)
    return run_dir
