"""Where every weight a StyleKit node or shipped workflow reads comes from: one table.

The README's model table and each loader's help page are written from :data:`SOURCES`
(``tools/dev/node_docs.py``), and the UI workflows carry the downloadable ones on their loader nodes as
``properties.models`` (``tools/dev/ui_workflow.py``), the list ComfyUI's frontend reads to offer a
missing model for download. A test checks that every model file a shipped workflow names is here.

Sizes are the published files'; "made by StyleKit" files are converted or trained from a published one
by the node named in ``made``, so they have no download of their own.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    file: str       # the name the workflows use
    folder: str     # ComfyUI's models/<folder>
    url: str        # where it is published (a direct download where one exists)
    size: str
    licence: str
    nodes: tuple    # the nodes that read it
    made: str = ""  # how StyleKit makes it from the published file, where it is not used as published

    @property
    def saved_as(self) -> str:
        """What to do with a direct download whose published name is not the one the workflows use."""
        published = self.url.rsplit("/", 1)[-1]
        return f"save as {self.file}" if self.downloadable and published != self.file else ""

    @property
    def downloadable(self) -> bool:
        """Whether ComfyUI's frontend can fetch it for the user: a Hugging Face file URL to a .safetensors."""
        return not self.made and self.url.startswith("https://huggingface.co/") and "/resolve/" in self.url \
            and self.file.endswith(".safetensors")


