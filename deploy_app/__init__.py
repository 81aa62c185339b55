"""MONAI Deploy application of monai-cir: a DICOM dermoscopy study (+ its report text) in, ranked
similar library cases out, each with how its diagnosis was confirmed (TID 1500 SR, Encapsulated PDF, plain PDF, results.json).

Run it as the SDK's apps run::

    python -m deploy_app -i INPUT_DICOM_FOLDER -o OUTPUT_FOLDER -m MODELS_FOLDER
    HOLOSCAN_INPUT_PATH=... HOLOSCAN_OUTPUT_PATH=... HOLOSCAN_MODEL_PATH=... python -m deploy_app

See ``docs/deploy.md`` for the MODELS layout, the inputs accepted and the outputs. Importing this
package is cheap; :mod:`deploy_app.app` imports the Deploy SDK (and holoscan).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

__version__ = "0.1.0"
APP_NAME = "monai-cir-similar-cases"

__all__ = ["APP_NAME", "__version__"]


def _light_monai_namespace() -> None:
    """Make ``import monai.deploy`` cost only the Deploy SDK.

    The Deploy SDK lives in the ``monai`` namespace, and MONAI core's ``monai/__init__.py`` imports
    every MONAI submodule eagerly (apps, networks, transforms, torchvision, transformers: ~5 CPU
    seconds, about half of the app's start), none of which the app uses. When ``monai`` is not
    imported yet, it is registered without running its ``__init__``; the first import of any other
    MONAI submodule (``monai.transforms``...) runs the real ``__init__`` then (MONAI's own import
    order, which its submodules' circular imports need), so MONAI code imported later in the same
    process (a service, a test session) gets the full package as usual."""
    if "monai" in sys.modules:
        return
    spec = importlib.util.find_spec("monai")
    if spec is None or not spec.submodule_search_locations or spec.origin is None:
        return
    package = types.ModuleType("monai")
    package.__path__ = list(spec.submodule_search_locations)
    package.__file__ = spec.origin
    package.__spec__ = spec
    package.__loader__ = spec.loader
    package.__package__ = "monai"
    sys.modules["monai"] = package
    sys.meta_path.insert(0, _FullMonaiOnFirstUse(package))


class _FullMonaiOnFirstUse:
    """Meta-path finder: on the first import of a MONAI core submodule, run ``monai/__init__.py``
    into the registered package, then hand the (now loaded) submodule to the import system as is."""

    _LIGHT = ("monai.deploy", "monai._version")

    def __init__(self, package: types.ModuleType) -> None:
        self.package = package

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if not name.startswith("monai.") or name.startswith(self._LIGHT):
            return None
        sys.meta_path.remove(self)
        code = compile(Path(self.package.__file__).read_bytes(), self.package.__file__, "exec")
        exec(code, self.package.__dict__)  # noqa: S102 (MONAI's own __init__, as `import monai` runs it)
        module = sys.modules.pop(name, None)
        if module is None:  # not a submodule MONAI's __init__ loads: import it normally
            return None
        # the import system is loading `name`: give it the module the __init__ just loaded
        return importlib.util.spec_from_loader(name, _LoadedModule(module))


class _LoadedModule:
    """Loader returning an already executed module, keeping its own spec."""

    def __init__(self, module: types.ModuleType) -> None:
        self.module = module
        self.spec = module.__spec__

    def create_module(self, spec: Any) -> types.ModuleType:
        return self.module

    def exec_module(self, module: types.ModuleType) -> None:
        module.__spec__, module.__loader__ = self.spec, self.spec.loader


_light_monai_namespace()  # before any deploy_app module imports monai.deploy

