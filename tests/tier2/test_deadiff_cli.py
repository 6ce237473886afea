"""DEADiff training from the command line (stylekit.tools.deadiff_train) on the miniature world: one process
and `accelerate launch` give the same model, the data loaders read what the manifest pairs, and bad input is
refused before any model is loaded."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from stylekit.toy.deadiff import write_pair_folder

pytestmark = pytest.mark.deadiff

TRAIN = ["-m", "stylekit.tools.deadiff_train", "--model", "miniature", "--steps", "3", "--batch", "4", "--warmup", "1",
         "--lr", "1e-3", "--checkpoint-every", "2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_pair_folder(tmp_path_factory.mktemp("pairs"), per_kind=4, seed=1)


def launch(args, tmp_path, processes=1):
    # one intra-op thread in every process, so each shard's forward and backward run the same float operations
    # in the single run as in the launched ones; no GPU (gloo on the CPU)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    if processes == 1:
        cmd = [sys.executable, *args]
    else:
        accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
        cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533", *args]
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def test_two_processes_under_accelerate_give_the_single_process_weights(data, tmp_path):
    """A global batch of 4 as 2 processes x 1 shard (accelerate launch, gloo) against 1 process x 2 shards
    (--accumulate 2): the same shards see the same draws and dropout seeds, so every shard's gradient is the
    same float computation in both. The single process adds shard 1's gradient to shard 0's; the all-reduce
    adds the two processes' in some order: a sum of two floats is the same in either order, so the bound
    is 0 and the weights must be bit-identical (with more than two shards the order of a longer sum would
    differ and the bound would be a few ulps per step). The run must have trained (weights moved)."""
    pytest.importorskip("accelerate")
    launch([*TRAIN, "--data", data, "--out", "single.safetensors", "--accumulate", "2"], tmp_path)
    launch([*TRAIN, "--data", data, "--out", "two.safetensors"], tmp_path, processes=2)
    single, two = load_file(tmp_path / "single.safetensors"), load_file(tmp_path / "two.safetensors")
    assert set(single) == set(two)
    differ = [k for k in single if not torch.equal(single[k], two[k])]
    assert not differ, differ[:5]
    from stylekit.models.deadiff import load_deadiff, official_state_dict
    from stylekit.models.deadiff_inject import check_pairing
    from stylekit.models.deadiff_train import fresh_adapter
    from stylekit.toy.deadiff import SHAPE
    from stylekit.toy.family import load_world
    w = load_world()
    check_pairing(load_deadiff(tmp_path / "two.safetensors"), w.model)  # what the Loader and Apply read
    start = official_state_dict(fresh_adapter(w.model, SHAPE, seed=0))
    moved = [k for k in start if not torch.equal(start[k].float(), single[k].float())]
    assert len(moved) > len(start) // 2, f"{len(moved)} of {len(start)} tensors trained"


def test_the_loaders_give_each_shard_its_rows_of_the_manifests_pairs(data):
    """Two shards of a step are the two halves of the unsharded batch (pixels, captions, latents), and a style
    pair's target is its caption's scene: the loader reads the pairs the manifest names."""
    from stylekit.models.deadiff_data import manifest_loaders, read_pairs
    from stylekit.toy.deadiff import encoders
    from stylekit.toy.family import load_world
    w = load_world()
    loaders = manifest_loaders(read_pairs(data), encoders(w), batch=4, seed=3)
    whole = loaders["style"](5, 0, 1)
    halves = [loaders["style"](5, s, 2) for s in (0, 1)]
    for field in ("reference", "target", "context"):
        joined = torch.cat([getattr(h, field) for h in halves])
        torch.testing.assert_close(joined, getattr(whole, field), rtol=1e-5, atol=1e-6)
    assert whole.kind == "style" and whole.reference.shape[0] == 4
    both = loaders["both"](0, 0, 1)
    torch.testing.assert_close(both.context, w.encode("").expand(4, -1, -1))  # the empty caption, as the official
    with open(os.path.join(data, "pairs.jsonl")) as f:
        captions = {json.loads(line)["caption"] for line in f if json.loads(line)["kind"] == "style"}
    texts = torch.cat([w.encode(c) for c in sorted(captions)])
    for row in whole.context:  # every row's conditioning is one of the style pairs' captions
        assert min(float((row - t).abs().max()) for t in texts) == 0.0


def run_cli(argv):
    from stylekit.tools import deadiff_train
    return deadiff_train.main(argv)


@pytest.mark.parametrize("case, message", [
    ("no manifest", "no pairs.jsonl in the data folder"),
    ("missing file", "does not exist in the folder"),
    ("mixed sizes", "targets are batched, so give them one size"),
    ("uneven batch", "does not split into 1 processes x 3 shards"),
    ("model folder", "model: .* is not a folder"),
])
def test_bad_input_is_refused_before_training(data, tmp_path, capsys, case, message):
    import shutil
    folder = tmp_path / "data"
    shutil.copytree(data, folder)
    lines = (folder / "pairs.jsonl").read_text().splitlines()
    args = ["--model", "miniature", "--data", str(folder), "--out", str(tmp_path / "o.safetensors"), "--steps", "1",
            "--batch", "4"]
    if case == "no manifest":
        (folder / "pairs.jsonl").unlink()
    elif case == "missing file":
        (folder / json.loads(lines[0])["target"]).unlink()
    elif case == "mixed sizes":
        from PIL import Image
        Image.new("RGB", (32, 32)).save(folder / json.loads(lines[-1])["target"])
    elif case == "uneven batch":
        args += ["--accumulate", "3"]
    elif case == "model folder":
        args[1] = str(tmp_path / "nowhere")
        args += ["--clip-vision", str(tmp_path)]
    assert run_cli(args) == 2
    import re
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "o.safetensors").exists()


@pytest.mark.parametrize("host, message", [
    ("sd15", "its Q-Formers read 48-wide CLIP vision states, this host's CLIP vision gives 64"),
    ("sdxl", "DEADiff"),
])
def test_a_deadiff_for_another_model_is_refused_before_training(data, tmp_path, capsys, request, host, message):
    """--init with a DEADiff made for another model is refused before a step: one for the tiny SDXL UNet by the
    Apply node's own pairing check; one whose layers fit (the tiny SD1.5 UNet has the miniature's layout) but
    whose Q-Formers read another CLIP vision width, by the vision check."""
    from stylekit.attention.layers import model_layers
    from stylekit.files import output_target
    from stylekit.models.deadiff import adapter_from_state_dict, save_deadiff
    from tiny_models import tiny_deadiff_state_dict
    other = adapter_from_state_dict(tiny_deadiff_state_dict(model_layers(request.getfixturevalue(host)), seed=1),
                                    heads=4)
    init = save_deadiff(other, output_target(str(tmp_path), "other", ".safetensors", numbered=False))
    assert run_cli(["--model", "miniature", "--data", data, "--out", str(tmp_path / "o.safetensors"), "--steps", "1",
                    "--batch", "4", "--init", init]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "o.safetensors").exists()


def test_pairs_drawn_by_the_host_train_from_the_command_line(tmp_path, capsys):
    """tools/deadiff_pairs.py draws a set with the miniature model, and tools/deadiff_train.py trains on it: the
    whole command-line path a user takes, end to end (a few steps)."""
    from stylekit.models.deadiff_data import read_pairs
    from stylekit.tools import deadiff_pairs
    (tmp_path / "subjects.txt").write_text("circle\nsquare\nstar\n")
    (tmp_path / "styles.txt").write_text("red striped\nblue dotted\n")
    args = ["--model", "miniature", "--subjects", str(tmp_path / "subjects.txt"), "--styles", str(tmp_path / "styles.txt"),
            "--out", str(tmp_path / "pairs"), "--template", "a {style} {subject} on a white background",
            "--per-style", "2", "--per-subject", "2", "--size", "64", "--steps", "4", "--cfg", "5"]
    assert deadiff_pairs.main(args) == 0
    pairs = read_pairs(str(tmp_path / "pairs"))
    assert {p.kind for p in pairs} == {"style", "content", "both"}
    assert deadiff_pairs.main(args) == 0 and "(0 drawn by this process)" in capsys.readouterr().out
    assert run_cli(["--model", "miniature", "--data", str(tmp_path / "pairs"), "--out", str(tmp_path / "m.safetensors"),
                    "--steps", "2", "--batch", "2", "--warmup", "1"]) == 0
    from stylekit.models.deadiff import load_deadiff
    assert load_deadiff(tmp_path / "m.safetensors").shape.hidden == 64


def test_the_loss_of_every_step_goes_to_tensorboard(data, tmp_path, capsys):
    """--logdir: TensorBoard events hold one loss per step (steps 1..N), the first the one the run reports."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    args = [*TRAIN[2:], "--data", data, "--out", str(tmp_path / "m.safetensors"), "--logdir", str(tmp_path / "logs")]
    assert run_cli(args) == 0
    first = float(capsys.readouterr().out.split("(loss ")[1].split(" ->")[0])
    events = EventAccumulator(str(tmp_path / "logs")).Reload().Scalars("deadiff/loss")
    assert [e.step for e in events] == [1, 2, 3]
    assert abs(events[0].value - first) <= 5e-5 and all(math.isfinite(e.value) for e in events)


