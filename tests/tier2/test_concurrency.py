"""One patched model run from several threads at once, as ComfyUI 0.33.0's multi-GPU sampling does: one
worker thread per device, each on its own copy of the weights, every thread calling the same patch
objects and model wrappers. Each thread must get what it gets alone. CPU threads stand in for the devices.

Recompute mode is the hard case: every step, each thread's wrapper first runs the two references through
the model (recording), then samples (reading), on one shared feature store.
"""
import copy
import threading

import pytest
import torch

from stylekit.attention.feature_fusion import PRESETS
from stylekit.attention.layers import model_layers
from stylekit.bridge import sample_euler_cfg
from stylekit.models.feature_store import FeatureStore, StorePolicy
from stylekit.models.inversion import styleid_schedule
from stylekit.models.magicstyle import fusion_model, invert_pair, start_latent
from stylekit.models.stylestudio import teacher_model

THREADS, STEPS = 3, 4


def starts(inv, n=THREADS):
    """One start latent per thread: the inverted content, perturbed differently for each."""
    g = torch.Generator().manual_seed(5)
    x = start_latent(inv)
    return [x + 0.3 * torch.randn(x.shape, generator=g) for _ in range(n)]


def shared_copy(obj):
    """ComfyUI's ``deepcopy_list_dict``: dicts and lists copied, every other object (the patches) shared."""
    if isinstance(obj, dict):
        return {k: shared_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [shared_copy(v) for v in obj]
    return obj


def device_clones(patcher, n=THREADS):
    """What multi-GPU gives each device: its own copy of the network, the same patch objects."""
    clones = []
    for _ in range(n):
        c = type(patcher)(copy.deepcopy(patcher.unet), patcher.model_sampling)
        c.model_options = shared_copy(patcher.model_options)
        clones.append(c)
    return clones


def together(run, inputs):
    """``run(i, x)`` for every input, all threads released at once; exceptions re-raised."""
    barrier, out, errors = threading.Barrier(len(inputs)), [None] * len(inputs), []

    def work(i):
        try:
            barrier.wait()
            out[i] = run(i, inputs[i])
        except BaseException as e:  # noqa: BLE001  (re-raised below, in the test's thread)
            errors.append(e)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


@pytest.mark.parametrize("mode", ["store", "recompute"])
def test_fusion_from_several_threads_equals_each_alone(sd15, mode, roundoff):
    g = torch.Generator().manual_seed(0)
    content, style, ctx = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 77, 64, generator=g)
    policy = StorePolicy(layers=tuple(model_layers(sd15).select("output")), dtype=torch.float32, mode=mode)
    inv = invert_pair(sd15, content, style, ctx, styleid_schedule(sd15.model_sampling, STEPS), policy)
    model = fusion_model(sd15, inv, PRESETS["MagicStyle"])
    clones = device_clones(model)

    def run(i, x, on=None):
        with torch.no_grad():
            return sample_euler_cfg(on or clones[i], None, inv.result.sigmas, ctx, start=x)
    xs = starts(inv)
    alone = [run(i, x, model) for i, x in enumerate(xs)]
    for _ in range(2):  # twice: the threads interleave differently each time
        for a, b in zip(alone, together(run, xs)):
            assert (a - b).abs().max() <= roundoff(a, sd15, STEPS)  # threads may split reductions differently
    assert max((a - alone[0]).abs().max() for a in alone[1:]) > 0.1  # the threads did different work


def test_flux_fusion_and_teacher_from_several_threads_equal_each_alone(roundoff):
    from tiny_models import tiny_flux

    from stylekit.bridge.flux import FluxBridgePatcher
    from stylekit.models.inversion import every_step_schedule
    from stylekit.models.schedules import simple_sigmas
    flux = FluxBridgePatcher(tiny_flux(seed=0))
    g = torch.Generator().manual_seed(1)
    cond = {"c_crossattn": torch.randn(1, 6, 32, generator=g), "y": torch.randn(1, 16, generator=g),
            "guidance": torch.tensor([3.5])}
    content, style = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 4, 16, 16, generator=g)
    sig = simple_sigmas(flux.model_sampling, STEPS)
    policy = StorePolicy(layers=tuple(model_layers(flux).keys), dtype=torch.float32, mode="recompute")
    inv = invert_pair(flux, content, style, cond["c_crossattn"], every_step_schedule(sig), policy,
                      extra_conds={"y": cond["y"], "guidance": cond["guidance"]})
    model = teacher_model(fusion_model(flux, inv, PRESETS["StyleID"], weight=0.8), 0.5, float(sig[2]))
    clones = device_clones(model)

    def run(i, x, on=None):
        with torch.no_grad():
            return sample_euler_cfg(on or clones[i], None, sig, cond, start=x)
    xs = starts(inv)
    alone = [run(i, x, model) for i, x in enumerate(xs)]
    for a, b in zip(alone, together(run, xs)):
        assert (a - b).abs().max() <= roundoff(a, flux, STEPS)
    assert max((a - alone[0]).abs().max() for a in alone[1:]) > 0.1


def test_a_second_accelerator_reads_its_own_copy_and_the_cpu_takes_them_back(monkeypatch):
    """Moving the store to a second device copies it there instead of moving it from under the first one
    (the meta device stands in for the second accelerator: what matters is which table each device reads)."""
    key, sigma = ("output", 3, 0), 1.0
    store = FeatureStore(StorePolicy(layers=(key,), dtype=torch.float32), sigmas=[sigma])
    store.features[(key, sigma)] = torch.ones(2, 4, 8)
    monkeypatch.setattr(store, "_home", lambda: torch.device("cuda", 0))  # as if the features were on cuda:0
    store.move_to(torch.device("meta"))
    assert store.features[(key, sigma)].device.type == "cpu"  # the first device's table is where it was
    assert store.lookup(key, sigma, torch.device("meta")).device.type == "meta"
    assert store.lookup(key, sigma, torch.device("cpu")) is store.features[(key, sigma)]
    copy_made = store.copies[torch.device("meta")]
    store.move_to(torch.device("cuda", 0))  # the first device's own call (ComfyUI makes it every model call)
    store.move_to(torch.device("meta"))
    assert store.copies[torch.device("meta")] is copy_made  # the copy is made once, and kept
    store.move_to("cpu")  # offload: the copies go, the features move
    assert store.copies == {} and store.lookup(key, sigma, torch.device("meta")).device.type == "cpu"


def test_recording_belongs_to_the_thread_that_records():
    store = FeatureStore(StorePolicy(mode="recompute"))
    store.recording = True
    store.current["x"] = 1
    seen = []
    t = threading.Thread(target=lambda: seen.append((store.recording, dict(store.current))))
    t.start()
    t.join()
    assert seen == [(False, {})] and store.recording and store.current == {"x": 1}
