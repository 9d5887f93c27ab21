"""The ``shoal`` command line: a thin typer app over the ``shoal`` SDK.

Entry point: ``cli.main:main``. Modules:

- ``main``    the typer app, every command, the global ``--api`` option, ``make_client``
- ``errors``  exit codes; ``ShoalGroup``, the one place exceptions become ``Error: …`` lines
- ``options`` the job flags every run command shares (one decorator)
- ``specs``   ``--input``/``--env``/… flags → a validated ``jobs.JobSpec``
- ``waiting`` submit-and-wait: the live status line and the job's outcome
- ``render``  rich tables and plain-text formatting (ages, durations, short ids)
- ``daemon``  ``serve`` flags → ``node.config.NodeConfig``; SIGTERM/SIGINT handling

Heavy imports (rich, pydantic, the SDK) happen inside commands so ``shoal --help`` starts fast.
"""
