"""The configuration of a federation: tasks and their partitions, strategies, local training, baselines,
privacy, runtime. Typed dataclasses, loaded from YAML with ``key=value`` overrides (:mod:`medfm.config`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from medfm.errors import ConfigError
from medfm.federated.partition import PartitionConfig

STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedmedian", "krum", "trimmed_mean")
BASELINES = ("local", "centralised")
RUNTIMES = ("simulation", "inprocess")
DP_MODES = ("none", "client_fixed", "server_fixed")
OPTIMISERS = ("adamw", "sgd")


@dataclass
class FedTaskConfig:
    name: str = "icu_mortality"  # a registered federated task (see medfm.federated.tasks)
    root: str = ""  # data folder ("": the task's folder under MEDFM_DATA_ROOT)
    encoder: str = ""  # registered encoder or bundle folder ("": the task's lightweight encoder)
    image_size: int = 32  # image tasks: side the images are resized to
    signal_length: int = 9000  # ECG tasks: samples per record (30 s at 300 Hz), centre crop or pad
    limit: int = 0  # read at most this many examples (0: all; smoke runs)
    partition: PartitionConfig = field(default_factory=PartitionConfig)

    def __post_init__(self):
        from medfm.federated.tasks import FED_TASKS  # the task registry reads the evaluation tasks

        try:
            FED_TASKS.get(self.name)
        except KeyError as err:
            raise ConfigError(str(err.args[0])) from None
        if self.image_size < 8 or self.signal_length < 1 or self.limit < 0:
            raise ConfigError(
                f"task {self.name}: image_size >= 8, signal_length >= 1 and limit >= 0 are required"
            )


@dataclass
class StrategyConfig:
    """A Flower strategy by name, with the settings the report shows it under (``label``)."""

    name: str = "fedavg"
    label: str = ""
    proximal_mu: float = 0.01  # fedprox: weight of the proximal term on each client
    server_lr: float = 0.01  # fedadam / fedyogi: the server's step (Flower's eta)
    tau: float = 1e-3  # fedadam / fedyogi: adaptivity
    trim_beta: float = 0.2  # trimmed_mean: fraction cut at each end
    byzantine: int = 1  # krum: number of malicious clients it tolerates

    @property
    def folder(self) -> str:
        """The strategy's folder name under a run's ``strategies/`` (its label, made path-safe)."""
        return re.sub(r"[^a-z0-9]+", "-", self.label.lower()).strip("-")

    def __post_init__(self):
        if self.name not in STRATEGIES:
            raise ConfigError(f"strategy {self.name!r} is not one of {STRATEGIES}")
        if not self.label:
            self.label = self.name if self.name != "fedprox" else f"fedprox (mu={self.proximal_mu:g})"


@dataclass
class LocalTrainingConfig:
    epochs: int = 1  # local epochs per round (baselines train rounds x epochs)
    batch_size: int = 64
    lr: float = 1e-3
    optimiser: str = "adamw"
    weight_decay: float = 1e-4
    max_steps: int = 0  # cap on a client's steps per round (0: none)

    def __post_init__(self):
        if self.optimiser not in OPTIMISERS:
            raise ConfigError(f"training.optimiser must be one of {OPTIMISERS}, got {self.optimiser!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("training.epochs and batch_size must be >= 1 and lr > 0")


@dataclass
class PrivacyConfig:
    """Client-level differential privacy through Flower's DP strategy wrappers (updates clipped to
    ``clipping_norm``, Gaussian noise of ``noise_multiplier * clipping_norm`` on the sum), with the
    (epsilon, delta) it gives reported; ``secagg`` aggregates through Flower's SecAgg+ protocol."""

    dp: str = "none"
    noise_multiplier: float = 1.0
    clipping_norm: float = 1.0
    delta: float = 1e-5
    secagg: bool = False
    secagg_clipping_range: float = 8.0  # SecAgg+ quantises weights in [-range, range] (clamps outside)

    def __post_init__(self):
        if self.dp not in DP_MODES:
            raise ConfigError(f"privacy.dp must be one of {DP_MODES}, got {self.dp!r}")
        if self.clipping_norm <= 0 or self.noise_multiplier < 0 or not 0 < self.delta < 1:
            raise ConfigError(
                "privacy: clipping_norm > 0, noise_multiplier >= 0 and 0 < delta < 1 are required"
            )
        if self.dp != "none" and self.noise_multiplier == 0:
            raise ConfigError("privacy.noise_multiplier must be > 0 with privacy.dp (no noise, no privacy)")


ATTACKS = ("none", "noise", "nan", "shape")


