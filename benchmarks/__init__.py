"""Benchmarks of single parts, run by hand (``python -m benchmarks.<name>``); nothing at run time
imports them.

- ``docker``  ``DockerExecutor.run`` against a bare ``docker run --rm``
- ``python``  the ``python`` engine: ``print(1)`` from a warm interpreter pool vs a cold start
- ``storage`` a job input fetched through Kubo; a result published to Kubo and to the local store
- ``net``     libp2p round trips between two hosts (optionally on a private network)

Whole-network benchmarks start a devstack and live beside it: ``shoal bench`` (``devstack.bench``)
and ``python -m devstack.bench_*``.
"""
