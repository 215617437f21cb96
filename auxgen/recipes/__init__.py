"""Recipes: the CLI commands, each a thin layer over the components in auxgen/."""