@dataclass
class AttackConfig:
    """Clients that misbehave, for robustness studies: ``noise`` sends the trained weights plus Gaussian
    noise of standard deviation ``scale`` (model poisoning), ``nan`` sends NaNs, ``shape`` a tensor of the
    wrong shape. The server's guard must reject the last two; only robust strategies survive the first.

    Attacks run only in medfm's simulation and in-process runtimes (a deployed client ignores them). With
    differential privacy a round missing a sampled client's update is refused, so an attack that gets
    updates rejected leaves the model untrained: combining the two needs ``allow_with_dp: true``."""

    kind: str = "none"
    clients: list[int] = field(default_factory=list)  # partition ids of the attackers
    scale: float = 10.0
    allow_with_dp: bool = False  # run the attack in a federation with differential privacy anyway

    def __post_init__(self):
        if self.kind not in ATTACKS:
            raise ConfigError(f"attack.kind must be one of {ATTACKS}, got {self.kind!r}")


@dataclass
class FederateConfig:
    name: str = "federation"
    output: str = "runs/federated"  # the run folder is <output>/<name>
    tasks: list[FedTaskConfig] = field(default_factory=lambda: [FedTaskConfig()])
    clients: int = 5
    rounds: int = 5
    fraction_train: float = 1.0  # share of clients sampled per round
    min_clients: int = 2  # a round needs at least this many clients (Flower's min_available/min_train)
    round_timeout: float = 600.0  # seconds the server waits for a round's replies
    strategies: list[StrategyConfig] = field(
        default_factory=lambda: [StrategyConfig("fedavg"), StrategyConfig("fedprox")]
    )
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    training: LocalTrainingConfig = field(default_factory=LocalTrainingConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    runtime: str = "simulation"  # simulation: Flower's simulation engine; inprocess: same apps, no Ray
    seed: int = 0
    n_boot: int = 1000  # subject bootstrap resamples of the test intervals
    threads: int = 0  # torch threads of the in-process clients and the server (0: torch's default)
    workers: int = 2  # processes training the baselines side by side, one thread each (0: this process)

    def __post_init__(self):
        if not self.tasks:
            raise ConfigError("a federation needs at least one task")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ConfigError(f"tasks appear twice: {names}")
        if self.workers < 0:
            raise ConfigError(f"workers must be 0 (this process) or more, got {self.workers}")
        if self.clients < 1 or self.rounds < 1:
            raise ConfigError("clients and rounds must be at least 1")
        if not 1 <= self.min_clients <= self.clients:
            raise ConfigError(
                f"min_clients must be between 1 and clients ({self.clients}), got {self.min_clients}"
            )
        if not 0 < self.fraction_train <= 1:
            raise ConfigError(f"fraction_train must be in (0, 1], got {self.fraction_train}")
        unknown = sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            raise ConfigError(f"unknown baseline(s) {unknown}; known: {BASELINES}")
        if self.runtime not in RUNTIMES:
            raise ConfigError(f"runtime must be one of {RUNTIMES}, got {self.runtime!r}")
        outside = [c for c in self.attack.clients if not 0 <= c < self.clients]
        if outside:
            raise ConfigError(f"attack.clients {outside} are not partition ids 0..{self.clients - 1}")
        if self.privacy.dp != "none":
            averaging = {"fedavg", "fedprox"}
            other = [s.label for s in self.strategies if s.name not in averaging]
            if other:
                raise ConfigError(
                    "differential privacy calibrates its noise to a mean of clipped updates (fedavg, "
                    f"fedprox); strategies {other} aggregate otherwise"
                )
            if len(self.tasks) > 1:
                raise ConfigError(
                    "differential privacy is accounted for one task per federation; run one task"
                )
            if self.attack.kind != "none" and not self.attack.allow_with_dp:
                raise ConfigError(
                    f"attack {self.attack.kind!r} with privacy.dp: rounds whose updates the guard rejects "
                    "are refused under differential privacy; set attack.allow_with_dp: true to run both"
                )
        if self.privacy.secagg:
            if [s.name for s in self.strategies if s.name != "fedavg"] or self.privacy.dp != "none":
                raise ConfigError(
                    "SecAgg+ runs on Flower's legacy FedAvg path: use strategy fedavg only, without dp"
                )
            if self.clients < 3:
                raise ConfigError("SecAgg+ needs at least 3 clients (Flower's num_shares > 2)")
            if len(self.tasks) > 1 or self.attack.kind != "none":
                raise ConfigError(
                    "SecAgg+ federations take one task and no attack (updates cannot be checked)"
                )
        labels = [s.label for s in self.strategies]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"two strategies share a label {labels}; give each a distinct label")
