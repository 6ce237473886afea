"""Tier 3: StyleKit inside a real ComfyUI checkout (COMFYUI_PATH), on tiny in-process models."""
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))


def test_comfyui_loader_imports_every_node(comfy_nodes):
    from stylekit.nodes import NODE_CLASS_MAPPINGS
    nodes, added = comfy_nodes
    assert added == set(NODE_CLASS_MAPPINGS)
    for node_id in added:
        cls = nodes.NODE_CLASS_MAPPINGS[node_id]
        assert node_id in nodes.NODE_DISPLAY_NAME_MAPPINGS
        for section in ("required", "optional"):
            for name, decl in cls.INPUT_TYPES().get(section, {}).items():
                assert isinstance(decl, tuple) and decl[1].get("tooltip"), f"{node_id}.{name}"


def test_nodes_register_as_v3_nodes_with_the_declarations_saved_workflows_hold(comfy_nodes):
    """Every node is a V3 node (comfy_api io.ComfyNode) in ComfyUI's registry, and ComfyUI's V1 view of it (what
    /object_info and prompt validation read) has the node class's ids, input names in order, types, defaults,
    bounds and tooltips, and its outputs, display name, category and description. A combo's choices move from
    the type slot to ("COMBO", {"options": ...}), V3's form, which both releases validate and load."""
    from comfy_api.latest import io
    from stylekit.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
    nodes, _ = comfy_nodes
    for node_id, body in NODE_CLASS_MAPPINGS.items():
        v3 = nodes.NODE_CLASS_MAPPINGS[node_id]
        assert issubclass(v3, io.ComfyNode), node_id
        want, got = body.INPUT_TYPES(), v3.INPUT_TYPES()
        if getattr(body, "OUTPUT_NODE", False):  # V3 hands an output node these through cls.hidden, not as inputs
            assert got.pop("hidden") == {"prompt": ("PROMPT",), "extra_pnginfo": ("EXTRA_PNGINFO",)}, node_id
        assert {k for k in got if got[k]} == set(want), node_id
        for section, declared in want.items():
            assert list(got[section]) == list(declared), (node_id, section)  # names and order
            for name, (kind, opts) in declared.items():
                got_kind, got_opts = got[section][name]
                extra = {k: v for k, v in got_opts.items() if k not in opts}
                for key in ("multiselect", "multiline"):  # V3 spells out V1's defaults
                    assert extra.pop(key, False) is False, (node_id, name, key)
                if isinstance(kind, list):
                    assert got_kind == "COMBO" and extra.pop("options") == list(kind), (node_id, name)
                else:
                    assert got_kind == kind, (node_id, name)
                assert {k: got_opts[k] for k in opts} == opts and not extra, (node_id, name, extra)
        assert list(v3.RETURN_TYPES) == list(body.RETURN_TYPES), node_id
        assert list(v3.RETURN_NAMES) == list(getattr(body, "RETURN_NAMES", body.RETURN_TYPES)), node_id
        assert list(v3.OUTPUT_TOOLTIPS) == list(getattr(body, "OUTPUT_TOOLTIPS", [None] * len(body.RETURN_TYPES)))
        assert (v3.CATEGORY, v3.DESCRIPTION, bool(v3.OUTPUT_NODE)) == \
            (body.CATEGORY, body.DESCRIPTION, bool(getattr(body, "OUTPUT_NODE", False))), node_id
        assert nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id] == NODE_DISPLAY_NAME_MAPPINGS[node_id]


def test_pyproject_parses_with_comfy_registry_parser():
    from comfy_config import config_parser
    cfg = config_parser.extract_node_configuration(str(ROOT))
    assert cfg.project.name == "stylekit" and cfg.tool_comfy.display_name == "StyleKit"
    assert cfg.tool_comfy.publisher_id == "stylekit"


def test_core_node_specs_match_real_comfyui(comfy_nodes):
    import comfyui_version
    from stylekit.tools.workflow_check import spec_from_node_class
    nodes, _ = comfy_nodes
    version = comfyui_version.__version__
    path = ROOT / "tests" / "data" / "core_nodes" / f"{version}.json"
    if not path.exists():
        pytest.skip(f"no core node specs committed for ComfyUI {version}: write them with "
                    f"COMFYUI_PATH=... python tools/dev/dump_core_specs.py tests/data/core_nodes")
    ours = json.loads(path.read_text())
    for ct, spec in ours.items():
        real = spec_from_node_class(nodes.NODE_CLASS_MAPPINGS[ct])
        assert list(real["outputs"]) == spec["outputs"], ct
        for section in ("required", "optional"):
            assert set(real[section]) == set(spec[section]), (ct, section)
            for name, decl in spec[section].items():
                rtype = real[section][name][0]
                assert rtype == decl[0] or (decl[0] == "*" and rtype in ("*", "")) or \
                    (decl[0] == "COMBO" and rtype == "COMBO"), (ct, name, rtype, decl[0])
                if "choices" in decl[1]:
                    assert real[section][name][1].get("choices") == decl[1]["choices"], (ct, name)
                for bound in ("min", "max"):
                    if bound in decl[1]:
                        assert real[section][name][1].get(bound) == decl[1][bound], (ct, name, bound)


