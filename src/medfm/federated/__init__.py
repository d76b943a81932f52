"""Federated learning on Flower: medical tasks partitioned by patient across clients, simulated, in
process or deployed."""
