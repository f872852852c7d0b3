"""`python -m medfake.cli ...` is `medfake ...`."""

from medfake.cli import main

if __name__ == "__main__":  # worker processes (spawned) import this module without running the command
    main()
