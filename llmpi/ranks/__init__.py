"""The sweep over MPI ranks: set-up, rank 0's preparation and commit, the protocol, and what each rank computes.

The only room that speaks MPI (``protocol``, ``run``); ``protocol`` and ``placement`` never import torch.
"""
