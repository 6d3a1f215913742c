"""`python -m app.cli`: the `deskpilot` command, as the tests and benchmarks start real servers and workers."""

from app.cli import main

main()
