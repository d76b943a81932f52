"""Privacy options of a federation: client-level differential privacy through Flower's DP strategy wrappers,
with the (epsilon, delta) it spends, and secure aggregation."""

from __future__ import annotations

from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

from medfm.federated.config import PrivacyConfig


def sampled_clients(clients: int, fraction: float) -> int:
    return max(1, int(clients * fraction))


def wrap_privacy(strategy: Strategy, privacy: PrivacyConfig, clients: int, fraction: float) -> Strategy:
    """``strategy`` behind Flower's fixed-clipping DP wrapper (client- or server-side clipping)."""
    if privacy.dp == "none":
        return strategy
    wrapper = (
        DifferentialPrivacyClientSideFixedClipping
        if privacy.dp == "client_fixed"
        else DifferentialPrivacyServerSideFixedClipping
    )
    return wrapper(strategy, privacy.noise_multiplier, privacy.clipping_norm, sampled_clients(clients, fraction))


def privacy_spent(config) -> dict:
    """The (epsilon, delta) client-level DP spends over the federation's rounds (empty without DP).

    Accounted with Flower's RDP accountant (Google's dp-accounting) for one Gaussian release per round
    with ``noise_multiplier`` over the clients sampled, without amplification by sampling (as Flower's
    fixed-clipping wrappers account)."""
    privacy = config.privacy
    if privacy.dp == "none":
        return {}
    from flwr.supercore.privacy_accounting import (
        GaussianPrivacyEvent,
        NeighboringRelation,
        SamplingMethod,
    )
    from flwr.supercore.privacy_accounting import PrivacyConfig as AccountingConfig
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    sampled = sampled_clients(config.clients, config.fraction_train)
    accountant = RdpAccountant(
        AccountingConfig(
            target_delta=privacy.delta,
            population_size=config.clients,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
    )
    accountant.compose(GaussianPrivacyEvent(privacy.noise_multiplier, sampled, config.clients), count=config.rounds)
    spent = accountant.get_privacy_spent(privacy.delta)
    return {
        "dp": privacy.dp,
        "noise_multiplier": privacy.noise_multiplier,
        "clipping_norm": privacy.clipping_norm,
        "rounds": config.rounds,
        "epsilon": spent.epsilon,
        "delta": spent.delta,
        "accounting": spent.accounting_method,
    }
