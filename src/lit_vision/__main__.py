"""``python -m lit_vision``: the command line."""

from lit_vision.cli import main

main()
