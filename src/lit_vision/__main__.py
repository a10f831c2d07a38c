"""``python -m lit_vision``: the command line; its exit code is the command's."""

from lit_vision.cli import main

raise SystemExit(main())
