"""The commands of ``shoal``, one module per group; ``cli.main`` puts them in the command tree.

Each module imports only typer and the CLI's light modules at the top: rich, pydantic, the SDK
and ``cli.errors`` (which imports the job model) are imported inside the commands, so that
``shoal --help`` starts fast.
"""
