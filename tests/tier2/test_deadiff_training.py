"""DEADiff training on the bridge with tiny models: what trains, what stays frozen, what each kind of pair
injects, and that the loss on a fixed batch goes down."""
import pytest
import torch

from stylekit.attention.layers import model_layers
from tiny_models import tiny_deadiff_state_dict
from stylekit.errors import InputError
from stylekit.models.deadiff import adapter_from_state_dict
from stylekit.models.deadiff_inject import DEADiffTokens, deadiff_model
from stylekit.models.deadiff_train import (DEADiffTrainSettings, PairBatch, injected_tokens, pair_loss, train_deadiff,
                                           trainable)

pytestmark = pytest.mark.deadiff


@pytest.fixture
def adapter(sd15):
    return adapter_from_state_dict(tiny_deadiff_state_dict(model_layers(sd15), seed=1), heads=4)


def batch(kind, adapter, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return PairBatch(kind, torch.randn(n, 5, adapter.shape.vision, generator=g), torch.randn(n, 4, 8, 8, generator=g),
                     torch.randn(n, 77, 64, generator=g))


def snapshot(module_or_tensors):
    items = module_or_tensors.state_dict().items() if hasattr(module_or_tensors, "state_dict") else module_or_tensors
    return {k: v.detach().clone() for k, v in items}


def test_only_the_official_trainable_set_changes(sd15, adapter):
    unet = snapshot(sd15.unet)
    ln = {b: snapshot(br.ln_vision) for b, br in adapter.branches.items()}
    before = {id(p): p.detach().clone() for p in trainable(adapter)}
    params = trainable(adapter)
    settings = DEADiffTrainSettings(steps=3, lr=1e-2, warmup=1)
    loaders = {k: (lambda step, shard, shards, k=k: batch(k, adapter, seed=step)) for k in ("style", "content", "both")}
    losses = train_deadiff(sd15, adapter, loaders, sd15.model_sampling.sigmas, settings)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert all(torch.equal(v, unet[k]) for k, v in sd15.unet.state_dict().items())  # the host: bit-identical
    assert all(p.grad is None for p in sd15.unet.parameters())  # and never given a .grad
    assert sd15.model_options == {"transformer_options": {}}
    for b, br in adapter.branches.items():
        assert all(torch.equal(v, ln[b][k]) for k, v in br.ln_vision.state_dict().items())
    moved = [not torch.equal(p, before[id(p)]) for p in params]
    assert sum(moved) >= 0.9 * len(params), f"{sum(moved)} of {len(params)} trainable tensors changed"
    names = {id(p) for p in params}
    for b, br in adapter.branches.items():  # the set is what the official configure_optimizers lists
        assert id(br.query_tokens) in names and all(id(p) in names for p in br.proj.parameters())
        assert all(id(p) in names for p in br.qformer.parameters())
        assert not any(id(p) in names for p in br.ln_vision.parameters())
    assert all(id(wk) in names and id(wv) in names for wk, wv in adapter.attn2.values())


def test_each_kind_injects_and_drops_what_it_says(adapter):
    trainable(adapter)
    keep = torch.tensor([1.0, 0.0])
    style = injected_tokens(adapter, batch("style", adapter), keep, "style")
    assert torch.count_nonzero(style.content) == 0  # the content layers get zero tokens
    assert torch.count_nonzero(style.style[0]) > 0 and torch.count_nonzero(style.style[1]) == 0  # sample 1 dropped
    content = injected_tokens(adapter, batch("content", adapter), keep, "content")
    assert torch.count_nonzero(content.style) == 0 and torch.count_nonzero(content.content[1]) == 0
    for dropped, style_zero, content_zero in (("style", True, False), ("content", False, True), ("both", True, True)):
        both = injected_tokens(adapter, batch("both", adapter), keep, dropped)
        assert (torch.count_nonzero(both.style[1]) == 0) == style_zero
        assert (torch.count_nonzero(both.content[1]) == 0) == content_zero
        assert torch.count_nonzero(both.style[0]) > 0 and torch.count_nonzero(both.content[0]) > 0
    with pytest.raises(InputError, match="unknown pair kind"):
        injected_tokens(adapter, batch("mixed", adapter), keep, "style")


def test_the_loss_on_a_fixed_batch_goes_down(sd15, adapter):
    """Train on one fixed style batch at its two noise levels: its loss at fixed noise (a deterministic
    measurement, so any fall is the training's) drops by more than a tenth (about a fifth here)."""
    fixed = batch("style", adapter, n=2, seed=3)
    g = torch.Generator().manual_seed(9)
    sigma = torch.tensor([1.0, 3.0])
    noise = torch.randn(fixed.target.shape, generator=g)
    ones = torch.ones(2)

    def measured():
        with torch.no_grad():
            return float(pair_loss(sd15, injected_tokens(adapter, fixed, ones, "style"), fixed, sigma, noise))
    trainable(adapter)
    adapter.eval()
    start = measured()
    still = DEADiffTrainSettings(steps=2, lr=0.0, weight_decay=0.0, warmup=1, drop={"style": 0.0})
    train_deadiff(sd15, adapter, {"style": lambda step, shard, shards: fixed}, sigma, still)
    assert measured() == start  # the control: with no update the measurement is exactly repeatable
    settings = DEADiffTrainSettings(steps=40, lr=1e-2, warmup=1, drop={"style": 0.0})
    train_deadiff(sd15, adapter, {"style": lambda step, shard, shards: fixed}, sigma, settings)
    assert measured() < 0.9 * start, (start, measured())


def test_a_trained_adapter_runs_in_apply(sd15, adapter):
    train_deadiff(sd15, adapter, {"both": lambda step, shard, shards: batch("both", adapter, seed=step)}, sd15.model_sampling.sigmas,
                  DEADiffTrainSettings(steps=2, lr=1e-3, warmup=1))
    with torch.no_grad():
        tokens = adapter.encode(torch.randn(1, 5, adapter.shape.vision), "style")
        m = deadiff_model(sd15, DEADiffTokens(adapter, style=tokens))
        x = torch.randn(1, 4, 8, 8)
        out = m.model.apply_model(x, torch.tensor([2.0]), c_crossattn=torch.randn(1, 77, 64),
                                  transformer_options=m.model_options["transformer_options"])
    assert torch.isfinite(out).all()


def test_nothing_to_train_on_is_refused(sd15, adapter):
    with pytest.raises(InputError, match="no pairs to train on"):
        train_deadiff(sd15, adapter, {}, sd15.model_sampling.sigmas, DEADiffTrainSettings(steps=1))
    with pytest.raises(InputError, match="no pairs to train on"):
        train_deadiff(sd15, adapter, {"style": lambda s: batch("style", adapter)}, sd15.model_sampling.sigmas,
                      DEADiffTrainSettings(steps=1, loader_weights={"style": 0.0}))


def test_a_trained_adapter_is_written_in_the_format_the_loader_reads(sd15, adapter, tmp_path):
    """Saved through files.write_new under the official key names; StyleKit DEADiff Loader's reader gives back
    every tensor exactly and the same tokens; the file is not overwritten without force."""
    from stylekit.errors import OutputFileError
    from stylekit.files import output_target
    from stylekit.models.deadiff import load_deadiff, save_deadiff
    train_deadiff(sd15, adapter, {"style": lambda step, shard, shards: batch("style", adapter, seed=step)}, sd15.model_sampling.sigmas,
                  DEADiffTrainSettings(steps=2, lr=1e-2, warmup=1))
    path = save_deadiff(adapter, output_target(str(tmp_path), "trained", ".safetensors", numbered=False))
    back = load_deadiff(path)
    assert back.shape == adapter.shape
    mine, theirs = adapter.state_dict(), back.state_dict()
    assert set(mine) == set(theirs) and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert set(back.attn2) == set(adapter.attn2)
    assert all(torch.equal(back.attn2[k][i], adapter.attn2[k][i]) for k in adapter.attn2 for i in (0, 1))
    x = torch.randn(1, 5, adapter.shape.vision)
    assert torch.equal(back.encode(x, "content"), adapter.encode(x, "content"))
    with pytest.raises(OutputFileError):
        save_deadiff(adapter, output_target(str(tmp_path), "trained", ".safetensors", numbered=False))


def test_a_fresh_adapter_starts_from_the_models_text_projections(sd15):
    """From scratch: seeded, the image K/V of every attn2 layer start as that layer's text K/V (the official
    init), the global random state is left alone, and a width the UNet does not read is refused."""
    from stylekit.attention.layers import attention_modules
    from stylekit.models.deadiff import QFormerShape
    from stylekit.models.deadiff_train import fresh_adapter
    shape = QFormerShape(hidden=64, layers=1, heads=4, intermediate=64, vocab=30523, positions=32, queries=4,
                         vision=48, proj_hidden=64)
    state = torch.random.get_rng_state()
    a, b = fresh_adapter(sd15, shape, seed=5), fresh_adapter(sd15, shape, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(a.branches["style"].query_tokens, fresh_adapter(sd15, shape, seed=6).branches["style"].query_tokens)
    modules = attention_modules(sd15, "attn2")
    assert set(a.attn2) == set(modules)
    assert all(torch.equal(a.attn2[k][0], m.to_k.weight) and torch.equal(a.attn2[k][1], m.to_v.weight)
               for k, m in modules.items())
    with pytest.raises(InputError, match="tokens are 128 wide but this UNet's cross-attention reads \\[64\\]"):
        fresh_adapter(sd15, QFormerShape(hidden=128, layers=1, heads=4, intermediate=64, positions=32, queries=4,
                                         vision=48, proj_hidden=64))
    # narrower tokens (SDXL's CLIP-L part of its text) start from the first columns of the text K/V
    narrow = fresh_adapter(sd15, QFormerShape(hidden=32, layers=1, heads=4, intermediate=64, positions=32, queries=4,
                                              vision=48, proj_hidden=64))
    assert all(torch.equal(narrow.attn2[k][0], m.to_k.weight[:, :32]) and torch.equal(narrow.attn2[k][1], m.to_v.weight[:, :32])
               for k, m in modules.items())
    from stylekit.models.deadiff_inject import CONTENT_BLOCKS, STYLE_BLOCKS
    assert a.split == {"style": STYLE_BLOCKS, "content": CONTENT_BLOCKS}  # the family's split, stored


def test_an_interrupted_run_resumes_exactly(sd15, tmp_path):
    """Four steps straight equal two steps, an interrupt, and a resume from the step-2 checkpoint: every
    trainable tensor bit-identical (optimiser, schedule, the draw generator and dropout's RNG are restored)."""
    layers = model_layers(sd15)

    class Stop(Exception):
        pass

    def run(path, stop_at=None):
        a = adapter_from_state_dict(tiny_deadiff_state_dict(layers, seed=1), heads=4)
        loaders = {k: (lambda step, shard, shards, k=k, a=a: batch(k, a, seed=step)) for k in ("style", "content", "both")}
        seen = []

        def interrupted():
            if stop_at is not None and len(seen) == stop_at:
                raise Stop
        torch.manual_seed(0)
        settings = DEADiffTrainSettings(steps=4, lr=1e-2, warmup=2)
        try:
            train_deadiff(sd15, a, loaders, sd15.model_sampling.sigmas, settings, interrupted=interrupted,
                          progress=lambda done, total: seen.append(done), checkpoint=str(path), checkpoint_every=2)
        except Stop:
            return None
        return a
    straight = run(tmp_path / "a.pt")
    assert run(tmp_path / "b.pt", stop_at=2) is None and torch.load(tmp_path / "b.pt", weights_only=True)["step"] == 2
    torch.manual_seed(123)  # the resume restores the RNG itself
    resumed = run(tmp_path / "b.pt")
    for p, q in zip(trainable(straight), trainable(resumed)):
        assert torch.equal(p, q)


def test_a_run_is_the_same_whatever_the_global_random_state_and_leaves_it_alone(sd15):
    """Dropout draws from torch's default generator, which every process seeds at random: the trainer seeds it
    from settings.seed inside a fork, so two runs agree bit for bit whatever state the caller left, and the
    caller's state is what it was (before, make toy's DEADiff stage gave other weights on every run)."""
    layers = model_layers(sd15)

    def run(global_seed):
        a = adapter_from_state_dict(tiny_deadiff_state_dict(layers, seed=1), heads=4)
        loaders = {k: (lambda step, shard, shards, k=k, a=a: batch(k, a, seed=step)) for k in ("style", "content", "both")}
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        train_deadiff(sd15, a, loaders, sd15.model_sampling.sigmas, DEADiffTrainSettings(steps=3, lr=1e-2, warmup=1))
        assert torch.equal(torch.get_rng_state(), before)
        return a
    first, second = run(1), run(2)
    for p, q in zip(trainable(first), trainable(second)):
        assert torch.equal(p, q)


def test_the_train_node_fine_tunes_a_loaded_deadiff_from_a_data_folder(sd15, adapter, tmp_path, monkeypatch):
    """StyleKit DEADiff Train on the bridge (outside ComfyUI its input and models folders are the current one):
    the pairs of a data folder train a copy of the given DEADiff (the input stays bit-identical), the result
    is written in the Loader's format and equals what the node returns, and no resumable state is left."""
    from stylekit.models.deadiff import load_deadiff, official_state_dict
    from stylekit.nodes.deadiff_train import StyleKitDEADiffTrain
    from stylekit.toy.deadiff import write_pair_folder
    from tiny_models import tiny_bridge_clip, tiny_bridge_clip_vision, tiny_bridge_vae
    monkeypatch.chdir(tmp_path)
    write_pair_folder(tmp_path / "pairs", per_kind=2, seed=0)
    given = {k: v.clone() for k, v in official_state_dict(adapter).items()}
    out = StyleKitDEADiffTrain().train(sd15, tiny_bridge_clip(), tiny_bridge_clip_vision(), tiny_bridge_vae(), "pairs",
                                       3, 1e-3, 1, 2, 0, "trained", deadiff=adapter)
    trained, curve = out["result"]
    assert curve.shape[0] == 1 and curve.shape[-1] == 3
    assert all(torch.equal(v, given[k]) for k, v in official_state_dict(adapter).items())  # the input: untouched
    saved = load_deadiff(tmp_path / "trained.safetensors")
    mine, theirs = official_state_dict(trained), official_state_dict(saved)
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert sum(not torch.equal(mine[k], given[k].float()) for k in mine) > len(mine) // 2  # it trained
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs", "trained.safetensors"]  # no state left behind


def test_the_train_node_refuses_a_folder_without_pairs_and_a_fresh_start_at_the_wrong_width(sd15, tmp_path, monkeypatch):
    from stylekit.nodes.deadiff_train import StyleKitDEADiffTrain
    from tiny_models import tiny_bridge_clip, tiny_bridge_clip_vision, tiny_bridge_vae
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    args = (sd15, tiny_bridge_clip(), tiny_bridge_clip_vision(), tiny_bridge_vae())
    with pytest.raises(InputError, match="data_folder input/empty: no pairs.jsonl"):
        StyleKitDEADiffTrain().train(*args, "empty", 1, 1e-3, 1, 2, 0, "trained")
    from stylekit.toy.deadiff import write_pair_folder
    write_pair_folder(tmp_path / "pairs", per_kind=1, seed=0)
    # from scratch the Q-Formers take the official SD1.5 shape: 768-wide tokens, which the tiny UNet cannot read
    with pytest.raises(InputError, match="tokens are 768 wide but this UNet's cross-attention reads \\[64\\]"):
        StyleKitDEADiffTrain().train(*args, "pairs", 1, 1e-3, 1, 2, 0, "trained")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "pairs"]


def test_sdxl_trains_with_its_split_which_the_file_keeps_and_apply_uses(sdxl, tmp_path):
    """On an SDXL UNet (the tiny one has SDXL's blocks): a fresh DEADiff takes StyleKit's SDXL split (content on
    input 7, 8, middle, output 0, 1; style on input 4, 5, output 2-5), trains, is written with the split in
    its metadata, loads with it, and Apply puts the style tokens on exactly the style layers; a split given
    at training (InstantStyle's two blocks, say) is what the file then carries and Apply then uses."""
    from stylekit.files import output_target
    from stylekit.models.deadiff import QFormerShape, load_deadiff, save_deadiff
    from stylekit.models.deadiff_inject import SDXL_CONTENT_BLOCKS, SDXL_STYLE_BLOCKS
    from stylekit.models.deadiff_train import fresh_adapter
    shape = QFormerShape(hidden=32, layers=1, heads=4, intermediate=64, positions=32, queries=4, vision=48, proj_hidden=64)
    layers = model_layers(sdxl)
    for split, name in ((None, "default"), ({"style": [("output", 1)], "content": [("input", 8)]}, "instantstyle")):
        a = fresh_adapter(sdxl, shape, seed=2, split=split)
        expected = split or {"style": SDXL_STYLE_BLOCKS, "content": SDXL_CONTENT_BLOCKS}
        assert a.split == expected
        train_deadiff(sdxl, a, {"style": lambda step, shard, shards, a=a: batch("style", a, seed=step)},
                      sdxl.model_sampling.sigmas, DEADiffTrainSettings(steps=2, lr=1e-3, warmup=1))
        back = load_deadiff(save_deadiff(a, output_target(str(tmp_path), name, ".safetensors", numbered=False)))
        assert back.split == expected
        tokens = back.encode(torch.randn(1, 5, 48), "style")
        m = deadiff_model(sdxl, DEADiffTokens(back, style=tokens), zero_tokens=False)
        patched = set(m.model_options["transformer_options"]["patches_replace"]["attn2"])
        assert patched == set(layers.select(expected["style"]))


def test_a_deadiff_for_sd15_is_refused_on_sdxl_before_training(sd15, sdxl):
    from stylekit.models.deadiff import QFormerShape
    from stylekit.models.deadiff_inject import check_pairing
    from stylekit.models.deadiff_train import fresh_adapter
    from stylekit.attention.layers import UnsupportedModelError
    shape = QFormerShape(hidden=32, layers=1, heads=4, intermediate=64, positions=32, queries=4, vision=48, proj_hidden=64)
    with pytest.raises(UnsupportedModelError, match="image projections for 16 attn2 layers .made for SD1.5. but this SDXL UNet has 22"):
        check_pairing(fresh_adapter(sd15, shape), sdxl)


def test_a_branch_its_step_does_not_run_does_not_move(sd15, adapter):
    """A style step runs only the style Q-Former: the content one gets no gradient and AdamW leaves it exactly as
    it was (no weight decay, no momentum from an earlier content step), and the other way round."""
    trainable(adapter)
    kinds, snaps = [], []
    loaders = {k: (lambda step, shard, shards, k=k: (kinds.append(k), batch(k, adapter, seed=step))[1])
               for k in ("style", "content")}

    def snap(step, loss):
        snaps.append({b: snapshot(adapter.branches[b].qformer) for b in ("style", "content")})
    snap(0, 0.0)
    train_deadiff(sd15, adapter, loaders, sd15.model_sampling.sigmas, DEADiffTrainSettings(steps=8, lr=1e-2, warmup=1),
                  on_loss=snap)
    assert {"style", "content"} <= set(kinds[1:]) and any(a != b for a, b in zip(kinds, kinds[1:]))  # both, alternating
    for i, kind in enumerate(kinds):
        other = "content" if kind == "style" else "style"
        before, after = snaps[i][other], snaps[i + 1][other]
        assert all(torch.equal(before[k], after[k]) for k in before), (i, kind)
        assert any(not torch.equal(snaps[i][kind][k], snaps[i + 1][kind][k]) for k in before), (i, kind)


def test_a_checkpoint_of_another_run_is_refused_not_resumed(sd15, tmp_path):
    layers = model_layers(sd15)

    def run(lr, run_id="data A"):
        a = adapter_from_state_dict(tiny_deadiff_state_dict(layers, seed=1), heads=4)
        train_deadiff(sd15, a, {"style": lambda step, shard, shards: batch("style", a, seed=step)},
                      sd15.model_sampling.sigmas, DEADiffTrainSettings(steps=2, lr=lr, warmup=1),
                      checkpoint=str(tmp_path / "c.pt"), checkpoint_every=1, run_id=run_id)
    run(1e-2)
    for lr, run_id in ((1e-3, "data A"), (1e-2, "data B")):
        with pytest.raises(InputError, match="c.pt was written by a run with other settings, data or starting weights"):
            run(lr, run_id)
    run(1e-2)  # the same run resumes (at its end: nothing left to do)


def test_shards_add_up_to_the_whole_batch(sd15_unet, monkeypatch):
    """With dropout off, one step as 2 shards (accumulate 2) sets the gradients and reports the loss of 1 shard:
    each shard's gradient is its mean loss's over the number of shards, so their sum is the gradient of the
    batch mean. In float64 end to end: the two runs' matrix products are tiled differently for 4 and 2 rows,
    and the instruction embeddings' gradients cancel by about 1e5 (in float32 they differ by 4 %), so float64
    leaves differences near 1e-11 of each gradient's largest element; gradients that are zero in exact
    arithmetic (the key biases': softmax ignores them) are roundoff of 1e-19 in both runs."""
    import copy

    import torch.nn as nn

    from stylekit.bridge import BridgePatcher
    model = BridgePatcher(copy.deepcopy(sd15_unet).double())
    adapter = adapter_from_state_dict(tiny_deadiff_state_dict(model_layers(model), seed=1), heads=4).double()
    for m in adapter.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if hasattr(m, "attention_dropout"):  # the Q-Former's attention drops its weights functionally
            m.attention_dropout = 0.0
    start = {k: v.clone() for k, v in adapter.state_dict().items()}
    attn2 = {k: (wk.clone(), wv.clone()) for k, (wk, wv) in adapter.attn2.items()}
    seen = []
    real = torch.nn.utils.clip_grad_norm_

    def record(params, *a, **k):
        seen.append([None if p.grad is None else p.grad.clone() for p in params])
        return real(params, *a, **k)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", record)
    whole = batch("style", adapter, n=4, seed=5)
    whole = PairBatch("style", *(t.double() for t in (whole.reference, whole.target, whole.context)))

    def loader(step, shard, shards):
        n = 4 // shards
        return PairBatch("style", *(t[shard * n:(shard + 1) * n] for t in (whole.reference, whole.target, whole.context)))
    losses = {}
    for accumulate in (1, 2):
        adapter.load_state_dict(start)
        adapter.attn2 = {k: (wk.clone(), wv.clone()) for k, (wk, wv) in attn2.items()}
        losses[accumulate] = train_deadiff(model, adapter, {"style": loader}, model.model_sampling.sigmas,
                                           DEADiffTrainSettings(steps=1, lr=1e-3, warmup=1, accumulate=accumulate,
                                                                drop={"style": 0.0}))
    one, two = seen
    assert sum(g is not None for g in one) > 10
    for a, b in zip(one, two):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b, a, rtol=0, atol=1e-9 * float(a.abs().max()) + 1e-17)
    assert losses[1][0] == pytest.approx(losses[2][0], rel=1e-6)  # logged in float32


