"""Tiny in-process ComfyUI models for tier 3, built from the same weights as the bridge's tiny UNet."""
import torch

SD15_TINY = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=[2, 2, 2, 2],
    channel_mult=[1, 1, 2, 2], num_heads=4, num_head_channels=-1, use_spatial_transformer=True,
    transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_middle=1,
    transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], context_dim=64,
    use_linear_in_transformer=False, adm_in_channels=None, use_temporal_attention=False,
    use_temporal_resblock=False, legacy=False,
)


def comfy_sd15_from_diffusers(unet):
    """A ComfyUI ModelPatcher holding ``unet``'s weights in ComfyUI's own UNetModel (SD15 config)."""
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models
    import comfy.utils

    cfg = dict(SD15_TINY)
    model_config = comfy.supported_models.SD15(cfg)
    model_config.set_inference_dtype(torch.float32, None)
    model = comfy.model_base.BaseModel(model_config, device=torch.device("cpu"))
    key_map = comfy.utils.unet_to_diffusers(cfg)
    sd = unet.state_dict()
    converted = {ldm: sd[diff] for diff, ldm in key_map.items() if diff in sd}
    missing, unexpected = model.diffusion_model.load_state_dict(converted, strict=False)
    assert not missing and not unexpected, (missing[:5], unexpected[:5])
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def comfy_sd15_random(seed: int = 0):
    """A ComfyUI ModelPatcher around a tiny SD1.5-layout UNetModel with deterministic random weights."""
    from tiny_models import tiny_sd15_unet
    return comfy_sd15_from_diffusers(tiny_sd15_unet(seed=seed))


SDXL_TINY = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=64, num_res_blocks=[2, 2, 2],
    channel_mult=[1, 1, 2], num_heads=-1, num_head_channels=64, use_spatial_transformer=True,  # SDXL: 64 per head
    transformer_depth=[0, 0, 1, 1, 2, 2], transformer_depth_middle=2,
    transformer_depth_output=[0, 0, 0, 1, 1, 1, 2, 2, 2], context_dim=64, use_linear_in_transformer=True,
    adm_in_channels=2816, num_classes="sequential", use_temporal_attention=False,
    use_temporal_resblock=False, legacy=False,
)


