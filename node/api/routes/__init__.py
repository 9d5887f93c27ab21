"""The API's routes, one router per group: ``jobs``, ``sweeps``, ``nodes`` (this node and the
network, signed) and ``health`` (liveness, readiness, version and metrics, unsigned)."""