def sample(model, seed=0, steps=4, cfg=3.0):
    import comfy.sample
    g = torch.Generator().manual_seed(seed)
    latent = torch.zeros(1, 4, 16, 16)
    noise = torch.randn(1, 4, 16, 16, generator=g)
    ctx = torch.randn(1, 77, 64, generator=g)
    pos, neg = [[ctx, {}]], [[torch.zeros_like(ctx), {}]]
    with torch.no_grad():
        return comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", pos, neg, latent, seed=seed)


def boost_contribution():
    from stylekit.attention.router import Contribution
    return Contribution("boost", lambda q, k, v, e, nxt, w: nxt(q * (1 + w), k, v * 0.5, e), weight=0.7)


def test_patched_sampling_runs_and_input_model_is_untouched():
    from comfy_host import comfy_sd15_random
    from stylekit.attention.layers import model_layers
    from stylekit.attention.router import add_contribution

    model = comfy_sd15_random(seed=1)
    t0 = time.perf_counter()
    before = sample(model)
    plain_s = time.perf_counter() - t0
    patched = model.clone()
    calls = []
    spy = __import__("stylekit.attention.router", fromlist=["x"]).Contribution(
        "spy", lambda q, k, v, e, nxt, w: (calls.append((e["block"], e["block_index"])), nxt(q, k, v, e))[1])
    keys = model_layers(patched).keys
    add_contribution(patched, boost_contribution(), keys, "attn1")
    add_contribution(patched, spy, keys, "attn2")
    out = sample(patched)
    after = sample(model)
    assert torch.isfinite(out).all() and not torch.allclose(out, before)
    assert torch.equal(after, before)
    assert {(b[0], b[1], i) for b, i in calls} == set(keys)  # every installed key is really called
    print(f"tiny comfy UNet, 4 steps: {plain_s:.3f}s")


