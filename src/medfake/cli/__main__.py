"""`python -m medfake.cli ...` is `medfake ...`."""

from medfake.cli import main

main()
