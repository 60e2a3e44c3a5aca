"""fedrec: federated recommendation with real encryption over real sockets."""

__version__ = "0.1.0"
