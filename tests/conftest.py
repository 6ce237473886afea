import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def sd15_unet():
    from stylekit.bridge.tiny import tiny_sd15_unet
    return tiny_sd15_unet(seed=0)


@pytest.fixture(scope="session")
def sdxl_unet():
    from stylekit.bridge.tiny import tiny_sdxl_unet
    return tiny_sdxl_unet(seed=0)


@pytest.fixture
def sd15(sd15_unet):
    from stylekit.bridge import BridgePatcher
    return BridgePatcher(sd15_unet)


@pytest.fixture
def sdxl(sdxl_unet):
    from stylekit.bridge import BridgePatcher
    return BridgePatcher(sdxl_unet)


def pytest_report_header(config):
    path = os.environ.get("COMFYUI_PATH")
    return f"tier 3 (real ComfyUI): {'COMFYUI_PATH=' + path if path else 'skipped, COMFYUI_PATH is unset'}"