def seed_weights(module, seed: int = 0):
    """ComfyUI's layers skip init: give every weight a deterministic value (norms 1/0, others scaled normal)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name:
                p.copy_(torch.ones_like(p) if name.endswith("weight") else torch.zeros_like(p))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 / max(1, p.shape[1:].numel()) ** 0.5))


def comfy_sdxl_random(seed: int = 0):
    """A ComfyUI ModelPatcher around a tiny SDXL-layout UNetModel (with the 2816-wide ``y`` input)."""
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models

    model_config = comfy.supported_models.SDXL(dict(SDXL_TINY))
    model_config.set_inference_dtype(torch.float32, None)
    model = comfy.model_base.SDXL(model_config, device=torch.device("cpu"))
    seed_weights(model.diffusion_model, seed)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def comfy_clip_vision_tiny(tmp_dir, hf_model=None):
    """ComfyUI's own ClipVisionModel with tiny sizes, holding the weights of ``tiny_clip_vision()``."""
    import json
    import os

    import comfy.clip_vision
    from tiny_models import tiny_clip_vision
    hf_model = hf_model or tiny_clip_vision()
    cfg = json.loads(open(os.path.join(os.path.dirname(comfy.clip_vision.__file__), "clip_vision_config_vitl.json")).read())
    c = hf_model.config
    cfg.update(hidden_size=c.hidden_size, intermediate_size=c.intermediate_size, num_attention_heads=c.num_attention_heads,
               num_hidden_layers=c.num_hidden_layers, patch_size=c.patch_size, image_size=c.image_size)
    cfg.pop("projection_dim", None)
    path = os.path.join(str(tmp_dir), "clip_vision_tiny.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    cv = comfy.clip_vision.ClipVisionModel(path)
    sd = {k if k.startswith("vision_model.") else "vision_model." + k: v for k, v in hf_model.state_dict().items()}
    missing, unexpected = cv.load_sd(sd)
    assert not [k for k in missing if "position_ids" not in k], missing
    return cv


def write_tiny_deadiff(model, folder, name="deadiff_v1.safetensors"):
    """A tiny DEADiff file in the official layout for ``model``'s layers, as the extractor would write it."""
    import os

    from safetensors.torch import save_file
    from stylekit.attention.layers import model_layers
    from tiny_models import tiny_deadiff_state_dict
    sd = tiny_deadiff_state_dict(model_layers(model), seed=1)
    os.makedirs(str(folder), exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(str(folder), name), metadata={"qformer_heads": "4"})


def comfy_clip_tiny(seed: int = 0, width: int = 64):
    """ComfyUI's own SD1.5 CLIP (SD1ClipModel, real tokenizer) with CLIP-L's 12 layers at a tiny width, fp32,
    holding the weights of ``tiny_clip_text(width, 12, vocab 49408)``; returns (CLIP, transformers model)."""
    import comfy.sd
    import comfy.sd1_clip
    from tiny_models import tiny_clip_text
    hf = tiny_clip_text(width=width, layers=12, vocab=49408, seed=seed)

    class Target:
        params, clip, tokenizer = {}, comfy.sd1_clip.SD1ClipModel, comfy.sd1_clip.SD1Tokenizer
    size = {"hidden_size": width, "intermediate_size": 2 * width, "num_attention_heads": 4, "num_hidden_layers": 12}
    clip = comfy.sd.CLIP(Target, model_options={"clip_l_model_config": size, "dtype": torch.float32})
    sd = {"text_model." + k.removeprefix("text_model."): v for k, v in hf.state_dict().items()}
    sd["text_projection.weight"] = torch.eye(width)
    missing, unexpected = clip.cond_stage_model.clip_l.transformer.load_state_dict(sd, strict=False)
    assert not missing and not [k for k in unexpected if "position_ids" not in k], (missing, unexpected)
    return clip, hf


def comfy_vae_tiny(seed: int = 0):
    """ComfyUI's own VAE (AutoencoderKL, 8x down, 4 latent channels) with tiny widths and seeded weights."""
    import comfy.sd
    dd = {"double_z": True, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
          "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    vae = comfy.sd.VAE(sd={}, config={"params": {"ddconfig": dd, "embed_dim": 4}})
    seed_weights(vae.first_stage_model, seed)
    return vae


def write_tiny_catversion(folder, name="catversion_concept.safetensors", seed=0):
    """A StyleKit CatVersion file for ``comfy_clip_tiny`` (width 64), on CLIP-L's layers 9, 10, 11."""
    import os

    from stylekit.models.catversion import CatVersionPrefix, save_prefix
    os.makedirs(str(folder), exist_ok=True)
    save_prefix(CatVersionPrefix.random([9, 10, 11], 64, seed=seed, base_word="teapot"), os.path.join(str(folder), name))


def write_tiny_adapter(model, folder, name, kind="plain", csgo=False, seed=0):
    """An adapter file for ``model``'s layers in the published layout (.bin nested, .safetensors flat),
    reading features of ``comfy_clip_vision_tiny`` (48 wide)."""
    import os

    from safetensors.torch import save_file
    from stylekit.attention.layers import model_layers
    from tiny_models import flat_state_dict, tiny_ip_adapter
    nested = tiny_ip_adapter(model_layers(model), kind, feature_width=48, tokens=4 if kind == "plain" else 8,
                             seed=seed, csgo=csgo)
    os.makedirs(str(folder), exist_ok=True)
    path = os.path.join(str(folder), name)
    torch.save(nested, path) if name.endswith(".bin") else save_file(flat_state_dict(nested), path)
    return path


def write_tiny_stylerdalle(root, dvae="dalle_dvae.safetensors", translator="stylerdalle_style.safetensors"):
    """models/dalle/<dvae> (converted from official-layout pickles) and models/stylerdalle/<translator>."""
    import os

    from tiny_models import tiny_dvae, tiny_translator, write_official_dvae_pickles
    from stylekit.models.stylerdalle import save_translator
    from stylekit.models.dvae import convert_files
    for sub in ("dalle", "stylerdalle"):
        os.makedirs(os.path.join(str(root), sub), exist_ok=True)
    write_official_dvae_pickles(*tiny_dvae(seed=1), os.path.join(str(root), "dalle"))
    convert_files(os.path.join(str(root), "dalle", "encoder.pkl"), os.path.join(str(root), "dalle", "decoder.pkl"),
                  os.path.join(str(root), "dalle", dvae))
    save_translator(tiny_translator(seed=2), os.path.join(str(root), "stylerdalle", translator), style="tiny")


class SdxlClipStandin:
    """Stands in for SDXL's two text encoders: CLIPTextEncode gets a 64-wide context (the tiny SDXL
    UNet's) and the 1280-wide pooled output SDXL's ``y`` is built from."""

    def tokenize(self, text):
        return text

    def encode_from_tokens_scheduled(self, tokens):
        import hashlib
        g = torch.Generator().manual_seed(int(hashlib.sha1(tokens.encode()).hexdigest()[:8], 16))
        return [[torch.randn(1, 77, 64, generator=g), {"pooled_output": torch.randn(1, 1280, generator=g)}]]


def comfy_controlnet_tiny(seed=0):
    """ComfyUI's own ControlNet (cldm) shaped for the tiny SD1.5 UNet, with seeded weights."""
    import comfy.cldm.cldm
    import comfy.controlnet
    cfg = {k: v for k, v in SD15_TINY.items() if k not in ("use_temporal_attention", "use_temporal_resblock")}
    net = comfy.cldm.cldm.ControlNet(hint_channels=3, **cfg)
    seed_weights(net, seed)
    return comfy.controlnet.ControlNet(net.eval(), load_device=torch.device("cpu"), manual_cast_dtype=None)


def standins(model_factory, tmp_dir=None):
    """Stand-ins for the nodes that need weight files (checkpoint, CLIP, VAE) or user files (images).

    Everything else in a workflow, core samplers included, runs as ComfyUI's real node.
    """
    import hashlib
    import torch.nn.functional as F

    def encode(text, clip):
        seed = int(hashlib.sha1(text.encode()).hexdigest()[:8], 16)
        return ([[torch.randn(1, 77, 64, generator=torch.Generator().manual_seed(seed)), {}]],)

    def load_image(image, **kw):
        seed = int(hashlib.sha1(image.encode()).hexdigest()[:8], 16)
        return (torch.rand(1, 96, 80, 3, generator=torch.Generator().manual_seed(seed)), torch.zeros(1, 96, 80))

    def vae_encode(pixels, vae):
        p = F.avg_pool2d(pixels.movedim(-1, 1), 8)
        return ({"samples": torch.cat([p, p.mean(1, keepdim=True)], 1) * 2 - 1},)

    def vae_decode(samples, vae):
        x = F.interpolate(samples["samples"][:, :3], scale_factor=8)
        return (((x + 1) / 2).clamp(0, 1).movedim(1, -1),)

    return {"CheckpointLoaderSimple": lambda ckpt_name: (model_factory(), None, None),
            "CLIPVisionLoader": lambda clip_name: (comfy_clip_vision_tiny(tmp_dir or "/tmp"),),
            "CLIPTextEncode": encode, "LoadImage": load_image, "VAEEncode": vae_encode, "VAEDecode": vae_decode}


def real_standins(model_factory, tmp_dir=None):
    """Like ``standins`` but the checkpoint gives ComfyUI's own tiny CLIP and VAE, so CLIPTextEncode,
    VAEEncode and VAEDecode run as ComfyUI's real nodes (the CLIP's width matches the UNet's context)."""
    out = standins(model_factory, tmp_dir)
    for k in ("CLIPTextEncode", "VAEEncode", "VAEDecode"):
        del out[k]
    out["CheckpointLoaderSimple"] = lambda ckpt_name: (  # an SDXL name gets the tiny SDXL UNet
        (comfy_sdxl_random(), SdxlClipStandin(), comfy_vae_tiny()) if "xl" in ckpt_name.lower()
        else (model_factory(), comfy_clip_tiny()[0], comfy_vae_tiny()))
    out["ControlNetLoader"] = lambda control_net_name: (comfy_controlnet_tiny(),)
    # a text tower as wide as the tiny CLIP vision's embeddings (48), as a real CLIP pair would be
    out["CLIPLoader"] = lambda clip_name, type="stable_diffusion", device="default": (comfy_clip_tiny(width=48)[0],)
    return out


def call_node(cls, inputs: dict) -> tuple:
    """One node's outputs, called as ComfyUI's executor calls it: a V3 node's ``execute`` through a locked clone
    of its class (what ``_async_map_node_over_list`` does), a V1 node's ``FUNCTION`` on an instance."""
    import inspect

    from comfy_api.internal import _ComfyNodeInternal, make_locked_method_func
    if issubclass(cls, _ComfyNodeInternal):
        cls.VALIDATE_CLASS()
        # 0.3.64 takes the hidden inputs as a dict, 0.33.0 a V3Data or None
        hidden = None if "v3_data" in inspect.signature(cls.PREPARE_CLASS_CLONE).parameters else {}
        out = make_locked_method_func(cls, cls.FUNCTION, cls.PREPARE_CLASS_CLONE(hidden))(**inputs)
        return tuple(out.args)
    out = getattr(cls(), cls.FUNCTION)(**inputs)
    return out.get("result", ()) if isinstance(out, dict) else out


def bodies(mappings: dict) -> dict:
    """ComfyUI's registry with StyleKit's V3 nodes swapped for the classes they wrap (what tiers 1-2 and the
    bridge run): running a workflow through both shows the V3 registration changes no output."""
    from stylekit.nodes import NODE_CLASS_MAPPINGS
    return {**mappings, **NODE_CLASS_MAPPINGS}


def assert_same_outputs(a: dict, b: dict, where: str) -> None:
    """Every tensor (also a LATENT's) and every number or text two runs of one workflow produced is identical."""
    def leaves(out):
        for v in out:
            if isinstance(v, dict):
                yield from (x for x in v.values() if isinstance(x, torch.Tensor))
            elif isinstance(v, (torch.Tensor, str, int, float)):
                yield v
    assert a.keys() == b.keys(), where
    for nid in a:
        x, y = list(leaves(a[nid])), list(leaves(b[nid]))
        assert len(x) == len(y), (where, nid)
        for u, v in zip(x, y):
            assert torch.equal(u, v) if isinstance(u, torch.Tensor) else u == v, (where, nid)


def run_api_workflow(workflow: dict, mappings: dict, overrides: dict) -> dict:
    """Execute an API-format graph in-process with ComfyUI's node classes.

    ``overrides`` maps a class_type to a callable standing in for it (the loaders, which would need
    real weight files). Returns each node's outputs.
    """
    results = {}

    def run(nid):
        if nid in results:
            return results[nid]
        node = workflow[nid]
        kwargs = {}
        for name, v in node["inputs"].items():
            kwargs[name] = run(v[0])[v[1]] if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) else v
        ct = node["class_type"]
        if ct in overrides:
            out = overrides[ct](**kwargs)
        else:
            out = call_node(mappings[ct], kwargs)
        results[nid] = out
        return out

    with torch.inference_mode():  # as ComfyUI's executor runs every node
        for nid in workflow:
            run(nid)
    return results


FLUX_TINY = dict(image_model="flux", in_channels=16, out_channels=16, patch_size=2, vec_in_dim=16, context_in_dim=32,
                 hidden_size=32, mlp_ratio=4.0, num_heads=2, depth=2, depth_single_blocks=2, axes_dim=[4, 6, 6],
                 theta=10000, qkv_bias=True, guidance_embed=True, txt_ids_dims=[])


def comfy_dit_tiny(name: str, config: dict, seed: int = 0):
    """ComfyUI's own DiT ``name`` (its ``supported_models`` and ``model_base`` classes of that name) built from
    ``config`` in float32, weights seeded, as a ModelPatcher on the CPU; None on a ComfyUI without it."""
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models
    if not hasattr(comfy.supported_models, name):
        return None
    mc = getattr(comfy.supported_models, name)(dict(config))
    mc.set_inference_dtype(torch.float32, None)
    model = getattr(comfy.model_base, name)(mc, device=torch.device("cpu"))
    seed_weights(model.diffusion_model, seed)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def tiny_or_skip(builder, what: str):
    """``builder()``'s model, or the test skipped on a ComfyUI that does not have ``what``."""
    import pytest
    model = builder()
    if model is None:
        pytest.skip(f"this ComfyUI has no {what}")
    return model


def comfy_flux_tiny(seed: int = 0):
    """ComfyUI's own Flux (comfy.ldm.flux.model.Flux) at tiny widths, random weights, as a ModelPatcher."""
    import dataclasses

    import comfy.ldm.flux.model
    fields = {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)} | {"image_model"}
    return comfy_dit_tiny("Flux", {k: v for k, v in FLUX_TINY.items() if k in fields}, seed)  # older ComfyUIs lack some


