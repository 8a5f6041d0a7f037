"""`python -m surelay.cli`: the `surelay` command."""

from surelay.cli import main

main()
