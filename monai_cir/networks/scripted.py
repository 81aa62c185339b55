"""The encoder artifact: TorchScript traces of the two frozen encoders, for a fast start on CPU.

Building the eager encoders means importing timm (and the torchvision it imports) and transformers,
about 5 s of a fresh process (docs/deploy.md, Latency). The deploy app only runs them forward, so the
index build (``monai-cir index build`` / ``add``, the demo) also writes, next to the index,

    <index>/encoders/manifest.json     format, the encoders' fingerprint, names, image size, torch version,
                                       what the wrappers need (channels, normalisation, tokenizer settings)
                                       and the SHA-256 of every file below
    <index>/encoders/image.ts          torch.jit.trace of the image backbone (timm features_only), CPU
    <index>/encoders/text.ts           torch.jit.trace of the transformers model (token embeddings), CPU
    <index>/encoders/tokenizer.json    the fast tokenizer the text encoder uses (``tokenizers`` package)

and :func:`load_encoder_artifact` rebuilds both encoders from it with torch and ``tokenizers`` alone.
:class:`ScriptedImageEncoder` / :class:`ScriptedTextEncoder` share their input handling with the eager
classes (:class:`~monai_cir.networks.image_encoder.FeatureLevelEncoder`,
:class:`~monai_cir.networks.text_encoder.TokenEncoder`), and their ``state_dict`` holds exactly the eager
encoders' keys and values, so the model fingerprint an index records comes out the same.

Why TorchScript traces and not ``torch.export`` (.pt2): loading a .pt2 program imports ``torch._dynamo``
(3.8 s in a fresh process here, most of what is saved), loading both traces takes 0.3 s. A trace's first
forwards run TorchScript's profiling executor (0.2-0.3 s CPU for the first two image forwards here, seconds
on a busy machine); run without graph optimisation (``torch.jit.optimized_execution(False)``) the first
forward costs 0.09 s and every later one what the eager one costs, with bit-identical outputs (the plain
interpreter runs the same aten ops as eager). The traces are checked against the eager encoders when
written (other batch sizes and text lengths than the traced ones): one that does not reproduce them is
not written.

Trust: TorchScript files are code. The artifact is produced locally by the index build from the encoders
the checkpoint names and is trusted like the index it sits in; :func:`load_encoder_artifact` refuses one
whose files do not match the SHA-256 its manifest records, whose recorded encoder fingerprint is not the
one the checkpoint was trained on, or that was written for another image size or torch version (the
caller then builds the eager encoders).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import sha256_file
from .image_encoder import FeatureLevelEncoder
from .text_encoder import TokenEncoder

__all__ = [
    "ENCODER_ARTIFACT_DIR",
    "ENCODER_ARTIFACT_FORMAT",
    "EncoderArtifactError",
    "FastTokenizer",
    "ScriptedImageEncoder",
    "ScriptedTextEncoder",
    "artifact_is_current",
    "load_encoder_artifact",
    "refresh_encoder_artifact",
    "write_encoder_artifact",
]

logger = logging.getLogger(__name__)

ENCODER_ARTIFACT_DIR = "encoders"
ENCODER_ARTIFACT_FORMAT = "monai-cir-encoders/1"
_MANIFEST, _IMAGE, _TEXT, _TOKENIZER = "manifest.json", "image.ts", "text.ts", "tokenizer.json"
# texts the write-time check tokenises and encodes (other lengths and batch sizes than the trace's)
_CHECK_TEXTS = (
    ["", "atypical pigment network", "irregular streaks, blue-whitish veil and regression structures; raised lesion on the back of a 54-year-old man"],
    ["dots and globules"],
)


class EncoderArtifactError(ValueError):
    """The encoder artifact is missing, stale or damaged (the message says which); use the eager encoders."""


class FastTokenizer:
    """A ``tokenizers.Tokenizer`` called the way :meth:`TokenEncoder.tokenize` and the explanations call a
    transformers fast tokenizer (the same backend, padding and truncation, so the same ids), without
    importing transformers. Thread-safe (padding / truncation are settings of the shared backend)."""

    def __init__(
        self, tokenizer_json: str, pad_token: str, pad_id: int, pad_type_id: int, special_tokens: Sequence[str], model_max_length: int,
        input_names: Sequence[str] = ("input_ids", "token_type_ids", "attention_mask"),
    ) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_str(tokenizer_json)
        self._lock = threading.Lock()
        self.pad_token, self.pad_token_id, self.pad_token_type_id = pad_token, int(pad_id), int(pad_type_id)
        self.all_special_tokens = list(special_tokens)
        self.model_max_length = int(model_max_length)
        self.input_names = list(input_names)  # what the transformers tokenizer returned (a RoBERTa's has no token_type_ids)

    def __call__(
        self, texts: Sequence[str], add_special_tokens: bool = True, padding: bool = False, truncation: bool = False,
        max_length: int | None = None, return_tensors: str | None = None,
    ) -> dict[str, Any]:
        with self._lock:
            if truncation:
                self._tokenizer.enable_truncation(int(max_length or self.model_max_length))
            else:
                self._tokenizer.no_truncation()
            if padding:
                self._tokenizer.enable_padding(pad_id=self.pad_token_id, pad_type_id=self.pad_token_type_id, pad_token=self.pad_token)
            else:
                self._tokenizer.no_padding()
            encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        fields = {"input_ids": "ids", "token_type_ids": "type_ids", "attention_mask": "attention_mask"}
        out = {name: [getattr(e, fields[name]) for e in encodings] for name in self.input_names}
        if return_tensors == "pt":
            return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}
        if return_tensors is not None:
            raise ValueError(f"return_tensors={return_tensors!r} is not supported: use 'pt' or None")
        return out

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self._tokenizer.id_to_token(int(i)) for i in ids]


def _drop_keys_hook(names: Sequence[str]) -> Any:
    """A state-dict hook that leaves out buffers a trace holds as ordinary ones but the eager module
    registers as non-persistent (e.g. BERT's ``position_ids``): the wrapper's state_dict is then the eager
    encoder's, key for key, and so is every fingerprint computed from it."""

    def hook(module: nn.Module, state: dict[str, Any], prefix: str, local_metadata: Any) -> None:
        for name in names:
            state.pop(prefix + name, None)

    return hook


_FOLD_LOCK = threading.Lock()  # a module-level lock: an encoder holding one could not be deep-copied


class ScriptedImageEncoder(FeatureLevelEncoder):
    """``f_vis`` around a traced backbone: same normalisation, levels and state_dict as the eager one.

    The trace is valid for ``image_size`` x ``image_size`` inputs only (TF-"same" padding is computed from
    the input size and traced as constants), so other sizes are refused."""

    def __init__(self, backbone: torch.jit.ScriptModule, spec: dict[str, Any]) -> None:
        super().__init__()
        self.backbone = backbone
        self.model_name = str(spec["model_name"])
        self.pretrained = "scripted"
        self.image_size = int(spec["image_size"])
        self.channels = [int(c) for c in spec["channels"]]
        self.reductions = [int(r) for r in spec["reductions"]]
        self.channels_last_output = bool(spec["channels_last_output"])
        self.register_buffer("mean", torch.tensor(spec["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec["std"]).view(1, 3, 1, 1), persistent=False)
        self._register_state_dict_hook(_drop_keys_hook([f"backbone.{k}" for k in spec["non_persistent"]]))
        # fold_batchnorm(): (the weights' identity and versions, the folded copy); not a submodule, so
        # neither state_dict nor the fingerprint sees it
        self._fold = False
        self._folded: tuple[tuple, torch.jit.ScriptModule] | None = None

    def fold_batchnorm(self) -> None:
        """Run the forwards without gradients (inference) on a copy of the backbone with every BatchNorm
        folded into the convolution before it (``torch.jit.freeze``), made here (0.1-0.2 s).

        A quarter to a third less CPU time per image (EfficientNet-Lite2 at 260 px, channels last, 2 threads,
        2-core AMD EPYC VM: 30 -> 23 ms alone, 29 -> 19 ms per image in forwards of 4); the same maps to float32
        rounding (folding reorders the products: max |diff| about 6e-5 on maps whose values reach 10-35), not bit
        for bit. The deploy app turns it on; training, forwards with gradients and the artifact's write-time
        check run the trace as traced. The copy follows the weights: after ``.to()``, ``load_state_dict`` or an
        in-place update, the next inference forward folds them again."""
        self._fold = True
        self._folded_backbone()

    def _weights_state(self) -> tuple:
        return tuple((t.data_ptr(), t._version) for t in (*self.backbone.parameters(), *self.backbone.buffers()))

    def _folded_backbone(self) -> torch.jit.ScriptModule:
        with _FOLD_LOCK:
            state = self._weights_state()
            if self._folded is None or self._folded[0] != state:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)  # torch.jit.freeze's deprecation notice
                    self._folded = state, torch.jit.freeze(self.backbone)  # a folded clone
            return self._folded[1]

    def run_backbone(self, images: torch.Tensor) -> Sequence[torch.Tensor]:
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"the scripted image encoder was traced at {self.image_size}x{self.image_size} px, got images of "
                f"{tuple(images.shape[-2:])}: preprocess to the network's image_size, or use the eager encoder (load_model)"
            )
        backbone = self._folded_backbone() if self._fold and not self.training and not torch.is_grad_enabled() else self.backbone
        # see the module docstring: no profiling runs. The switch is per thread (TorchScript keeps it
        # thread-local), so concurrent forwards in other threads are not affected.
        with torch.jit.optimized_execution(False):
            return backbone(images)


class ScriptedTextEncoder(TokenEncoder):
    """``f_text`` around a traced transformers model and a ``tokenizers`` tokenizer: same tokens, token
    embeddings and state_dict as the eager :class:`~monai_cir.networks.text_encoder.TextEncoder`."""

    def __init__(self, model: torch.jit.ScriptModule, tokenizer: FastTokenizer, spec: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.name_or_path = str(spec["name_or_path"])
        self.max_length = int(spec["max_length"])
        self.dim = int(spec["dim"])
        self.input_names = [str(n) for n in spec["input_names"]]
        self._register_state_dict_hook(_drop_keys_hook([f"model.{k}" for k in spec["non_persistent"]]))

    def hidden_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.jit.optimized_execution(False):
            return self.model(**{name: batch[name] for name in self.input_names})["last_hidden_state"]


# ------------------------------------------------------------------------------------------ writing
def _same_state(scripted: nn.Module, eager: nn.Module, what: str) -> None:
    ours, theirs = scripted.state_dict(), eager.state_dict()
    if set(ours) != set(theirs):
        raise EncoderArtifactError(f"the traced {what} has other weights than the eager one: {sorted(set(ours) ^ set(theirs))[:5]}")
    bad = [k for k in theirs if not torch.equal(ours[k].cpu(), theirs[k].cpu())]
    if bad:
        raise EncoderArtifactError(f"the traced {what} holds other values than the eager one: {bad[:5]}")


def _check_equal(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], what: str) -> None:
    for x, y in zip(a, b, strict=True):
        if x.shape != y.shape or not torch.allclose(x, y, rtol=1e-5, atol=1e-5):
            diff = float((x - y).abs().max()) if x.shape == y.shape else float("nan")
            raise EncoderArtifactError(f"the traced {what} does not reproduce the eager one (shapes {tuple(x.shape)} / {tuple(y.shape)}, max |diff| {diff})")


def _artifact_spec(net: Any) -> dict[str, Any]:
    """The manifest fields that say which network an artifact serves (checked on load)."""
    from .checkpoint import encoder_fingerprint

    return {
        "format": ENCODER_ARTIFACT_FORMAT,
        "encoder_fingerprint": encoder_fingerprint(net),
        "image_model": net.config["image_model"],
        "text_model": net.config["text_model"],
        "image_size": int(net.image_size),
        "torch": torch.__version__,
    }


def artifact_is_current(directory: str | Path, net: Any) -> bool:
    """Does ``directory`` hold an artifact written for ``net``'s encoders, image size and this torch?"""
    try:
        manifest = json.loads((Path(directory) / _MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and all(manifest.get(k) == v for k, v in _artifact_spec(net).items())


@torch.no_grad()
@contextlib.contextmanager
def _logger_quiet(name: str) -> Iterator[None]:
    """Only errors of logger ``name`` while the block runs; its level is restored after."""
    target = logging.getLogger(name)
    level = target.level
    target.setLevel(logging.ERROR)
    try:
        yield
    finally:
        target.setLevel(level)


def write_encoder_artifact(net: Any, directory: str | Path) -> Path:
    """Trace ``net``'s two encoders on CPU and write them to ``directory`` (``<index>/encoders``), checked
    against the eager encoders first; the folder is written whole under a temporary name and replaces
    the old one by rename. Raises :class:`EncoderArtifactError` when a trace does not reproduce its eager
    encoder (nothing is written then: the app builds the eager encoders)."""
    directory = Path(directory)
    spec = _artifact_spec(net)
    image_eager, text_eager = net.image_encoder, net.text_encoder
    if next(image_eager.parameters()).device.type != "cpu" or next(text_eager.parameters()).device.type != "cpu":
        image_eager, text_eager = copy.deepcopy(image_eager).cpu(), copy.deepcopy(text_eager).cpu()
    tokenizer = text_eager.tokenizer
    if not getattr(tokenizer, "is_fast", False) or not hasattr(tokenizer, "backend_tokenizer"):
        raise EncoderArtifactError(f"the text encoder's tokenizer ({type(tokenizer).__name__}) is not a fast tokenizer: no tokenizer.json to write")
    was_training = image_eager.training, text_eager.training
    image_eager.eval()
    text_eager.eval()
    try:
        size = int(net.image_size)
        generator = torch.Generator().manual_seed(0)
        images = torch.rand(2, 3, size, size, generator=generator)
        example = text_eager.tokenize(["pigment network", "atypical dots and globules"])
        input_names = list(example.keys())
        # the tracer's warnings about Python values in the models, and transformers' about a training loss this
        # model never computes (tracing reads the model's loss_function property)
        with warnings.catch_warnings(), _logger_quiet("transformers.modeling_utils"):
            warnings.simplefilter("ignore")
            try:
                image_trace = torch.jit.trace(image_eager.backbone, (image_eager.normalize(images),), check_trace=False)
                # by keyword: the tokenizer's key order is not the model's argument order
                text_trace = torch.jit.trace(text_eager.model, example_kwarg_inputs=dict(example), strict=False, check_trace=False)
            except Exception as err:  # noqa: BLE001 (a backbone TorchScript cannot trace: no artifact, the eager path stays)
                raise EncoderArtifactError(f"TorchScript cannot trace the encoders ({type(err).__name__}: {err})") from err
        image_spec = {
            "model_name": image_eager.model_name, "image_size": size,
            "channels": list(image_eager.channels), "reductions": list(image_eager.reductions),
            "channels_last_output": bool(image_eager.channels_last_output),
            "mean": image_eager.mean.flatten().tolist(), "std": image_eager.std.flatten().tolist(),
            "non_persistent": sorted(set(image_trace.state_dict()) - set(image_eager.backbone.state_dict())),
        }
        backend = json.loads(tokenizer.backend_tokenizer.to_str())
        backend["truncation"] = backend["padding"] = None  # set per call, as transformers does
        tokenizer_json = json.dumps(backend)
        text_spec = {
            "name_or_path": text_eager.name_or_path, "max_length": int(text_eager.max_length), "dim": int(text_eager.dim),
            "input_names": input_names,
            "non_persistent": sorted(set(text_trace.state_dict()) - set(text_eager.model.state_dict())),
            "pad_token": tokenizer.pad_token, "pad_id": int(tokenizer.pad_token_id),
            "pad_type_id": int(getattr(tokenizer, "pad_token_type_id", 0)),
            "special_tokens": list(tokenizer.all_special_tokens),
            "model_max_length": int(min(tokenizer.model_max_length, 1 << 30)),
        }
        # the wrappers must be the eager encoders: weights, tokens, outputs at other shapes than traced
        image_scripted = ScriptedImageEncoder(image_trace, image_spec)
        text_scripted = ScriptedTextEncoder(text_trace, FastTokenizer(tokenizer_json, **_tokenizer_args(text_spec)), text_spec)
        _same_state(image_scripted, image_eager, "image encoder")
        _same_state(text_scripted, text_eager, "text encoder")
        for n in (1, 3):
            batch = torch.rand(n, 3, size, size, generator=generator)
            _check_equal(image_scripted(batch), image_eager(batch), f"image encoder (batch of {n})")
        for texts in _CHECK_TEXTS:
            ours, theirs = text_scripted.tokenize(texts), text_eager.tokenize(texts)
            if {k: v.tolist() for k, v in ours.items()} != {k: v.tolist() for k, v in theirs.items()}:
                raise EncoderArtifactError(f"the tokenizer.json tokenizer gives other tokens than the eager one for {texts}")
            _check_equal(text_scripted(texts), text_eager(texts), f"text encoder ({len(texts)} texts)")
    finally:
        image_eager.train(was_training[0])
        text_eager.train(was_training[1])

    from ..grid_store import folder_written_whole

    with folder_written_whole(directory) as tmp:
        image_trace.save(str(tmp / _IMAGE))
        text_trace.save(str(tmp / _TEXT))
        (tmp / _TOKENIZER).write_text(tokenizer_json)
        manifest = {**spec, "image": image_spec, "text": text_spec, "files": {name: sha256_file(tmp / name) for name in (_IMAGE, _TEXT, _TOKENIZER)}}
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=1))
    logger.info("wrote the encoder artifact %s (TorchScript, CPU, %d px)", directory, size)
    return directory


def refresh_encoder_artifact(net: Any, index_dir: str | Path) -> Path | None:
    """Write ``<index_dir>/encoders`` for ``net`` unless the one there is already for its encoders, image
    size and this torch (``index add`` keeps it). What the index build calls after saving the index: a
    failure only costs the app's fast start, so it is logged, not raised (None)."""
    directory = Path(index_dir) / ENCODER_ARTIFACT_DIR
    if artifact_is_current(directory, net):
        return directory
    try:
        return write_encoder_artifact(net, directory)
    except EncoderArtifactError as err:
        logger.warning("no encoder artifact written (the app will build the encoders with timm and transformers): %s", err)
        return None


def _tokenizer_args(text_spec: dict[str, Any]) -> dict[str, Any]:
    return {k: text_spec[k] for k in ("pad_token", "pad_id", "pad_type_id", "special_tokens", "model_max_length", "input_names")}


# ------------------------------------------------------------------------------------------ loading
def load_encoder_artifact(directory: str | Path, expected: dict[str, Any]) -> tuple[ScriptedImageEncoder, ScriptedTextEncoder]:
    """The scripted image and text encoders of the artifact in ``directory``, on CPU, in eval mode.

    ``expected``: what the checkpoint says the encoders must be: ``encoder_fingerprint``, ``image_model``,
    ``text_model``, ``image_size``. Raises :class:`EncoderArtifactError` (the message says what was wrong)
    for a missing folder, a file whose SHA-256 differs from the manifest's (truncated, modified), another
    fingerprint, model, image size or torch version, or a file TorchScript cannot load."""
    directory = Path(directory)
    if not (directory / _MANIFEST).is_file():
        raise EncoderArtifactError(f"no encoder artifact in {directory} (`monai-cir index build` / `index add` writes it)")
    try:
        manifest = json.loads((directory / _MANIFEST).read_text())
    except (OSError, ValueError) as err:
        raise EncoderArtifactError(f"the encoder artifact manifest {directory / _MANIFEST} is unreadable ({err})") from err
    if not isinstance(manifest, dict) or manifest.get("format") != ENCODER_ARTIFACT_FORMAT:
        raise EncoderArtifactError(f"{directory} is not an encoder artifact of format {ENCODER_ARTIFACT_FORMAT!r}")
    wanted = {**{k: expected[k] for k in ("encoder_fingerprint", "image_model", "text_model")}, "image_size": int(expected["image_size"]), "torch": torch.__version__}
    stale = [f"{k} {manifest.get(k)!r} (needed: {v!r})" for k, v in wanted.items() if manifest.get(k) != v]
    if stale:
        raise EncoderArtifactError(f"the encoder artifact in {directory} was written for another network or torch: {'; '.join(stale)}")
    try:
        files = manifest["files"]
        for name in (_IMAGE, _TEXT, _TOKENIZER):
            if sha256_file(directory / name) != files[name]:
                raise EncoderArtifactError(f"{directory / name} is damaged: its SHA-256 is not the one its manifest records")
        with warnings.catch_warnings():  # torch 2.14 marks torch.jit.load deprecated; the choice is explained above
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.load")
            image_trace = torch.jit.load(str(directory / _IMAGE), map_location="cpu")
            text_trace = torch.jit.load(str(directory / _TEXT), map_location="cpu")
        text_spec = manifest["text"]
        tokenizer = FastTokenizer((directory / _TOKENIZER).read_text(), **_tokenizer_args(text_spec))
        image_encoder = ScriptedImageEncoder(image_trace, manifest["image"])
        text_encoder = ScriptedTextEncoder(text_trace, tokenizer, text_spec)
    except EncoderArtifactError:
        raise
    except Exception as err:  # noqa: BLE001 (whatever is wrong with the files, the eager encoders remain)
        raise EncoderArtifactError(f"the encoder artifact in {directory} cannot be loaded ({type(err).__name__}: {err})") from err
    return image_encoder.eval(), text_encoder.eval()