# Flux.2 as ComfyUI's model detection configures it (comfy/model_detection.py: 4 RoPE axes, theta 2000, one shared
# modulation, SiLU-gated MLPs, no biases, text positions on axis 3, reference latents by index), at tiny widths
FLUX2_TINY = dict(image_model="flux2", in_channels=128, out_channels=128, patch_size=1, vec_in_dim=None,
                  context_in_dim=32, hidden_size=32, mlp_ratio=3.0, num_heads=2, depth=2, depth_single_blocks=2,
                  axes_dim=[4, 4, 4, 4], theta=2000, qkv_bias=False, guidance_embed=True, txt_ids_dims=[3],
                  global_modulation=True, mlp_silu_act=True, ops_bias=False, default_ref_method="index",
                  ref_index_scale=10.0)


def comfy_flux2_tiny(seed: int = 0):
    """ComfyUI's own Flux.2 (the Flux class with global modulation, model_base.Flux2) at tiny widths, or None
    on a ComfyUI without Flux.2 (before late 2025)."""
    return comfy_dit_tiny("Flux2", FLUX2_TINY, seed)


def diffusers_flux_from_comfy(patcher):
    """The bridge's FluxTransformer2DModel holding the weights of a tiny ComfyUI Flux (ComfyUI's own key map)."""
    import comfy.utils
    from tiny_models import tiny_flux
    c = FLUX_TINY
    t = tiny_flux(double=c["depth"], single=c["depth_single_blocks"], heads=c["num_heads"],
                  head_dim=c["hidden_size"] // c["num_heads"], latent_channels=c["in_channels"],
                  context_dim=c["context_in_dim"], pooled_dim=c["vec_in_dim"])
    sd = patcher.model.diffusion_model.state_dict()
    out = {}
    for dk, ck in comfy.utils.flux_to_diffusers(dict(c)).items():
        name = ck if isinstance(ck, str) else ck[0]
        if name not in sd:  # ControlNet-only entries of the map
            continue
        w = sd[name]
        if not isinstance(ck, str):  # (key, (dim, offset, size)): a slice of a fused tensor; (key, None, fn): converted
            if ck[1] is not None:
                w = w.narrow(*ck[1])
            if len(ck) > 2:
                w = ck[2](w)
        out[dk] = w
    own = t.state_dict()
    missing, _ = t.load_state_dict({k: v for k, v in out.items() if k in own}, strict=False)  # the map also names Flux.2's
    assert not missing, missing
    return t.eval()


