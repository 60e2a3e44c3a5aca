"""Federated protocols, one folder per protocol and one module per role.

* :mod:`fedrec.protocols.hetero_fm` — vertical federated FM (DESIGN §4.2): guest (labels, secret key)
  and host (user features).
"""
