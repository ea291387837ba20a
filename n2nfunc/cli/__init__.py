"""The n2nfunc command line: train, eval, denoise, export-submission.

Every option is checked before any work starts (``argtypes`` checks each value, ``checks``
the options against each other); a bad value gives the usage line and one ``error:`` line,
exit status 2, and nothing is written. The modules, each with one job:

- ``parser``: the commands and their options;
- ``checks``: the checks between options;
- ``train``: ``n2nfunc train``; ``pairs``, the data it and ``eval`` read; ``runs``, a run's
  folder, its checkpoint's record of the command line and ``--resume``;
- ``use``: ``eval``, ``denoise`` and ``export-submission``;
- ``common``: what they all share;
- here: :func:`main` and :func:`entry`, which run a command line and turn failures into one
  line and an exit status.
"""

import signal
import sys

from .. import launch
from .checks import _check_precision
from .common import Terminated, _rank, _stopped_code
from .parser import _refuse_unknown_options, build_parser
from .runs import _unlock_all
from .use import SHIPPED_NOISE

__all__ = ["SHIPPED_NOISE", "build_parser", "entry", "main"]


def main(argv=None) -> int:
    """Run the command line; returns the exit status (0 done, 2 bad usage or data)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    _escape_unprintable()
    try:
        try:
            parser = build_parser()
            _refuse_unknown_options(parser, argv)
            args, extra = parser.parse_known_args(argv)
            if extra:  # a stray positional: the command's usage, not the top-level one
                getattr(args, "parser", parser).error(_stray(args.command, extra))
            args.argv = argv  # for --nproc's workers
            args.check(args, args.parser.error)
            _check_precision(args, args.parser.error)
        except SystemExit as e:  # argparse: --help, --version (0) or a usage error (2)
            return e.code if isinstance(e.code, int) else 0
        except OSError as e:  # a path the checks cannot reach (a folder without permission)
            where = f"cannot reach {e.filename}" if e.filename else "cannot reach a path"
            reason = (e.strerror or str(e)).lower()
            print(f"n2nfunc {_command_of(argv)}: error: {where} ({reason})", file=sys.stderr)
            return 2
        try:
            return _run(args)
        finally:
            _unlock_all()
    except ModuleNotFoundError as e:  # an optional dependency (the viz extra) not installed
        if e.name not in OPTIONAL_MODULES:
            raise
        print(
            f"n2nfunc {_command_of(argv)}: error: this needs {OPTIONAL_MODULES[e.name]}, which "
            "is not installed: pip install 'n2nfunc[viz]'",
            file=sys.stderr,
        )
        return 2


# The positional arguments of the commands that take some
POSITIONALS = {"denoise": "one INPUT and one OUTPUT", "export-submission": "one OUT_DIR"}


def _stray(command: str, extra: list) -> str:
    """The error for arguments beyond a command's positionals (a shell glob's many files)."""
    more = " ".join(extra)
    if command not in POSITIONALS:
        return f"{command} takes options only (each starting with --), got {more}"
    hint = " (one image a command; a name with spaces goes in quotes)" * (command == "denoise")
    return f"{command} takes {POSITIONALS[command]}; more was given: {more}{hint}"


def _escape_unprintable() -> None:
    """Print what standard output's encoding lacks (a path of Chinese characters where
    output goes to a file in Windows' cp1252, or under ``PYTHONIOENCODING=ascii``) as
    backslash escapes, as standard error does: not an error after the work is done."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)  # (a replaced stdout may lack it)
    if reconfigure is not None:
        reconfigure(errors="backslashreplace")


def _command_of(argv: list) -> str:
    """The command word of a command line, for an error said before it is parsed."""
    return next((a for a in argv if not a.startswith("-")), "")


# The optional dependencies of the viz extra, by the module a missing one fails to import
OPTIONAL_MODULES = {"PIL": "Pillow (image files)", "matplotlib": "matplotlib (the plots)"}


def _terminated(signum, frame):
    raise Terminated


def entry() -> int:
    """The console script and ``python -m n2nfunc``: :func:`main`, SIGTERM raising
    :class:`Terminated` in a process of its own (not in a data-parallel worker: there the
    signal must stop the process at once, even while torch waits in C++ for a rendezvous or
    a collective, which a Python handler would wait for; nor where a handler is set)."""
    if not launch.is_worker() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminated)
    return main()


def _run(args) -> int:
    """``args.func(args)``, its failures said in one line and turned into exit codes."""
    try:
        return args.func(args)
    except KeyboardInterrupt as e:  # (inside an epoch train says which state it kept, itself)
        print(f"\nn2nfunc {args.command}: interrupted", file=sys.stderr)
        return _stopped_code(e)
    except (ValueError, FileNotFoundError) as e:
        print(f"n2nfunc {args.command}: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # a loss that is not finite: in a data-parallel run the
        if _rank() == "0":  # mean of all ranks', so every rank stops here and rank 0 says it
            print(f"n2nfunc {args.command}: error: {e}", file=sys.stderr)
        return launch.NON_FINITE_LOSS if launch.is_worker() else 1
    except OSError as e:  # writing failed (disk full, permissions changed meanwhile, ...)
        where = f"{e.filename}: " if e.filename else ""
        print(f"n2nfunc {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
