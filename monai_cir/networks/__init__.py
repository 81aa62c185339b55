"""Networks of the composed retrieval model (paper Fig. 2): one module per part."""

from .alignment import LevelAlignment, RegionMaskHead, ResidualProjection
from .composed_retrieval import (
    DEFAULT_PRESET,
    LEVEL_NAMES,
    MODEL_PRESETS,
    ComposedRetrievalNet,
    QueryEncoding,
    check_images,
    check_texts,
    create_model,
    preprocessing_signature,
)
from .checkpoint import encoder_fingerprint, load_model, save_checkpoint
from .composer import CrossModalTransformer
from .diagnosis_prior import DiagnosisPrior
from .image_encoder import FeatureLevelEncoder, HierarchicalImageEncoder, load_offline_efficientnet_lite
from .scripted import (
    ENCODER_ARTIFACT_DIR,
    EncoderArtifactError,
    ScriptedImageEncoder,
    ScriptedTextEncoder,
    load_encoder_artifact,
    refresh_encoder_artifact,
    write_encoder_artifact,
)
from .text_encoder import TextEncoder, TokenEncoder, offline_minilm_path

__all__ = [
    "ComposedRetrievalNet",
    "QueryEncoding",
    "load_model",
    "save_checkpoint",
    "encoder_fingerprint",
    "create_model",
    "MODEL_PRESETS",
    "DEFAULT_PRESET",
    "LEVEL_NAMES",
    "FeatureLevelEncoder",
    "HierarchicalImageEncoder",
    "ScriptedImageEncoder",
    "ScriptedTextEncoder",
    "TokenEncoder",
    "ENCODER_ARTIFACT_DIR",
    "EncoderArtifactError",
    "load_encoder_artifact",
    "refresh_encoder_artifact",
    "write_encoder_artifact",
    "load_offline_efficientnet_lite",
    "TextEncoder",
    "offline_minilm_path",
    "CrossModalTransformer",
    "DiagnosisPrior",
    "LevelAlignment",
    "RegionMaskHead",
    "ResidualProjection",
    "check_images",
    "check_texts",
    "preprocessing_signature",
]
