"""Client-level differential privacy through Flower's DP strategy wrappers, with the (epsilon, delta) spent.

DP-FedAvg (McMahan et al. 2018): each sampled client's update is clipped to L2 norm ``clipping_norm`` (on
the client with ``client_fixed``, by Flower's ``fixedclipping_mod``; on the server with ``server_fixed``)
and the server adds Gaussian noise of standard deviation ``noise_multiplier * clipping_norm / sampled`` to
the mean update. That noise protects a whole client only if every client weighs the same in the mean, so a
private federation averages clients equally (not by examples), and only if the mean is over all
``sampled`` clients: with fewer, the same noise would be a smaller multiple of one client's influence.

So the wrappers run with Flower's RDP accountant (Google's dp-accounting), which makes them strict: a
round whose replies are not the sampled count is refused (no aggregate, no noise, no release), and each
aggregated round composes one Gaussian release at ``noise_multiplier``, without amplification by sampling.
The epsilon reported is the accountant's over the releases actually made.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.serverapp import GaussianPrivacyEvent, NeighboringRelation, RdpAccountant, SamplingMethod
from flwr.serverapp import PrivacyConfig as AccountingConfig
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

from medfm.federated.config import FederateConfig, PrivacyConfig

# The key under which Flower's client-side DP wrapper sends the clipping norm to the clients.
CLIPPING_NORM_KEY = "clipping_norm"


def clip_when_asked(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's ``fixedclipping_mod`` on train messages that carry a clipping norm, so one ClientApp serves
    private and non-private federations."""
    config = next(iter(msg.content.config_records.values()), {})
    if CLIPPING_NORM_KEY in config:
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


def sampled_clients(clients: int, fraction: float) -> int:
    return max(1, int(clients * fraction))


def privacy_accountant(config: FederateConfig, releases: int = 0) -> RdpAccountant | None:
    """Flower's RDP accountant for the federation's releases, ``releases`` of them already made (a resumed
    run); None without DP."""
    privacy = config.privacy
    if privacy.dp == "none":
        return None
    accountant = RdpAccountant(
        AccountingConfig(
            target_delta=privacy.delta,
            population_size=config.clients,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
    )
    if releases:
        sampled = sampled_clients(config.clients, config.fraction_train)
        accountant.compose(
            GaussianPrivacyEvent(privacy.noise_multiplier, sampled, config.clients), count=releases
        )
    return accountant


def wrap_privacy(strategy: Strategy, config: FederateConfig, accountant: RdpAccountant | None) -> Strategy:
    """``strategy`` behind Flower's fixed-clipping DP wrapper (client- or server-side clipping), strict
    through ``accountant`` (see the module docstring)."""
    privacy = config.privacy
    if privacy.dp == "none":
        return strategy
    wrapper = (
        DifferentialPrivacyClientSideFixedClipping
        if privacy.dp == "client_fixed"
        else DifferentialPrivacyServerSideFixedClipping
    )
    sampled = sampled_clients(config.clients, config.fraction_train)
    return wrapper(strategy, privacy.noise_multiplier, privacy.clipping_norm, sampled, accountant=accountant)


def dp_sample_size(privacy: PrivacyConfig, clients: int, fraction: float, min_clients: int) -> int:
    """Clients a round samples: under DP every round must sample the count the noise is calibrated to."""
    return sampled_clients(clients, fraction) if privacy.dp != "none" else min_clients


def privacy_spent(config: FederateConfig, releases: int) -> dict:
    """The (epsilon, delta) client-level DP spends over ``releases`` aggregated rounds (empty without DP)."""
    accountant = privacy_accountant(config, releases)
    if accountant is None:
        return {}
    spent = accountant.get_privacy_spent()
    return {
        "dp": config.privacy.dp,
        "noise_multiplier": config.privacy.noise_multiplier,
        "clipping_norm": config.privacy.clipping_norm,
        "released_rounds": spent.num_releases,
        "epsilon": spent.epsilon,
        "delta": spent.delta,
        "accounting": spent.accounting_method,
    }