def test_same_contribution_same_output_in_comfyui_and_bridge():
    from comfy_host import comfy_sd15_from_diffusers
    from stylekit.attention.layers import model_layers
    from stylekit.attention.router import add_contribution
    from stylekit.bridge import BridgePatcher
    from tiny_models import tiny_sd15_unet

    unet = tiny_sd15_unet(seed=3)
    comfy_model = comfy_sd15_from_diffusers(unet).clone()
    bridge = BridgePatcher(unet).clone()
    for m in (comfy_model, bridge):
        add_contribution(m, boost_contribution(), model_layers(m).select("output"), "attn1")
    g = torch.Generator().manual_seed(0)
    x, ctx, sigma = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 77, 64, generator=g), torch.tensor([2.0, 2.0])
    to = dict(comfy_model.model_options["transformer_options"], cond_or_uncond=[0, 1], sigmas=sigma)
    with torch.no_grad():
        a = comfy_model.model.apply_model(x, sigma, c_crossattn=ctx, transformer_options=to)
        b = bridge.apply_model(x, sigma, ctx, dict(bridge.model_options["transformer_options"], cond_or_uncond=[0, 1], sigmas=sigma))
        plain = BridgePatcher(unet).apply_model(x, sigma, ctx)
    assert (a - plain).abs().max() > 1e-2  # the contribution acts
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_shipped_api_workflows_run_in_process(comfy_nodes, tmp_path):
    import folder_paths
    from comfy_host import (assert_same_outputs, bodies, comfy_sd15_random, comfy_sdxl_random, real_standins, run_api_workflow, write_tiny_adapter,
                            write_tiny_catversion, write_tiny_deadiff, write_tiny_stylerdalle)
    from stylekit.tools.workflow_check import check_api, spec_from_node_class
    nodes, _ = comfy_nodes
    specs = {k: spec_from_node_class(c) for k, c in nodes.NODE_CLASS_MAPPINGS.items() if hasattr(c, "INPUT_TYPES")}
    overrides = real_standins(comfy_sd15_random, tmp_path)
    write_tiny_deadiff(comfy_sd15_random(), tmp_path / "deadiff")  # the real StyleKit loader nodes read these
    folder_paths.add_model_folder_path("deadiff", str(tmp_path / "deadiff"), is_default=True)
    write_tiny_catversion(tmp_path / "catversion")
    folder_paths.add_model_folder_path("catversion", str(tmp_path / "catversion"), is_default=True)
    write_tiny_adapter(comfy_sd15_random(), tmp_path / "ipadapter", "ip-adapter_sd15.safetensors")
    write_tiny_adapter(comfy_sdxl_random(), tmp_path / "ipadapter", "csgo_4_32.bin", "plus", csgo=True)
    folder_paths.add_model_folder_path("ipadapter", str(tmp_path / "ipadapter"), is_default=True)
    write_tiny_stylerdalle(tmp_path)
    folder_paths.add_model_folder_path("dalle", str(tmp_path / "dalle"), is_default=True)
    folder_paths.add_model_folder_path("stylerdalle", str(tmp_path / "stylerdalle"), is_default=True)
    small = {"width": 128, "height": 128, "steps": 4, "side": 64}  # tiny-model sizes; the graph is as shipped
    paths = sorted(p for p in (ROOT / "example_workflows" / "api").glob("*.json")
                   if not p.name.startswith(("flux_", "flux2_", "qwen_image_")))  # the DiT graphs: test_flux_comfy.py,
    # test_dit_workflows_comfy.py
    assert paths
    for path in paths:
        wf = json.loads(path.read_text())
        # no checkpoints or input images on disk here: their file-name choices are not checked
        errs = [e for e in check_api(wf, specs) if not any(f in e for f in ("ckpt_name", "image=", "clip_name", "deadiff_name", "catversion_name",
                                                                                  "adapter_name", "control_net_name",
                                                                                  "dvae_name", "translator_name"))]
        assert errs == [], (path.name, errs)
        for node in wf.values():
            node["inputs"].update({k: v for k, v in small.items() if k in node["inputs"]})
        results = run_api_workflow(wf, nodes.NODE_CLASS_MAPPINGS, overrides)  # the nodes as ComfyUI registered them: V3
        assert_same_outputs(results, run_api_workflow(wf, bodies(nodes.NODE_CLASS_MAPPINGS), overrides), path.name)
        for nid, node in wf.items():
            if node["class_type"] == "SaveImage":
                saved = results[nid]
                assert saved == () or saved is not None
            if node["class_type"] == "StyleKitCatVersionScore":
                clip_i, clip_t, report = results[nid]
                assert -1 <= clip_i <= 1 and -1 <= clip_t <= 1 and "CLIP-T" in report, report
            if node["class_type"] == "StyleKitCatVersionTrain":
                assert results[nid][1].shape[-1] == 3 and list((tmp_path / "catversion").glob("catversion_concept_*.safetensors"))
            if node["class_type"] == "StyleKitStylerDALLEStylize":
                assert results[nid][0].shape[1:] == (256, 256, 3) and torch.isfinite(results[nid][0]).all()
            if node["class_type"] in ("SamplerCustom", "KSampler"):
                latent = results[nid][0]["samples"]
                assert latent.shape == (1, 4, 16, 16) and torch.isfinite(latent).all(), path.name


