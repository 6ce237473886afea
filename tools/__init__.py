"""StyleKit's command lines (each module's ``main``); library code lives in the pack's core."""


def run_command(parser, run, argv=None) -> int:
    """A tool's main: parse ``argv`` with ``parser``, call ``run(args)``; a StyleKit refusal is printed as
    ``error: ...`` and ends with exit code 2 (nothing is half-written: the core never is)."""
    import sys

    from ..errors import StyleKitError
    a = parser.parse_args(argv)
    try:
        run(a)
    except StyleKitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