class FluxClipStandin:
    """A text encoder stand-in for the DiT loaders: a context (1, 8, ``width``) seeded by the prompt, and with
    ``pooled`` a pooled vector (1, ``pooled``) beside it (Flux.1's DualCLIPLoader: T5-like 32 wide, CLIP-L-like 16)."""

    def __init__(self, width: int = 32, pooled: int | None = 16):
        self.width, self.pooled = width, pooled

    def tokenize(self, text):
        return text

    def encode_from_tokens_scheduled(self, tokens, **kw):
        import hashlib
        g = torch.Generator().manual_seed(int(hashlib.sha1(tokens.encode()).hexdigest()[:8], 16))
        context = torch.randn(1, 8, self.width, generator=g)
        return [[context, {"pooled_output": torch.randn(1, self.pooled, generator=g)} if self.pooled else {}]]


class FluxVaeStandin:
    """A VAE stand-in (pooled pixels and their mean as ``channels`` latent channels at 1/``scale`` size, and
    back): Flux.1's 16 channels at 1/8; Flux.2's 128 at 1/16; with ``video`` one-frame video latents (B, C, 1, H, W),
    as Qwen-Image's and Krea 2's Wan 2.1 VAE gives them."""

    def __init__(self, channels: int = 16, scale: int = 8, video: bool = False):
        self.channels, self.scale, self.video = channels, scale, video

    def encode(self, pixels):
        import torch.nn.functional as F
        p = F.avg_pool2d(pixels[..., :3].movedim(-1, 1), self.scale) * 2 - 1
        x = torch.cat([p] * (self.channels // 3) + [p.mean(1, keepdim=True)] * (self.channels % 3), 1)
        return x.unsqueeze(2) if self.video else x

    def decode(self, samples):
        import torch.nn.functional as F
        x = samples[:, :, 0] if samples.ndim == 5 else samples
        return ((F.interpolate(x[:, :3], scale_factor=self.scale) + 1) / 2).clamp(0, 1).movedim(1, -1)


def flux_standins(tmp_dir):
    """Loader stand-ins for the Flux workflows (core Flux nodes, samplers and Redux run as ComfyUI's own)."""
    import comfy.sd
    from comfy.ldm.flux.redux import ReduxImageEncoder
    from tiny_models import tiny_clip_vision
    out = standins(comfy_flux_tiny, tmp_dir)
    clip_vision = tiny_clip_vision()
    redux = ReduxImageEncoder(redux_dim=clip_vision.config.hidden_size, txt_in_features=FLUX_TINY["context_in_dim"])
    seed_weights(redux, 1)
    vae = FluxVaeStandin()
    out.update({
        "UNETLoader": lambda unet_name, weight_dtype="default": (comfy_flux_tiny(),),
        "DualCLIPLoader": lambda clip_name1, clip_name2, type, device="default": (FluxClipStandin(),),
        "VAELoader": lambda vae_name: (vae,),
        "CLIPVisionLoader": lambda clip_name: (comfy_clip_vision_tiny(tmp_dir, clip_vision),),
        "StyleModelLoader": lambda style_model_name: (comfy.sd.StyleModel(redux),),
    })
    for k in ("CLIPTextEncode", "VAEEncode", "VAEDecode"):
        del out[k]  # the real nodes, on the stand-in CLIP and VAE
    return out


def dit_standins(model_factory, clip, vae, tmp_dir):
    """Loader stand-ins for a single-encoder DiT workflow (Flux.2, Qwen-Image: UNETLoader, CLIPLoader, VAELoader);
    CLIPTextEncode, VAEEncode and VAEDecode run as ComfyUI's real nodes on the stand-in CLIP and VAE."""
    out = standins(model_factory, tmp_dir)
    out.update({"UNETLoader": lambda unet_name, weight_dtype="default": (model_factory(),),
                "CLIPLoader": lambda clip_name, type, device="default": (clip,),
                "VAELoader": lambda vae_name: (vae,)})
    for k in ("CLIPTextEncode", "VAEEncode", "VAEDecode"):
        del out[k]
    return out


# Krea 2 as ComfyUI's model detection configures it (comfy/model_detection.py: head dim from the weights,
# grouped-query attention, 2x2 patches, a text-fusion stack over the encoder's layers), at tiny widths
KREA2_TINY = dict(image_model="krea2", features=64, heads=4, kvheads=2, layers=3, patch=2, channels=16,
                  txtlayers=2, txtdim=32, txtheads=2, txtkvheads=2, multiplier=2)


def comfy_krea2_tiny(seed: int = 0):
    """ComfyUI's own Krea 2 (comfy.ldm.krea2.model.SingleStreamDiT) at tiny widths, or None on a ComfyUI
    without it (before 2026)."""
    return comfy_dit_tiny("Krea2", KREA2_TINY, seed)


# Qwen-Image at tiny widths (ComfyUI's defaults: 2x2 patches of 16-channel latents, 3 RoPE axes)
QWEN_TINY = dict(image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16, num_layers=2,
                 attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(4, 6, 6))


def comfy_qwen_image_tiny(seed: int = 0):
    """ComfyUI's own Qwen-Image (comfy.ldm.qwen_image.model.QwenImageTransformer2DModel) at tiny widths."""
    return comfy_dit_tiny("QwenImage", QWEN_TINY, seed)
