"""The ``canopy`` command line (Typer + rich). ``canopy --help`` lists the command groups."""
