"""CLI commands, one module per concern; importing a module registers its commands."""
