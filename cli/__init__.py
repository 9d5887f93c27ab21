"""The ``shoal`` command line: a thin typer app over the ``shoal`` SDK.

Entry point: ``cli.main:main``. Modules:

- ``main``      the command tree: the root app, its ``--api`` option, every group and command in order
- ``commands``  the commands, one module per group: ``run``, ``jobfile``, ``jobs``, ``sweeps``,
                ``network``, ``daemons``, ``keys``, ``tools``, ``settings`` (config, completion)
- ``connect``   the root options and ``make_client``, where every command gets its SDK client
- ``config``    the config file (``~/.shoal/config.toml``) and the precedence flag > env > file > default
- ``extras``    the node extra: node commands say in one line to ``pip install 'shoal[node]'``
- ``arguments`` arguments and options several commands share
- ``lookup``    jobs and sweeps found by full id or unique prefix
- ``group``     ``ShoalGroup``, the root command that turns every failure into an exit code
- ``errors``    ``CLIError`` (a ``jobs.errors.ShoalError``) and the one place exceptions become
                ``Error: …`` lines; ``exits`` the exit codes
- ``options``   the job flags every run command shares (one decorator) and their packs
- ``specs``     ``--input``/``--env``/… flags → a validated ``jobs.JobSpec``
- ``jobfile``   job files (YAML/JSON) → a validated job or sweep spec: templating, ``--set``, schema
- ``waiting``   submit-and-wait: the live status line and the job's outcome
- ``render``    rich tables, plain-text formatting (ages, durations, short ids), ``--output json|yaml``
- ``daemon``    ``serve`` flags → ``node.config.NodeConfig``; SIGTERM/SIGINT handling

Heavy imports (rich, pydantic, the SDK, the job model) happen inside commands so ``shoal --help``
starts fast.
"""
