"""One module per ``synthmix`` subcommand: ``register(subparsers)`` adds the parser and sets
``handler`` to a function of the parsed arguments that returns the exit status."""
