"""Test-only ComfyUI node (copied into the test server's custom_nodes): a tiny SD1.5-layout MODEL.

Lets a real server run StyleKit workflows without checkpoint files. Not part of the pack.
"""
import torch


class StyleKitTestTinyModel:
    CATEGORY = "StyleKit/testing"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 1000})}}

    def load(self, seed):
        import comfy.model_base
        import comfy.model_patcher
        import comfy.supported_models
        cfg = dict(image_size=32, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=[2, 2, 2, 2],
                   channel_mult=[1, 1, 2, 2], num_heads=4, num_head_channels=-1, use_spatial_transformer=True,
                   transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_middle=1,
                   transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], context_dim=64,
                   use_linear_in_transformer=False, adm_in_channels=None, use_temporal_attention=False,
                   use_temporal_resblock=False, legacy=False)
        mc = comfy.supported_models.SD15(cfg)
        mc.set_inference_dtype(torch.float32, None)
        model = comfy.model_base.BaseModel(mc, device=torch.device("cpu"))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.diffusion_model.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        cpu = torch.device("cpu")
        return (comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu),)


NODE_CLASS_MAPPINGS = {"StyleKitTestTinyModel": StyleKitTestTinyModel}
