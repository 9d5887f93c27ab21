"""The ``shoal`` command line: a thin typer app over the ``shoal`` SDK.

Entry point: ``cli.main:main``. Modules:

- ``main``    the typer app, every command, the global ``--api`` option, ``make_client``
- ``errors``  exit codes and the one place exceptions become an ``Error: …`` line
- ``specs``   ``--input``/``--env``/… flags → a validated ``jobs.JobSpec``
- ``waiting`` submit-and-wait: the live status line and the job's outcome
- ``render``  rich tables and plain-text formatting (ages, durations, short ids)
- ``daemon``  ``serve``/``devstack`` flags → ``node.config.NodeConfig``

Heavy imports (rich, pydantic, the SDK) happen inside commands so ``shoal --help`` starts fast.
"""
