"""One module per CLI verb: register(subparsers, verb, help) + run(args) -> exit code."""
