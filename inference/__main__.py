import logging
import os
import sys

from inference.app.cli import main

if __name__ == "__main__":
    code = main()
    # Every label map and the report are written, closed and renamed by now, and every worker
    # thread has been joined: leave without the interpreter's teardown, which with a CUDA context
    # costs about a second (destroying the context, freeing each module) of a fresh process's time.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