@pytest.fixture(scope="module")
def server(tmp_path_factory, free_port):
    base = tmp_path_factory.mktemp("comfy_base")
    (base / "custom_nodes").mkdir()
    os.symlink(ROOT, base / "custom_nodes" / "ComfyUI-StyleKit")
    shutil.copy(Path(__file__).parent / "fixture_nodes.py", base / "custom_nodes" / "stylekit_test_fixtures.py")
    (base / "frontend").mkdir()  # the API needs no frontend: don't depend on comfyui-frontend-package
    port = free_port()
    log = open(base / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--base-directory",
         str(base), "--disable-auto-launch", "--front-end-root", str(base / "frontend")],
        cwd=os.environ["COMFYUI_PATH"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/system_stats", timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(1)
    else:
        proc.kill()
    if proc.poll() is not None:
        pytest.fail("ComfyUI server did not start:\n" + (base / "server.log").read_text()[-4000:])
    yield url, base
    proc.terminate()
    proc.wait(30)


def test_server_lists_nodes_and_cli_gets_an_image(server, tmp_path, capsys):
    from stylekit.nodes import NODE_CLASS_MAPPINGS
    from stylekit.tools.client import main as client_main
    url, base = server
    info = json.loads(urllib.request.urlopen(url + "/object_info").read())
    for node_id in NODE_CLASS_MAPPINGS:
        assert node_id in info, f"{node_id} missing from /object_info"
        for section in ("required", "optional"):
            for name, decl in info[node_id]["input"].get(section, {}).items():
                assert decl[1].get("tooltip"), (node_id, name)
    log = (base / "server.log").read_text()
    failed = [l for l in log.splitlines() if "IMPORT FAILED" in l and ("StyleKit" in l or "stylekit" in l)]
    assert not failed and "ComfyUI-StyleKit" in log, log[-3000:]  # listed in ComfyUI's import times
    wf = json.loads((ROOT / "example_workflows" / "api" / "patch_map.json").read_text())
    wf["1"] = {"class_type": "StyleKitTestTinyModel", "inputs": {"seed": 0}}
    wf_path = tmp_path / "wf.json"
    wf_path.write_text(json.dumps(wf))
    rc = client_main([str(wf_path), "--server", url, "--out", str(tmp_path / "images"), "--timeout", "120"])
    out = capsys.readouterr().out
    assert rc == 0, out
    pngs = list((tmp_path / "images").glob("*.png"))
    assert len(pngs) == 1 and pngs[0].stat().st_size > 1000
    assert "StyleKit patch map: sd15 layout, 16 attention layers" in out  # PreviewAny's text came back

    del wf["2"]["inputs"]["model"]
    wf_path.write_text(json.dumps(wf))
    rc = client_main([str(wf_path), "--server", url, "--out", str(tmp_path / "images2")])
    err = capsys.readouterr().err
    assert rc == 2 and "node 2 (StyleKitPatchMap)" in err and "model" in err, err


def test_ddim_uniform_sigmas_equal_comfyuis_scheduler():
    import comfy.samplers
    from comfy_host import comfy_sd15_random
    from stylekit.models.schedules import ddim_uniform_sigmas
    ms = comfy_sd15_random().get_model_object("model_sampling")
    for steps in (4, 20, 50):
        assert torch.equal(ddim_uniform_sigmas(ms, steps), comfy.samplers.calculate_sigmas(ms, "ddim_uniform", steps))


def test_test_folders_come_before_a_users_real_files(comfy_nodes, tmp_path):
    """Tier 3 registers its model folders first (is_default=True), so a user's real file of the same
    name in ComfyUI's own models folder never changes what a test loads."""
    import folder_paths
    user, ours = tmp_path / "user_models", tmp_path / "test_models"
    for folder, data in ((user, b"the user's real weights"), (ours, b"the test's tiny weights")):
        folder.mkdir()
        (folder / "deadiff_v1.safetensors").write_bytes(data)
    folder_paths.add_model_folder_path("deadiff", str(user))  # where ComfyUI's own models/deadiff sits
    folder_paths.add_model_folder_path("deadiff", str(ours), is_default=True)  # how the tests register theirs
    path = folder_paths.get_full_path("deadiff", "deadiff_v1.safetensors")
    assert open(path, "rb").read() == b"the test's tiny weights"


def test_comfyui_validates_a_saved_prompt_holding_an_old_choice_name(comfy_nodes):
    """DDIM Invert's store_blocks no longer shows auto's old name, yet ComfyUI's own validation passes an API
    prompt that holds it (and still refuses a name that never existed)."""
    import execution
    wf = json.loads((ROOT / "example_workflows" / "api" / "styleid_reproduction.json").read_text())
    invert = next(k for k, n in wf.items() if n["class_type"] == "StyleKitDDIMInvert")

    def store_blocks_errors(value):
        wf[invert]["inputs"]["store_blocks"] = value
        result = asyncio.run(execution.validate_prompt("old-name", wf, None))
        errors = result[3].get(invert, {}).get("errors", [])
        return [e for e in errors if "store_blocks" in str(e.get("details", "")) + str(e.get("extra_info", {}))]

    assert store_blocks_errors("auto (SD: output 6-11, Flux: late double)") == []
    assert store_blocks_errors("auto (SD1.5: output 6-11, SDXL: output 3-5, Flux: late double)") == []
    assert store_blocks_errors("auto (no such set)") != []


def test_comfyui_refuses_a_choice_no_combo_offers_when_it_validates_the_prompt(comfy_nodes):
    """Every combo's choice is checked at validation on both releases: a value that is not a choice, a hidden
    alias or a file in the model folder is refused before any node runs (0.3.64 checks no V3 combo itself)."""
    import execution
    wf = json.loads((ROOT / "example_workflows" / "api" / "stylestudio_adain_sd15.json").read_text())
    adapter = next(k for k, n in wf.items() if n["class_type"] == "StyleKitStyleAdapter")
    loader = next(k for k, n in wf.items() if n["class_type"] == "StyleKitAdapterLoader")

    def errors(node, name, value):
        wf[node]["inputs"][name] = value
        found = asyncio.run(execution.validate_prompt("combo", wf, None))[3].get(node, {}).get("errors", [])
        return [e for e in found if name in str(e.get("details", "")) + str(e.get("extra_info", {}))]

    assert errors(adapter, "fusion", "add") == []
    assert any("is not one of" in e["details"] for e in errors(adapter, "fusion", "multiply")), errors(adapter, "fusion", "multiply")
    assert errors(loader, "adapter_name", "no_such_adapter.safetensors") != []


def test_comfyui_refuses_a_bad_file_name_when_it_validates_the_prompt(comfy_nodes):
    """A path typed as CatVersion Train's filename is refused by ComfyUI's validate_prompt, before any node runs
    (it used to be refused only when the node executed, after the loaders and encoders before it)."""
    import execution
    wf = json.loads((ROOT / "example_workflows" / "api" / "catversion_train.json").read_text())
    train = next(k for k, n in wf.items() if n["class_type"] == "StyleKitCatVersionTrain")
    wf[train]["inputs"]["filename"] = "../../escape"
    errors = asyncio.run(execution.validate_prompt("bad-name", wf, None))[3].get(train, {}).get("errors", [])
    assert any(e["type"] == "custom_validation_failed" and "is a path" in e["details"] for e in errors), errors


def test_messages_name_files_relative_to_comfyui_never_by_server_path(comfy_nodes, tmp_path):
    """Inside ComfyUI a refusal names a weight file as models/<folder>/<name> (or by its name, outside the base
    folder), so a remote caller of the server does not learn its layout."""
    import folder_paths
    from stylekit.errors import StyleKitError
    from stylekit.files import shown
    from stylekit.models.catversion import load_prefix
    inside = os.path.join(folder_paths.models_dir, "catversion", "x.safetensors")
    assert shown(inside) == os.path.join("models", "catversion", "x.safetensors")
    outside = tmp_path / "elsewhere" / "y.safetensors"
    outside.parent.mkdir()
    outside.write_bytes(b"not a safetensors file at all")
    assert shown(outside) == "y.safetensors"
    with pytest.raises(StyleKitError) as err:
        load_prefix(str(outside))
    assert str(tmp_path) not in str(err.value) and "y.safetensors" in str(err.value)


def deprecated(node_class) -> bool:
    """What ComfyUI marks [DEPR]: DEPRECATED on the class (a V3 node's is_deprecated arrives there too)."""
    return bool(getattr(node_class, "DEPRECATED", False))


def test_shipped_workflows_use_no_deprecated_node(comfy_nodes):
    """No shipped workflow uses a node this ComfyUI marks [DEPR]. The two that batched images with core's
    ImageBatch (deprecated in 0.33 for BatchImagesNode, which 0.3.64 lacks) use StyleKit Training Images."""
    nodes, _ = comfy_nodes
    used = {n["class_type"] for p in (ROOT / "example_workflows" / "api").glob("*.json")
            for n in json.loads(p.read_text()).values()}
    assert sorted(ct for ct in used if deprecated(nodes.NODE_CLASS_MAPPINGS[ct])) == []
    if "BatchImagesNode" in nodes.NODE_CLASS_MAPPINGS:  # the check sees what the frontend badges
        assert deprecated(nodes.NODE_CLASS_MAPPINGS["ImageBatch"])


FRONTEND_LABELS = ("Templates", "Browse Templates", "Info")  # what README's install section tells users to click


def test_the_readme_names_menu_labels_the_installed_frontend_has():
    """The README's directions name labels of ComfyUI's frontend; each is in the installed frontend's bundle
    (as a label or an English locale string), so a frontend that renames one fails here."""
    front = pytest.importorskip("comfyui_frontend_package")
    bundle = "".join(p.read_text(errors="ignore") for p in (Path(front.__file__).parent / "static" / "assets").glob("*.js"))
    readme = (ROOT / "README.md").read_text()
    for label in FRONTEND_LABELS:
        assert f"**{label}**" in readme, label
        assert f"`{label}`" in bundle or f'"{label}"' in bundle, f"the frontend has no label {label!r}"
