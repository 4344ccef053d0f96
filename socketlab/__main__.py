"""``python -m socketlab`` runs the command line."""

from socketlab.cli import run

if __name__ == "__main__":
    run()
