"""MONAI Deploy application of monai-cir: a DICOM dermoscopy study (+ its report text) in, ranked
similar library cases out, each with how its diagnosis was confirmed (TID 1500 SR, Encapsulated PDF, plain PDF, results.json).

Run it as the SDK's apps run::

    python -m deploy_app -i INPUT_DICOM_FOLDER -o OUTPUT_FOLDER -m MODELS_FOLDER
    HOLOSCAN_INPUT_PATH=... HOLOSCAN_OUTPUT_PATH=... HOLOSCAN_MODEL_PATH=... python -m deploy_app

See ``docs/deploy.md`` for the MODELS layout, the inputs accepted and the outputs. Importing this
package is cheap; :mod:`deploy_app.app` imports the Deploy SDK (and holoscan), which is slow.
"""

__version__ = "0.1.0"
APP_NAME = "monai-cir-similar-cases"

__all__ = ["APP_NAME", "__version__"]
