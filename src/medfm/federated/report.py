"""The federation report: test AUROC with subject-bootstrap intervals for every strategy and baseline, the
federation's gap to centralised training (paired bootstrap), AUROC by round, per-client scores, every
rejected or missing update and refused round, the partitions, and each strategy's privacy spent.

Written as ``federation.md`` and ``report.html`` beside ``results.csv``, ``rounds.csv``, ``clients.csv``,
``events.csv`` and ``figures/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from medfm.evaluate.bootstrap import bootstrap_ci, paired_bootstrap
from medfm.federated.config import FederateConfig
from medfm.federated.partition import label_skew
from medfm.federated.privacy import privacy_spent
from medfm.pcs.report import write_document


def load_predictions(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return data["y"], data["prob"], data["subjects"]


def models(
    config: FederateConfig, run_dir: Path, baselines: list[dict], names: list[str]
) -> list[tuple[str, str, Path]]:
    """(method, model label, folder) of every model with test predictions; ``names`` are the clients'."""
    found = [("federated", s.label, run_dir / "strategies" / s.folder) for s in config.strategies]
    for record in baselines:
        if record["method"] == "centralised":
            entry = ("centralised", "centralised", run_dir / "baselines" / "centralised")
        else:
            entry = (
                "local",
                f"local-only {names[record['client']]}",
                run_dir / "baselines" / record["model"],
            )
        if entry not in found:
            found.append(entry)
    return found


def results_table(
    config: FederateConfig, run_dir: Path, baselines: list[dict], tasks: list[str], names: list[str]
) -> pd.DataFrame:
    rows = []
    for task in tasks:
        for method, label, folder in models(config, run_dir, baselines, names):
            path = folder / f"test_{task}.npz"
            if not path.is_file():
                continue
            y, prob, subjects = load_predictions(path)
            value, low, high = bootstrap_ci(
                y, prob, subjects, False, config.n_boot, config.seed, metrics=["auroc"]
            )["auroc"]
            rows.append(
                {
                    "task": task,
                    "method": method,
                    "model": label,
                    "auroc": value,
                    "ci_low": low,
                    "ci_high": high,
                    "test_examples": len(y),
                }
            )
    return pd.DataFrame(rows)


def gaps(config: FederateConfig, run_dir: Path, tasks: list[str]) -> pd.DataFrame:
    """Each strategy against centralised training on the same test subjects (paired bootstrap)."""
    rows = []
    for task in tasks:
        central = run_dir / "baselines" / "centralised" / f"test_{task}.npz"
        if not central.is_file():
            continue
        y, prob_c, subjects = load_predictions(central)
        for strategy in config.strategies:
            path = run_dir / "strategies" / strategy.folder / f"test_{task}.npz"
            _, prob_s, _ = load_predictions(path)
            result = paired_bootstrap(y, prob_s, prob_c, subjects, False, "auroc", config.n_boot, config.seed)
            rows.append(
                {
                    "task": task,
                    "strategy": strategy.label,
                    "minus_centralised": result["diff"],
                    "ci_low": result["ci_low"],
                    "ci_high": result["ci_high"],
                }
            )
    return pd.DataFrame(rows)