def test_moving_an_adapter_moves_its_image_projections(adapter):
    """.to() reaches the attn2 projections (kept in a plain dict), and a trainable one stays the same parameter."""
    params = trainable(adapter)
    ids = [id(p) for p in params]
    adapter.to(torch.float64)
    assert all(t.dtype == torch.float64 for kv in adapter.attn2.values() for t in kv)
    assert [id(p) for p in trainable(adapter)] == ids


def test_a_bad_layer_split_is_refused_in_a_file_and_at_training(sd15, tmp_path):
    """One check (models.deadiff.split_problem) reads a file's layer_split metadata and a split given to the
    trainer: a block in both branches, a block of no UNet part, a branch missing."""
    from safetensors.torch import load_file, save_file

    from stylekit.errors import WeightFileError
    from stylekit.files import output_target
    from stylekit.models.deadiff import QFormerShape, load_deadiff, save_deadiff
    from stylekit.models.deadiff_train import fresh_adapter
    shape = QFormerShape(hidden=32, layers=1, heads=4, intermediate=64, positions=32, queries=4, vision=48, proj_hidden=64)
    path = save_deadiff(fresh_adapter(sd15, shape), output_target(str(tmp_path), "good", ".safetensors", numbered=False))
    tensors = load_file(path)
    cases = {'{"style": [["output", 5]], "content": [["output", 5]]}': "gives \\[\\('output', 5\\)\\] to both branches",
             '{"style": [["decoder", 5]], "content": []}': "names \\[\\('decoder', 5\\)\\], blocks of no UNet part",
             '{"style": [["output", 5]]}': "is not a style/content block list"}
    for i, (text, message) in enumerate(cases.items()):
        bad = str(tmp_path / f"bad{i}.safetensors")
        save_file(tensors, bad, metadata={"qformer_heads": "4", "layer_split": text})
        with pytest.raises(WeightFileError, match=f"metadata layer_split {message}"):
            load_deadiff(bad)
    with pytest.raises(InputError, match="the layer split gives \\[\\('output', 5\\)\\] to both branches"):
        fresh_adapter(sd15, shape, split={"style": [("output", 5)], "content": [("output", 5)]})
    with pytest.raises(InputError, match="the layer split gives \\['style'\\], not the style and the content blocks"):
        fresh_adapter(sd15, shape, split={"style": [("output", 5)]})


def test_fine_tuning_refuses_a_deadiff_for_another_clip_vision_and_copies_the_one_given(sd15, adapter):
    """start_adapter (the Train node's and the command line's start): the given DEADiff must read the host's CLIP
    vision width, and what trains is a float32 copy with the split it trains (the given one untouched)."""
    import dataclasses
    from stylekit.models.deadiff import official_state_dict
    from stylekit.models.deadiff_inject import CONTENT_BLOCKS, STYLE_BLOCKS
    from stylekit.models.deadiff_train import start_adapter
    with pytest.raises(InputError, match="deadiff: its Q-Formers read 48-wide CLIP vision states, this host's CLIP "
                                         "vision gives 64"):
        start_adapter(sd15, dataclasses.replace(adapter.shape, vision=64), given=adapter)
    copy = start_adapter(sd15, adapter.shape, given=adapter)
    assert copy is not adapter and copy.split == {"style": STYLE_BLOCKS, "content": CONTENT_BLOCKS}
    mine, given = official_state_dict(copy), official_state_dict(adapter)
    assert all(torch.equal(mine[k], given[k].float()) for k in given)
