"""`python -m switch`: the command line lives in switch/cli/main.py."""

from switch.cli.main import run

if __name__ == "__main__":
    run()