def read_rounds(config: FederateConfig, run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Per-round server scores, per-client scores and guard events of every strategy."""
    rounds, clients, events = [], [], []
    for strategy in config.strategies:
        path = run_dir / "strategies" / strategy.folder / "rounds.jsonl"
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            record = json.loads(line)
            for client in record.pop("clients"):
                clients.append({"strategy": strategy.label, **client, "round": record["round"]})
            for event in record.pop("events"):
                events.append({"strategy": strategy.label, **event, "round": record["round"]})
            rounds.append({"strategy": strategy.label, **record})
    return pd.DataFrame(rounds), pd.DataFrame(clients), pd.DataFrame(events)


def plot_rounds(rounds: pd.DataFrame, results: pd.DataFrame, task: str, path: Path) -> Path:
    """Test AUROC of each strategy's global model by round, beside the baselines' test AUROC."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    column = f"test_auroc/{task}"
    for strategy, part in rounds.groupby("strategy", sort=False):
        ax.plot(part["round"], part[column], marker="o", label=strategy)
    task_rows = results[results["task"] == task]
    central = task_rows[task_rows["method"] == "centralised"]
    if len(central):
        ax.axhline(central["auroc"].iloc[0], color="black", linestyle="--", label="centralised (best epoch)")
    local = task_rows[task_rows["method"] == "local"]
    if len(local):
        ax.axhspan(
            local["auroc"].min(),
            local["auroc"].max(),
            color="grey",
            alpha=0.2,
            label="local-only clients (range)",
        )
    ax.set_xlabel("round")
    ax.set_ylabel("test AUROC")
    ax.set_title(f"{task}: global model by round")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_results(results: pd.DataFrame, task: str, path: Path) -> Path:
    """Test AUROC with 95 % subject-bootstrap intervals, one line per model."""
    part = results[results["task"] == task].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * len(part) + 1.2))
    colours = {"federated": "tab:blue", "centralised": "black", "local": "tab:grey"}
    for i, row in part.iterrows():
        ax.errorbar(
            row["auroc"],
            i,
            xerr=[[row["auroc"] - row["ci_low"]], [row["ci_high"] - row["auroc"]]],
            fmt="o",
            color=colours[row["method"]],
            capsize=3,
        )
    ax.set_yticks(range(len(part)), part["model"])
    ax.invert_yaxis()
    ax.set_xlabel("test AUROC (95 % subject bootstrap)")
    ax.set_title(task)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fmt(value: Any) -> str:
    if value is pd.NA:
        return ""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def client_view(clients: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """The last round's per-client scores on each client's own test examples, clients named."""
    last = clients[clients["round"] == clients["round"].max()].sort_values(["strategy", "partition-id"])
    view = pd.DataFrame(
        {
            "strategy": last["strategy"],
            "client": [names[int(i)] for i in last["partition-id"]],
        }
    )
    for column in clients.columns:
        if "/" in column and not column.startswith("train-loss"):
            view[column.replace("num-examples", "test examples")] = last[column].to_numpy()
    return view.map(fmt)


def privacy_table(config: FederateConfig, rounds: pd.DataFrame, events: pd.DataFrame) -> pd.DataFrame:
    """Each strategy's (epsilon, delta) over the private releases its rounds made, and the rounds it
    refused (empty without DP)."""
    if config.privacy.dp == "none" or not len(rounds):
        return pd.DataFrame()
    rows = []
    for strategy, part in rounds.groupby("strategy", sort=False):
        mine = events[events["strategy"] == strategy] if len(events) else events
        refused = int((mine["event"] == "refused").sum()) if len(mine) else 0
        releases = int(part.sort_values("round")["dp_releases"].iloc[-1])
        rows.append({"strategy": strategy, **privacy_spent(config, releases), "refused_rounds": refused})
    return pd.DataFrame(rows)


def write_report(
    config: FederateConfig, run_dir: Path, timings: list[dict], baselines: list[dict]
) -> dict[str, Any]:
    info = json.loads((run_dir / "federation" / "federation.json").read_text())
    tasks = list(info["tasks"])
    figures = run_dir / "figures"
    figures.mkdir(exist_ok=True)
    results = results_table(config, run_dir, baselines, tasks, info["clients"])
    gap = gaps(config, run_dir, tasks)
    rounds, clients, events = read_rounds(config, run_dir)
    for name, table in (
        ("results", results),
        ("gaps", gap),
        ("rounds", rounds),
        ("clients", clients),
        ("events", events),
    ):
        table.to_csv(run_dir / f"{name}.csv", index=False)
    summary_rows = (
        results.assign(
            auroc=[
                f"{a:.3f} [{lo:.3f}, {hi:.3f}]"
                for a, lo, hi in zip(results["auroc"], results["ci_low"], results["ci_high"])
            ]
        )[["task", "model", "auroc", "test_examples"]]
        if len(results)
        else results
    )
    parts: list[tuple[str, list]] = [
        (
            "Federation",
            [
                f"{config.clients} clients, {config.rounds} rounds, "
                f"{config.training.epochs} local epoch(s) per round, "
                f"runtime {config.runtime}; baselines train {config.rounds * config.training.epochs} epochs.",
                pd.DataFrame(
                    [
                        {
                            "task": t,
                            "description": v["description"],
                            "partition": v["partition"]["kind"],
                            **{
                                f"{s} (positives)": f"{v['counts'][s]} ({v['positives'][s]})"
                                for s in v["counts"]
                            },
                        }
                        for t, v in info["tasks"].items()
                    ]
                ),
            ],
        ),
        ("Test AUROC", [summary_rows.map(fmt) if len(summary_rows) else summary_rows]),
        (
            "Gap to centralised training",
            [
                "Strategy minus centralised test AUROC, paired subject bootstrap (95 %).",
                gap.map(fmt) if len(gap) else "No centralised baseline in this run.",
            ],
        ),
    ]
    for task in tasks:
        blocks: list = []
        if len(rounds):
            blocks.append(plot_rounds(rounds, results, task, figures / f"rounds_{task}.png"))
        if len(results):
            blocks.append(plot_results(results, task, figures / f"auroc_{task}.png"))
        table = pd.read_csv(run_dir / "federation" / f"partition_{task}.csv", dtype={"client": "Int64"})
        classes = info["tasks"][task]["classes"]
        blocks += [
            "Label skew (mean total-variation distance of client label mixes from the pooled one): "
            f"{label_skew(table, classes):.3f}",
            table.map(fmt),
            run_dir / "federation" / f"partition_{task}.png",
        ]
        parts.append((f"Task {task}", blocks))
    if len(clients):
        parts.append(("Clients' own test sets (last round)", [client_view(clients, info["clients"])]))
    parts.append(
        (
            "Rejected, failed and missing updates, refused rounds",
            [
                events.map(fmt)
                if len(events)
                else "None: every sampled client sent a valid update each round."
            ],
        )
    )
    spent = privacy_table(config, rounds, events)
    privacy: list = (
        [
            "Epsilon over the rounds aggregated with noise; a refused round (a sampled client's update "
            "missing) released nothing and kept the global model.",
            spent.map(fmt),
        ]
        if len(spent)
        else []
    )
    if config.privacy.secagg:
        bound = config.privacy.secagg_clipping_range
        privacy.append(
            f"Secure aggregation: Flower's SecAgg+ (every client a share holder, weights quantised over "
            f"[-{bound:g}, {bound:g}]); the server saw only the sum of the clients' weighted models, so no "
            "update was checked one by one."
        )
    if privacy:
        parts.append(("Privacy", privacy))
    parts.append(("Timing", [pd.DataFrame(timings).map(fmt) if timings else "(no strategy ran)"]))
    write_document(run_dir, f"Federation {config.name}", parts, "federation.md", "report.html")
    return {
        "results": results.to_dict("records"),
        "gaps": gap.to_dict("records"),
        "privacy": spent.to_dict("records"),
    }
