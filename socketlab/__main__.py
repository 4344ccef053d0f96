"""``python -m socketlab`` runs the command line."""

from socketlab.cli import main

if __name__ == "__main__":
    main()
