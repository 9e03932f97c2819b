"""CLI sub-commands. Each module exposes ``register(subparsers)``."""

COMMAND_MODULES = ("scenario", "data", "cuts", "whatif", "compare", "node", "results", "privacy")
