"""Shared fixtures. Unit tests use tiny random-weight networks; integration tests use the real
offline weights and the real images under MONAI_CIR_DATA (default ../shared/data)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from monai_cir.config import data_root  # noqa: E402

TINY_TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


# the reports' score range in tests that write an SR or a PDF without a network: Eq. 9 over three levels
SCORE_RANGE = (-3.0, 3.0)


def make_tiny_net(**kwargs):
    """A tiny random network with the full architecture (timm's test_efficientnet + a 1-layer BERT)."""
    from monai_cir.networks import create_model

    torch.manual_seed(0)
    kwargs.setdefault("image_size", 64)
    return create_model(pretrained=False, image_model="test_efficientnet", text_config_overrides=TINY_TEXT, **kwargs).eval()


def activate_head(net, seed: int = 1):
    """Give the zero-initialised gates and projections non-trivial values, so that text, masks and
    the projection residuals all contribute (an untrained head is the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.head_parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return net


@pytest.fixture(scope="session")
def tiny_net():
    return make_tiny_net()


@pytest.fixture(scope="session")
def offline_net():
    """The offline default (EfficientNet-Lite2 + MiniLM, pretrained) at 260 px, untrained head."""
    from monai_cir.networks import ComposedRetrievalNet

    return ComposedRetrievalNet.offline_default(image_size=260).eval()


@pytest.fixture(scope="session")
def shared_data():
    root = data_root()
    if not (root / "derm7pt").is_dir() or not (root / "isic-uda1").is_dir():
        pytest.fail(f"the real collections are expected under {root} (set MONAI_CIR_DATA); see ../shared/data/README.md")
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny batches: on a busy 2-core machine, OpenMP's spinning threads made them 40x slower. A module that wants
    it says ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def wait_for(predicate, timeout: float = 20.0, what: str = "", every: float = 0.05):
    """``predicate()``'s first truthy value within ``timeout`` seconds, polled every ``every`` seconds; else fail."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
