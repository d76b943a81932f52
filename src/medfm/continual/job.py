"""``medfm continual``: prepare the stream once, run every strategy over it, write the report.

The run folder (``output``, default ``runs/continual/<name>``) holds ``config.yaml``, ``provenance.json``,
``metrics.jsonl``, ``stream/`` (the preprocessed experiences, safetensors + JSON), ``strategies/<label>/``
(each strategy's training log, result matrices, test predictions and final model) and the report. Started
again over the same folder, it reuses the stream when the stream settings are unchanged and skips
strategies that finished with the same settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import traceback
from concurrent.futures import as_completed
from pathlib import Path
from typing import Any

from medfm.config import config_to_dict
from medfm.continual.config import ContinualConfig, slug
from medfm.continual.learner import learn, start_worker
from medfm.continual.report import write_report
from medfm.continual.stream import Stream, build_stream, load_stream, save_stream
from medfm.errors import MedfmError
from medfm.executors import make_executor
from medfm.log import get_logger, progress
from medfm.runs import Run

log = get_logger("continual.job")

STREAM_KEYS = ("scenario", "encoder", "image_size", "signal_length", "experiences")


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def stream_key(config: ContinualConfig) -> str:
    settings = config_to_dict(config)
    return digest({key: settings[key] for key in STREAM_KEYS})


def strategy_key(config: ContinualConfig, index: int) -> str:
    """What decides a strategy's result: the stream, its own settings, training, metric and seed."""
    settings = config_to_dict(config)
    chosen = {key: settings[key] for key in ("train", "metric", "seed", "signal_patch")}
    return digest({"stream": stream_key(config), "strategy": settings["strategies"][index], **chosen})


def prepared_stream(config: ContinualConfig, folder: Path) -> Stream:
    key_file = folder / "stream_key.txt"
    if (
        key_file.is_file()
        and key_file.read_text() == stream_key(config)
        and (folder / "stream.json").is_file()
    ):
        log.info("reusing the prepared stream in %s", folder)
        return load_stream(folder)
    stream = build_stream(config)
    save_stream(stream, folder)
    key_file.write_text(stream_key(config))
    return stream


def finished(output: Path, key: str) -> dict[str, Any] | None:
    path = output / "result.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    return result if result.get("key") == key else None


def run_continual(config: ContinualConfig) -> Path:
    config.check()
    folder = Path(config.folder)
    data = {}
    if os.path.isdir(config.encoder):
        data["trunk"] = config.encoder
    run = Run.create(folder, config, seeds={"seed": config.seed}, data=data)
    stream = prepared_stream(config, folder / "stream")
    run.log(event="stream", experiences=stream.names, train_examples=stream.train_examples)
    outputs = [folder / "strategies" / slug(s.title) for s in config.strategies]
    results: dict[int, dict[str, Any]] = {}
    pending = []
    for index, output in enumerate(outputs):
        done = finished(output, strategy_key(config, index))
        if done is not None:
            log.info("strategy %s finished earlier; reusing its result", config.strategies[index].title)
            results[index] = done
        else:
            pending.append(index)
    workers = min(config.workers, len(pending))
    threads = max(1, (os.cpu_count() or 1) // workers) if workers else 0
    failures: dict[str, str] = {}
    with make_executor(workers, start_worker if workers else None, (threads,)) as executor:
        futures = {
            executor.submit(
                learn,
                str(folder / "config.yaml"),
                index,
                str(folder / "stream"),
                str(outputs[index]),
                strategy_key(config, index),
            ): index
            for index in pending
        }
        for future in progress(as_completed(futures), "strategies", total=len(futures), unit="strategies"):
            index = futures[future]
            title = config.strategies[index].title
            try:
                result = future.result()
            except Exception as err:  # one strategy failing must not lose the others
                failures[title] = "".join(traceback.format_exception(err))
                log.error("strategy %s failed: %s", title, err)
                continue
            results[index] = result
            run.log(event="strategy", strategy=title, wall_seconds=result["wall_seconds"])
    if failures:
        (folder / "failures.json").write_text(json.dumps(failures, indent=1))
    if not results:
        raise MedfmError(f"every strategy failed; tracebacks in {folder / 'failures.json'}")
    ordered = [(config.strategies[i].title, outputs[i], results[i]) for i in sorted(results)]
    summary = write_report(folder, config, stream, ordered, failures)
    run.finish(**summary)
    if failures:
        raise MedfmError(
            f"{len(failures)} strateg{'y' if len(failures) == 1 else 'ies'} failed ({', '.join(failures)}); "
            f"tracebacks in {folder / 'failures.json'}, the report covers the rest"
        )
    return folder
