"""convnets: the deep convolutional network case studies, exact to their papers.

One module per command, each with ``add_parser(subparsers)`` and ``run(args)``. :func:`main` is the
one error boundary: an expected failure (a :class:`~convnets.errors.ConvnetsError`, or a file or
disk the operating system refused) prints ``convnets CMD: error: MESSAGE`` and exits with status 2,
the same form and status argparse uses for a bad option. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import re
import sys

from convnets.errors import ConvnetsError

# The order `convnets --help` lists them in: look at networks, then data, train, evaluate, deploy.
COMMANDS = ("list", "summary", "cost", "augment", "train", "transfer", "evaluate", "predict", "export", "latency",
            "fit_device", "weights", "experiment")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="convnets", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"convnets.cli.{name}").add_parser(sub)
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The parsed command line; an option the command does not know is reported by that command's parser,
    so its message reads ``convnets train: error: unrecognized arguments: ...`` like every other."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
        commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def describe_os_error(err: OSError) -> str:
    """``path: reason`` for a file the operating system refused, with what to do for a full or read-only disk."""
    where = f"{err.filename}: " if err.filename else ""
    reason = err.strerror or str(err)
    hints = {errno.ENOSPC: " (free some space or choose another --out; the last checkpoint written is kept)",
             errno.EROFS: " (choose a writable --out)", errno.EACCES: " (check the permissions of that path)"}
    return where + reason + hints.get(err.errno, "")


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):
        # A terminal whose locale cannot encode a class name ('Ü', 'T恤') prints it escaped, not a traceback.
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        args = parse_args(argv)
        return args.run(args) or 0
    except KeyboardInterrupt:  # also while the commands import or the arguments are read
        return 130
    except BrokenPipeError:  # output piped into `head` and closed: not an error
        sys.stderr.close()
        return 0
    except ConvnetsError as err:
        return fail(args.command, str(err))
    except OSError as err:  # a missing file, a full or read-only disk, a refused connection
        return fail(args.command, describe_os_error(err))
    except (MemoryError, RuntimeError) as err:
        if not is_out_of_memory(err):
            raise
        return fail(args.command, f"out of memory: {describe_allocation(err)}; use a smaller batch size or input size")


def is_out_of_memory(err: BaseException) -> bool:
    """An allocation the machine refused (CPU or GPU), as opposed to a bug: too large a batch or input for it."""
    import torch

    return isinstance(err, MemoryError | torch.OutOfMemoryError) or "can't allocate memory" in str(err)


def describe_allocation(err: BaseException) -> str:
    """What could not be allocated, in one line: PyTorch's CPU message is a C++ assertion."""
    tried = re.search(r"tried to allocate (\d+) bytes", str(err))
    if tried:
        return f"{int(tried[1]) / 2**30:.1f} GiB could not be allocated"
    lines = str(err).strip().splitlines()
    return lines[0][:200] if lines else type(err).__name__


def fail(command: str, message: str) -> int:
    print(f"convnets {command}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