HF = "https://huggingface.co/"
SOURCES = (
    Source("v1-5-pruned-emaonly-fp16.safetensors", "checkpoints",
           HF + "Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/v1-5-pruned-emaonly-fp16.safetensors",
           "2.1 GB", "CreativeML OpenRAIL-M", ("CheckpointLoaderSimple",)),
    Source("sd_xl_base_1.0.safetensors", "checkpoints",
           HF + "stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors",
           "6.9 GB", "CreativeML OpenRAIL++-M", ("CheckpointLoaderSimple",)),
    Source("flux1-dev.safetensors", "diffusion_models",
           HF + "black-forest-labs/FLUX.1-dev/resolve/main/flux1-dev.safetensors",
           "23.8 GB", "FLUX.1 [dev] Non-Commercial (gated: accept it on the model page)", ("UNETLoader",)),
    Source("ae.safetensors", "vae", HF + "black-forest-labs/FLUX.1-schnell/resolve/main/ae.safetensors",
           "335 MB", "Apache-2.0", ("VAELoader",)),
    Source("clip_l.safetensors", "text_encoders", HF + "comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors",
           "246 MB", "MIT (OpenAI CLIP)", ("DualCLIPLoader", "CLIPLoader")),
    Source("t5xxl_fp16.safetensors", "text_encoders",
           HF + "comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors",
           "9.8 GB", "Apache-2.0", ("DualCLIPLoader",)),
    Source("flux1-redux-dev.safetensors", "style_models",
           HF + "black-forest-labs/FLUX.1-Redux-dev/resolve/main/flux1-redux-dev.safetensors",
           "129 MB", "FLUX.1 [dev] Non-Commercial (gated)", ("StyleModelLoader",)),
    Source("sigclip_vision_patch14_384.safetensors", "clip_vision",
           HF + "Comfy-Org/sigclip_vision_384/resolve/main/sigclip_vision_patch14_384.safetensors",
           "857 MB", "Apache-2.0 (Google SigLIP)", ("CLIPVisionLoader",)),
    Source("clip_vision_vit_l.safetensors", "clip_vision",
           HF + "openai/clip-vit-large-patch14/resolve/main/model.safetensors",
           "1.7 GB", "MIT (OpenAI CLIP)", ("CLIPVisionLoader",)),
    Source("CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "clip_vision",
           HF + "h94/IP-Adapter/resolve/main/models/image_encoder/model.safetensors",
           "2.5 GB", "MIT (OpenCLIP, LAION)", ("CLIPVisionLoader",)),
    Source("CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors", "clip_vision",
           HF + "h94/IP-Adapter/resolve/main/sdxl_models/image_encoder/model.safetensors",
           "3.7 GB", "MIT (OpenCLIP, LAION)", ("CLIPVisionLoader",)),
    Source("ip-adapter_sd15.safetensors", "ipadapter", HF + "h94/IP-Adapter/resolve/main/models/ip-adapter_sd15.safetensors",
           "45 MB", "Apache-2.0", ("StyleKitAdapterLoader",)),
    Source("csgo_4_32.bin", "ipadapter", HF + "InstantX/CSGO/resolve/main/csgo_4_32.bin",
           "see the model page", "see the model page (InstantX/CSGO)", ("StyleKitAdapterLoader",)),
    Source("control_v11p_sd15_canny_fp16.safetensors", "controlnet",
           HF + "comfyanonymous/ControlNet-v1-1_fp16_safetensors/resolve/main/control_v11p_sd15_canny_fp16.safetensors",
           "723 MB", "CreativeML OpenRAIL-M", ("ControlNetLoader",)),
    # Flux.2 [klein] base 4B (the undistilled model: an inversion needs its steps and CFG), Comfy-Org's repackage
    Source("flux-2-klein-base-4b.safetensors", "diffusion_models",
           HF + "Comfy-Org/Flux-2-Klein-4B/resolve/main/split_files/diffusion_models/flux-2-klein-base-4b.safetensors",
           "see the model page", "Apache-2.0 (FLUX.2 [klein] 4B)", ("UNETLoader",)),
    Source("qwen_3_4b.safetensors", "text_encoders",
           HF + "Comfy-Org/Flux-2-Klein-4B/resolve/main/split_files/text_encoders/qwen_3_4b.safetensors",
           "8.0 GB", "Apache-2.0 (Qwen3-4B)", ("CLIPLoader",)),
    Source("flux2-vae.safetensors", "vae", HF + "Comfy-Org/Flux-2-Klein-4B/resolve/main/split_files/vae/flux2-vae.safetensors",
           "336 MB", "Apache-2.0 (FLUX.2 VAE)", ("VAELoader",)),
    # Qwen-Image, Comfy-Org's repackage
    Source("qwen_image_fp8_e4m3fn.safetensors", "diffusion_models",
           HF + "Comfy-Org/Qwen-Image_ComfyUI/resolve/main/split_files/diffusion_models/qwen_image_fp8_e4m3fn.safetensors",
           "20.4 GB", "Apache-2.0", ("UNETLoader",)),
    Source("qwen_2.5_vl_7b_fp8_scaled.safetensors", "text_encoders",
           HF + "Comfy-Org/Qwen-Image_ComfyUI/resolve/main/split_files/text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors",
           "9.4 GB", "Apache-2.0 (Qwen2.5-VL)", ("CLIPLoader",)),
    Source("qwen_image_vae.safetensors", "vae",
           HF + "Comfy-Org/Qwen-Image_ComfyUI/resolve/main/split_files/vae/qwen_image_vae.safetensors",
           "254 MB", "Apache-2.0", ("VAELoader",)),
    Source("deadiff_v1.safetensors", "deadiff", HF + "qth/DEADiff/resolve/main/deadiff_v1.ckpt",
           "7.4 GB (the checkpoint)", "research and non-commercial use (the authors' README)",
           ("StyleKitDEADiffExtract", "StyleKitDEADiffLoader"),
           "put deadiff_v1.ckpt in models/deadiff and run StyleKit DEADiff Extract once"),
    Source("dalle_dvae.safetensors", "dalle", "https://cdn.openai.com/dall-e/encoder.pkl",
           "see openai/DALL-E", "MIT (openai/DALL-E)", ("StyleKitStylerDALLEConvert", "StyleKitStylerDALLELoad"),
           "put encoder.pkl and decoder.pkl (same address) in models/dalle and run StyleKit StylerDALLE Convert once"),
    Source("stylerdalle_style.safetensors", "stylerdalle", "—", "—", "yours",
           ("StyleKitStylerDALLELoad",), "trained by StyleKit StylerDALLE Pretrain and Train Style"),
    Source("catversion_concept.safetensors", "catversion", "—", "—", "yours",
           ("StyleKitCatVersionLoad",), "trained by StyleKit CatVersion Train from a few images of your concept"),
)

_BY_FILE = {s.file: s for s in SOURCES}


def source_of(file: str) -> Source | None:
    return _BY_FILE.get(file)


def models_property(files) -> list[dict]:
    """A loader node's ``properties.models`` for the files it names: name, url, directory (ComfyUI's
    frontend offers these for download when they are missing); files with no direct download are left out."""
    return [{"name": s.file, "url": s.url, "directory": s.folder}
            for s in map(source_of, files) if s is not None and s.downloadable]
