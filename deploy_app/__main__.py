"""``python -m deploy_app -i IN -o OUT -m MODELS [--publish-dicom HOST:PORT:AET] [--publish-dicomweb URL]``.

Also ``python3 DIR`` with DIR this folder under any name: what a MAP built by ``monai-deploy package``
runs (``python3 /opt/holoscan/app``), where the folder is not importable as ``deploy_app``.

When the app returns, every output is written and closed: the process then runs the ``atexit``
handlers, flushes the logs and standard streams and leaves with the app's exit status, without the
interpreter's teardown of torch, holoscan and some thousand modules (2.2 s on the 2-core VM, a
quarter of a one-study run's launch-to-exit time).
"""

import sys


def _leave(code: int) -> None:
    """Exit with ``code`` now: atexit handlers, logging and the standard streams first."""
    import atexit
    import logging
    import os

    try:
        atexit._run_exitfuncs()
    finally:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(int(code or 0))


if __package__:
    from .app import main
else:  # run as a directory: load this folder as the ``deploy_app`` package, whatever its name
    import importlib.util
    from pathlib import Path

    _here = Path(__file__).resolve().parent
    _spec = importlib.util.spec_from_file_location("deploy_app", _here / "__init__.py", submodule_search_locations=[str(_here)])
    _package = importlib.util.module_from_spec(_spec)
    sys.modules["deploy_app"] = _package
    _spec.loader.exec_module(_package)
    from deploy_app.app import main

if __name__ == "__main__":
    _leave(main())
