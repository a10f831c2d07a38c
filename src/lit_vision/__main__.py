"""``python -m lit_vision`` and the ``lit-vision`` script: dispatch a command, return its exit code.

LightningCLI runs ``fit``/``validate``/``test``; ``commands/`` holds the rest. This is the one
place that turns a user error (:class:`lit_vision.errors.LitVisionError`, a missing file, a
parse error) into one ``error:`` line and exit code 2.
"""

from __future__ import annotations

import importlib
import sys

from jsonargparse import ArgumentError

from lit_vision.commands import COMMANDS, help_text
from lit_vision.errors import ConfigError, LitVisionError, config_error_line

USER_ERRORS = (LitVisionError, FileNotFoundError)


def normalize_option_spelling(argv: list[str]) -> list[str]:
    """Accept ``--group-regex`` for ``--group_regex`` in lit_vision's own subcommands.

    Options are spelled with underscores, as in LightningCLI; the hyphen spelling many tools
    use is an alias. Only the option name changes (``--a-b=x-y`` -> ``--a_b=x-y``).
    """
    out = []
    for arg in argv:
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg[2:].partition("=")
            arg = "--" + name.replace("-", "_") + eq + value
        out.append(arg)
    return out


def run_command(args: list[str] | None = None) -> object:
    """Run one command in-process and return what it made; errors propagate as exceptions.

    The API for tests (which read the trainer and model of a ``fit``); :func:`main` is the
    shell's entry point around it.

    Args:
        args: The command line without the program name, e.g. ``["fit", "--config", F]``;
            ``None`` reads ``sys.argv``.

    Returns:
        The exit code of a lit_vision subcommand, or the ``LitVisionCLI`` of fit/validate/test.

    Raises:
        ConfigError: The command line or a config file does not parse (one line, naming the key).
    """
    argv = list(sys.argv[1:] if args is None else args)
    route = None
    try:
        if argv and argv[0] in COMMANDS:
            module = importlib.import_module(COMMANDS[argv[0]][0])
            return module.main(normalize_option_spelling(argv[1:]))
        if not argv or argv[0] in ("-h", "--help"):
            print(help_text())
        from lightning.pytorch.utilities import rank_zero_info

        from lit_vision.cli import build_cli  # torch and Lightning: only for fit/validate/test
        from lit_vision.routing import route_small_images

        route = route_small_images(argv)
        if route is not None:
            rank_zero_info(route.note)
            argv = route.argv
            if args is None:  # LightningCLI reads sys.argv itself (and warns when given both)
                sys.argv[1:] = argv
        return build_cli(
            None if args is None else argv,  # None: LightningCLI reads sys.argv itself
            save_config_kwargs={"overwrite": True},
            # Parse errors raise instead of printing the whole usage, so the shell gets one line.
            parser_kwargs={"exit_on_error": False, "prog": "lit-vision"},
        )
    except ArgumentError as err:  # a parse error (exit_on_error=False): one line naming the key
        line = config_error_line(str(err))
        raise ConfigError(line if route is None else f"{line} ({route.hint})") from None


def main(args: list[str] | None = None) -> int:
    """The command line's entry point: run a command and return its exit code.

    0: success; 1: a check found problems (``check``, ``export``'s parity, ``compare``,
    ``lr_find`` without a suggestion); 2: a user error, printed as one ``error:`` line on
    stderr; 130: interrupted. Anything else is a bug and keeps its traceback.

    Args:
        args: The command line without the program name; ``None`` reads ``sys.argv``.
    """
    try:
        result = run_command(None if args is None else list(args))
    except SystemExit as exit_:  # --help, --print_config
        code = exit_.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        user_error = find_user_error(err)
        if user_error is None:
            raise
        text = str(user_error).strip() or type(user_error).__name__
        print(f"error: {text.splitlines()[0]}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0


def find_user_error(err: BaseException | None) -> BaseException | None:
    """The user's mistake behind an exception, even when jsonargparse wrapped it while instantiating."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, USER_ERRORS):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


if __name__ == "__main__":
    raise SystemExit(main())
