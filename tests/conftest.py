import os

import pytest
import torch

# Two threads unless STYLEKIT_TEST_THREADS says otherwise (make test TEST_THREADS=1): no tolerance
# depends on it (see roundoff_tolerance).
torch.set_num_threads(int(os.environ.get("STYLEKIT_TEST_THREADS") or min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def sd15_unet():
    import stylekit.bridge  # noqa: F401  (registers diffusers' networks with the layer readers: a file may run alone)
    from tiny_models import tiny_sd15_unet
    return tiny_sd15_unet(seed=0)


@pytest.fixture(scope="session")
def sdxl_unet():
    import stylekit.bridge  # noqa: F401
    from tiny_models import tiny_sdxl_unet
    return tiny_sdxl_unet(seed=0)


@pytest.fixture
def sd15(sd15_unet):
    from stylekit.bridge import BridgePatcher
    return BridgePatcher(sd15_unet)


@pytest.fixture
def sdxl(sdxl_unet):
    from stylekit.bridge import BridgePatcher
    return BridgePatcher(sdxl_unet)


def roundoff_tolerance(reference: torch.Tensor, model, steps: int, dtype=torch.float32) -> float:
    """The largest difference two samplings of ``steps`` steps through ``model`` may show when they
    differ only in the order of floating-point reductions (batch layout, split cond/uncond calls, thread
    count, the CPU's kernels), not in what they compute.

    Reordering a reduction changes its result by up to about eps of the activations' scale; every
    reduction layer (Linear, Conv2d: ``model``'s) does that once per model call, and to first order
    those round-offs add up along the sampling trajectory. So: steps x layers x eps(dtype) x max|ref|.
    A real difference in what is computed (a style leaking into a row, a wrong chunk) is of the order
    of the activations themselves, orders of magnitude above this bound.
    """
    layers = sum(isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) for m in model.unet.modules())
    return steps * layers * torch.finfo(dtype).eps * float(reference.abs().max())


@pytest.fixture(scope="session")
def free_port():
    """A function giving a free TCP port on 127.0.0.1 (loopback only)."""
    import socket

    def pick() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    return pick


@pytest.fixture
def roundoff():
    return roundoff_tolerance


def pytest_report_header(config):
    path = os.environ.get("COMFYUI_PATH")
    return f"tier 3 (real ComfyUI): {'COMFYUI_PATH=' + path if path else 'skipped, COMFYUI_PATH is unset'}"


# One marker per method (``pytest -m deadiff`` selects every DEADiff test, wherever it lives): a test
# belongs to a method when its file, name or parameters name the method or one of its parts.
METHOD_WORDS = {
    "deadiff": ("deadiff", "qformer", "q_former"),
    "styleid": ("styleid", "magicstyle", "fusion", "invers", "ddim"),
    "stylestudio": ("stylestudio", "adain", "teacher", "adapter", "style_guidance", "negative_style"),
    "catversion": ("catversion", "prefix"),
    "stylerdalle": ("stylerdalle", "dvae", "translator"),
}


def methods_of(nodeid: str) -> list:
    text = nodeid.lower()
    return [m for m, words in METHOD_WORDS.items() if any(w in text for w in words)]


def pytest_collection_modifyitems(config, items):
    for item in items:
        for method in methods_of(item.nodeid):
            item.add_marker(getattr(pytest.mark, method))
