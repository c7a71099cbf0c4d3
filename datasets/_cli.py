"""The entry point shared by the preparation scripts: their input checks raise FileNotFoundError / ValueError with a
one-sentence message naming the missing file and where to get it; run from the command line, that is one line
``error: <message>`` on stderr and exit status 2 (as argparse does for a bad argument), not a traceback."""

from universal_seg.config import usage_error


def run(main) -> None:
    """Calls ``main()``; an input error it raises ends the process as described above."""
    try:
        main()
    except (FileNotFoundError, ValueError) as err:
        usage_error(err)
