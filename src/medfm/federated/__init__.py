"""Federated learning on Flower: medical tasks partitioned by patient across clients, in simulation, in process or deployed."""