def test_logdir_without_tensorboard_is_refused_before_training(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    args = [*TRAIN[2:], "--data", data, "--out", str(tmp_path / "m.safetensors"), "--logdir", str(tmp_path / "logs")]
    assert run_cli(args) == 2
    assert "pip install tensorboard" in capsys.readouterr().err
    assert not (tmp_path / "m.safetensors").exists() and not (tmp_path / "logs").exists()


def write_tiny_sd_folder(root, sdxl: bool = False):
    """A Stable Diffusion folder in the diffusers layout with the tiny test models and a byte-level BPE
    tokenizer over single characters (no vocabulary can be downloaded), and a CLIP vision folder. ``sdxl``:
    SDXL's layout: a second, projected text encoder and tokenizer, the two contexts side by side (32 + 32),
    and a UNet conditioned on the pooled text and six size ids (diffusers' text_time, ids 8 wide)."""
    from tiny_models import tiny_bridge_vae, tiny_clip_text, tiny_clip_vision, tiny_sd15_unet, tiny_sdxl_unet
    # byte-level BPE's alphabet: printable bytes as themselves, the others shifted past 255 (GPT-2's table)
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in printable]
    chars = sorted({chr(b) for b in printable} | {chr(256 + i) for i in range(len(shifted))})
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (root / "tokenizer").mkdir(parents=True)
    (root / "tokenizer" / "vocab.json").write_text(json.dumps(vocab))
    (root / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")
    (root / "tokenizer" / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
    text = tiny_clip_text(width=32 if sdxl else 64, vocab=len(vocab))
    text.config.bos_token_id, text.config.eos_token_id = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    text.save_pretrained(root / "text_encoder")
    if sdxl:
        import shutil

        from transformers import CLIPTextModelWithProjection
        shutil.copytree(root / "tokenizer", root / "tokenizer_2")
        torch.manual_seed(1)
        config = dict(text.config.to_dict(), projection_dim=16)
        second = CLIPTextModelWithProjection(type(text.config).from_dict(config)).eval()
        second.save_pretrained(root / "text_encoder_2")
        tiny_sdxl_unet(seed=0, addition_embed_type="text_time", addition_time_embed_dim=8,
                       projection_class_embeddings_input_dim=16 + 6 * 8).save_pretrained(root / "unet")
    else:
        tiny_sd15_unet(seed=0).save_pretrained(root / "unet")
    tiny_bridge_vae().first_stage.save_pretrained(root / "vae")
    tiny_clip_vision().save_pretrained(root / "vision")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_an_sd15_folder_trains_from_the_command_line(data, tmp_path, sd15, precision):
    """--model with a diffusers folder and --clip-vision with a transformers one (the tiny models saved in those
    layouts): the command line loads them, fine-tunes a DEADiff made for that UNet and writes it; with
    --precision bf16 the frozen models run in bfloat16 while what trains stays float32."""
    from stylekit.attention.layers import model_layers
    from stylekit.files import output_target
    from stylekit.models.deadiff import adapter_from_state_dict, load_deadiff, save_deadiff
    from tiny_models import tiny_deadiff_state_dict
    write_tiny_sd_folder(tmp_path / "sd")
    start = adapter_from_state_dict(tiny_deadiff_state_dict(model_layers(sd15), seed=1), heads=4)
    init = save_deadiff(start, output_target(str(tmp_path), "start", ".safetensors", numbered=False))
    assert run_cli(["--model", str(tmp_path / "sd"), "--clip-vision", str(tmp_path / "sd" / "vision"), "--data", data,
                    "--out", str(tmp_path / "o.safetensors"), "--steps", "2", "--batch", "2", "--warmup", "1",
                    "--lr", "1e-3", "--init", init, "--precision", precision]) == 0
    trained = load_deadiff(tmp_path / "o.safetensors")
    moved = [k for k in start.attn2 if not torch.equal(start.attn2[k][0], trained.attn2[k][0])]
    assert moved and trained.split is not None
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for kv in trained.attn2.values() for t in kv)
    assert not (tmp_path / "o.ckpt.pt").exists()  # the finished run's checkpoint is removed


def test_an_sdxl_folder_encodes_as_diffusers_sdxl_pipeline_does(tmp_path):
    """The SDXL folder's text through the bridge: context and pooled output equal diffusers'
    StableDiffusionXLPipeline.encode_prompt (the independent reference), and the size ids ComfyUI's SDXL
    options name (height, width, crop_h, crop_w, target_height, target_width) equal the pipeline's
    _get_add_time_ids; the bridge's denoised output is the UNet's with those added conditions, and
    without them the SDXL UNet is refused with the fix."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    from stylekit.bridge.folders import load_sd_folder
    from stylekit.bridge.sampling import calc_cond_batch
    from stylekit.errors import InputError
    write_tiny_sd_folder(tmp_path / "xl", sdxl=True)
    model, clip, vae = load_sd_folder(str(tmp_path / "xl"))
    pipe = StableDiffusionXLPipeline(vae=vae.first_stage, text_encoder=clip.text_l, text_encoder_2=clip.text_g,
                                     tokenizer=clip.tokenizer_l, tokenizer_2=clip.tokenizer_g, unet=model.unet,
                                     scheduler=EulerDiscreteScheduler())
    prompt = "a red striped circle"
    context, pooled = clip.encode_from_tokens(clip.tokenize(prompt), return_pooled=True)
    with torch.no_grad():
        ref_context, _, ref_pooled, _ = pipe.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=False)
    assert context.shape == (1, 77, 64) and torch.equal(context, ref_context) and torch.equal(pooled, ref_pooled)
    conds = model.model.extra_conds(cross_attn=context, pooled_output=pooled, height=96, width=128, crop_h=8, crop_w=4,
                                    target_height=64, target_width=80)
    ref_ids = pipe._get_add_time_ids((96, 128), (8, 4), (64, 80), torch.float32, text_encoder_projection_dim=16)
    assert torch.equal(conds["time_ids"].cond, ref_ids) and conds["text_embeds"].cond is pooled
    x, sigma = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([2.0])
    got = calc_cond_batch(model, [{"c_crossattn": context, "text_embeds": pooled, "time_ids": ref_ids}], x, sigma)[0]
    ms = model.model_sampling
    with torch.no_grad():
        eps = model.unet(ms.calculate_input(sigma, x), ms.timestep(sigma).float(), encoder_hidden_states=context,
                         added_cond_kwargs={"text_embeds": pooled, "time_ids": ref_ids}).sample
    assert torch.equal(got, ms.calculate_denoised(sigma, eps, x))
    with pytest.raises(InputError, match="SDXL UNet needs the pooled text"):
        calc_cond_batch(model, [context], x, sigma)
    from stylekit.bridge.sampling import text_to_image  # what tools/deadiff_pairs draws with: SDXL's conds too
    image = text_to_image(model, clip, vae, prompt, "", seed=0, steps=2, cfg=5.0, width=32, height=32)
    assert image.shape == (1, 32, 32, 3) and torch.isfinite(image).all()


def test_an_sdxl_folder_trains_from_the_command_line(data, tmp_path, capsys):
    """--model with an SDXL folder: the pooled text and the targets' size ids condition the UNet, a DEADiff made
    for that UNet fine-tunes and is written with SDXL's layer split; a folder with half of SDXL's second
    encoder is refused naming what is missing."""
    from stylekit.attention.layers import model_layers
    from stylekit.bridge.folders import load_sd_folder
    from stylekit.files import output_target
    from stylekit.models.deadiff import adapter_from_state_dict, load_deadiff, save_deadiff
    from stylekit.models.deadiff_inject import SDXL_STYLE_BLOCKS
    from tiny_models import tiny_deadiff_state_dict
    write_tiny_sd_folder(tmp_path / "xl", sdxl=True)
    model, _, _ = load_sd_folder(str(tmp_path / "xl"))
    start = adapter_from_state_dict(tiny_deadiff_state_dict(model_layers(model), seed=1), heads=4)
    init = save_deadiff(start, output_target(str(tmp_path), "start", ".safetensors", numbered=False))
    args = ["--model", str(tmp_path / "xl"), "--clip-vision", str(tmp_path / "xl" / "vision"), "--data", data,
            "--out", str(tmp_path / "o.safetensors"), "--steps", "2", "--batch", "2", "--warmup", "1", "--lr", "1e-3",
            "--init", init]
    assert run_cli(args) == 0
    trained = load_deadiff(tmp_path / "o.safetensors")
    assert [k for k in start.attn2 if not torch.equal(start.attn2[k][0], trained.attn2[k][0])]
    assert sorted(tuple(b) for b in trained.split["style"]) == sorted(SDXL_STYLE_BLOCKS)
    import shutil
    shutil.rmtree(tmp_path / "xl" / "tokenizer_2")
    assert run_cli([*args[:6], "--out", str(tmp_path / "p.safetensors"), *args[8:]]) == 2
    assert "has no tokenizer_2 subfolder" in capsys.readouterr().err
