"""``python -m deploy_app -i IN -o OUT -m MODELS [--publish-dicom HOST:PORT:AET] [--publish-dicomweb URL]``.

Also ``python3 DIR`` with DIR this folder under any name: what a MAP built by ``monai-deploy package``
runs (``python3 /opt/holoscan/app``), where the folder is not importable as ``deploy_app``.
"""

import sys

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
    sys.exit(main())
