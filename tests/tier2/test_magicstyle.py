import gc
import weakref

import pytest
import torch

from stylekit.attention.feature_fusion import PRESETS, STYLEID_BLOCKS
from stylekit.attention.layers import model_layers
from stylekit.bridge import sample_euler_cfg
from stylekit.attention.feature_fusion import recording_patch
from stylekit.attention.layers import attention_modules
from stylekit.attention.router import Contribution, add_contribution
from stylekit.models.feature_store import FeatureStore, MissingStepError, StorePolicy
from stylekit.models.inversion import styleid_schedule, invert
from stylekit.models.magicstyle import fusion_model, invert_pair, start_latent

STEPS = 5


def refs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 77, 64, generator=g)


def policy(sd15, mode="store", dtype=torch.float32):
    return StorePolicy(layers=tuple(model_layers(sd15).select(STYLEID_BLOCKS)), dtype=dtype, mode=mode)


def run(model, inv, sig=None, settings=PRESETS["StyleID"]):
    m = fusion_model(model, inv, settings)
    with torch.no_grad():
        return sample_euler_cfg(m, None, inv.result.sigmas if sig is None else sig, inv.context[0:1],
                                start=start_latent(inv))


def test_batched_inversion_equals_independent_reference_loops(sd15):
    content, style, ctx = refs()
    sched = styleid_schedule(sd15.model_sampling, STEPS)
    inv = invert_pair(sd15, content, style, ctx, sched, policy(sd15))
    for row, x0 in enumerate((content, style)):  # plain model, one image at a time, no recording patch
        ref = invert(lambda x, s: sd15.eps(x, torch.tensor([s]), ctx), x0, sched)
        torch.testing.assert_close(inv.result.latent[row:row + 1], ref.latent, atol=1e-4, rtol=1e-4)
    # every step the sampler visits; the top one, which StyleID's sampler skips, is not stored
    assert len(inv.store.features) == len(model_layers(sd15).select(STYLEID_BLOCKS)) * (STEPS - 1)


def test_fusion_off_is_plain_sampling_and_styleid_changes_it(sd15):
    content, style, ctx = refs(1)
    inv = invert_pair(sd15, content, style, ctx, styleid_schedule(sd15.model_sampling, STEPS), policy(sd15))
    x_T, sig = start_latent(inv, adain=False), inv.result.sigmas
    off = fusion_model(sd15, inv, PRESETS["StyleID"], weight=0.0)
    with torch.no_grad():
        plain = sample_euler_cfg(sd15, None, sig, ctx, start=x_T)
        got_off = sample_euler_cfg(off, None, sig, ctx, start=x_T)
        fused = sample_euler_cfg(fusion_model(sd15, inv, PRESETS["StyleID"]), None, sig, ctx, start=x_T)
    assert torch.equal(got_off, plain)
    assert torch.isfinite(fused).all() and (fused - plain).abs().mean() > 1e-3


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_recompute_mode_equals_store_mode(sd15, preset, roundoff):
    content, style, ctx = refs(2)
    sig = styleid_schedule(sd15.model_sampling, STEPS)
    a = run(sd15, invert_pair(sd15, content, style, ctx, sig, policy(sd15, "store")), settings=PRESETS[preset])
    inv_r = invert_pair(sd15, content, style, ctx, sig, policy(sd15, "recompute"))
    assert inv_r.store.size_bytes() == 0  # nothing but the latent trajectory is kept
    b = run(sd15, inv_r, settings=PRESETS[preset])
    torch.testing.assert_close(a, b, atol=roundoff(a, sd15, STEPS), rtol=0)  # fp32 store: up to batching round-off
    c = run(sd15, invert_pair(sd15, content, style, ctx, sig, policy(sd15, "store", torch.float16)),
            settings=PRESETS[preset])
    assert (c - a).abs().max() < 5e-2  # the fp16 default store: stated tolerance


def test_stored_states_project_to_the_qkv_the_layer_computes(sd15):
    """The store keeps attn1 inputs; the layer's projections of them are exactly its q, k, v."""
    keys = model_layers(sd15).select(STYLEID_BLOCKS)
    st = FeatureStore(StorePolicy(layers=tuple(keys), dtype=torch.float32), sigmas=[3.0])
    seen = {}

    def capture(q, k, v, extra, call_next, w):
        seen[(*extra["block"], extra["block_index"])] = (q, k, v)
        return call_next(q, k, v, extra)

    m = sd15.clone()
    m.set_model_attn1_patch(recording_patch(st))
    add_contribution(m, Contribution("capture", capture), keys, "attn1")
    x, ctx = torch.randn(2, 4, 16, 16), torch.randn(2, 77, 64)
    st.recording = True
    with torch.no_grad():
        m.apply_model(x, torch.full((2,), 3.0), ctx)
    modules = attention_modules(sd15)
    assert sorted(seen) == sorted(keys) and len(st.features) == len(keys)
    for key in keys:
        h, (q, k, v), a = st.lookup(key, 3.0), seen[key], modules[key]
        with torch.no_grad():
            torch.testing.assert_close((a.to_q(h), a.to_k(h), a.to_v(h)), (q, k, v), atol=0, rtol=0)


def test_sampler_steps_must_match_the_store(sd15):
    content, style, ctx = refs(3)
    inv = invert_pair(sd15, content, style, ctx, styleid_schedule(sd15.model_sampling, STEPS), policy(sd15))
    other = styleid_schedule(sd15.model_sampling, STEPS + 2).sample_sigmas
    with pytest.raises(MissingStepError, match="this sampler starts at sigma .* remove it"):
        run(sd15, inv, other)  # another schedule
    with pytest.raises(MissingStepError, match="this sampler starts at sigma .* SplitSigmas"):
        run(sd15, inv, inv.result.sigmas[1:])  # the old workflows' SplitSigmas: a second step skipped
    with pytest.raises(MissingStepError, match="no stored features for sigma"):
        run(sd15, inv, torch.cat([inv.result.sigmas[:1], other[2:]]))  # the right start, then other steps


def test_input_model_untouched_and_stores_freed(sd15):
    content, style, ctx = refs(4)
    sig = styleid_schedule(sd15.model_sampling, 3)
    with torch.no_grad():
        before = sample_euler_cfg(sd15, content, sig.sample_sigmas, ctx)
    refs_alive = []
    for _ in range(20):
        inv = invert_pair(sd15, content, style, ctx, sig, policy(sd15))
        run(sd15, inv)
        refs_alive.append(weakref.ref(inv.store))
        del inv
        gc.collect()
    assert sum(r() is not None for r in refs_alive) == 0  # no growth: every store is released
    with torch.no_grad():
        assert torch.equal(sample_euler_cfg(sd15, content, sig.sample_sigmas, ctx), before)
    assert sd15.model_options == {"transformer_options": {}}


def test_size_mismatch_is_refused(sd15):
    content, style, ctx = refs()
    with pytest.raises(ValueError, match="differ in size"):
        invert_pair(sd15, content, style[..., :8], ctx, styleid_schedule(sd15.model_sampling, 2), policy(sd15))
