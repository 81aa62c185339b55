"""``python -m deploy_app -i IN -o OUT -m MODELS [--publish-dicom HOST:PORT:AET] [--publish-dicomweb URL]``."""

import sys

from .app import main

if __name__ == "__main__":
    sys.exit(main())
