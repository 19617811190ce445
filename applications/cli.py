"""What every program's `main` does around its work: flags in, one clear line out on bad input."""

import sys

from absl import app, flags


def main_for(run, flag_names, errors=(ValueError, FileNotFoundError)):
    """An absl `main` that calls `run({flag: value})` and turns `errors` into one line.

    Bad flags or bad files give `error: ...` on stderr and exit status 2 instead of a
    traceback; anything else keeps its traceback (a bug, not the user's input).
    """

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
        try:
            run({name: flags.FLAGS[name].value for name in flag_names})
        except errors as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        return 0

    return main
