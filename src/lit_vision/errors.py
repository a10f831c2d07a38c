"""User errors: one base class, so the command line turns any of them into one ``error:`` line.

A user error is something the user can fix (a path, an option, a file they were given); the
command line prints its message on one line and exits with code 2. Anything else is a bug and
keeps its traceback. Each module raises the error of its concern; they all derive from
:class:`LitVisionError` (and from ``ValueError``, as they did before the base class existed).
"""

from __future__ import annotations

import re


class LitVisionError(ValueError):
    """Base class of every error a user can cause and fix; the message names the file or key."""


class ConfigError(LitVisionError):
    """A command line or config file that does not parse; the message names the key."""


class DataError(LitVisionError):
    """A problem with the user's image folders; the message names the path."""


class SplitError(LitVisionError):
    """``split`` cannot proceed; the message names the folder or option."""


class CheckpointError(LitVisionError):
    """A checkpoint that cannot be used: unreadable, not a checkpoint, or refused as unsafe."""


class ExportError(LitVisionError):
    """``export`` cannot write where it was asked to; the message names the path."""


class OutputExistsError(LitVisionError):
    """The output path is taken (an existing file without ``overwrite``, or a folder)."""


class WeightsError(LitVisionError):
    """Pretrained weights that cannot be found or loaded; the message says where to get them."""


def config_error_line(message: str) -> str:
    """Jsonargparse's multi-line parse error boiled down to one line naming the key."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    keys: list[str] = []
    for line in lines:
        m = re.search(r'Parser key "([^"]+)"', line)
        if m and m.group(1) not in keys:
            keys.append(m.group(1))
    noise = (
        "Parser key",
        "Does not validate against any of the Union",
        "Subtypes:",
        "Errors:",
        "Given value",
        "Expected a <class 'NoneType'>",
        "Problem with given class_path",
    )
    lines = [re.sub(r'^Parser key "[^"]+":\s*', "", line) for line in lines]
    expected = _union_expectation(lines)
    if expected and keys:
        return f"--{'.'.join(keys)}: {expected}"
    reasons = [
        re.sub(r"^- ", "", line) for line in lines if line and not any(n in line for n in noise)
    ]
    reason = reasons[0] if reasons else lines[-1] if lines else "invalid configuration"
    unknown = re.search(r"Option '([^']+)' is not accepted", reason)
    key = ".".join(keys)
    if unknown and key:
        return f"--{key}.{unknown.group(1)} is not an option (typo? see --help)"
    return f"--{key}: {reason}" if key else reason


def _type_name(text: str) -> str:
    """``<class 'bool'>`` -> ``bool``; ``typing.Literal['a', 'b']`` -> ``'a' or 'b'``."""
    literal = re.fullmatch(r"typing\.Literal\[(.*)\]", text)
    if literal:
        return " or ".join(v.strip() for v in literal.group(1).split(","))
    cls = re.fullmatch(r"<class '(?:\w+\.)*(\w+)'>", text)
    return cls.group(1) if cls else text


def _union_expectation(lines: list[str]) -> str:
    """For a value no type of a Union accepts: ``expected bool or 'auto', got 'maybe'``."""
    wanted = [m.group(1) for line in lines if (m := re.match(r"- Expected an? (.+)$", line))]
    if len(wanted) < 2:
        return ""
    given = next(
        (line.split(":", 1)[1].strip() for line in lines if line.startswith("Given value:")), ""
    )
    # NoneType is in every Union of a subclass argument's options: noise, as above.
    names = " or ".join(dict.fromkeys(_type_name(w) for w in wanted if "NoneType" not in w))
    return f"expected {names}, got {given!r}" if given else f"expected {names}"


class NonFiniteLossError(LitVisionError, RuntimeError):
    """Training produced a NaN or infinite loss (or parameters); the message says where."""
