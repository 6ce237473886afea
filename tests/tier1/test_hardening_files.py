"""Every loader refuses every kind of bad weight file with the pack's own error naming the file.

For each loader (DEADiff, IP-Adapter/CSGO, CatVersion ours and official, StylerDALLE translator, dVAE
file and dVAE pickles) and each kind of bad file (missing, a folder, empty, truncated, garbage bytes,
a refused pickle, NaN/inf tensors, wrong shapes, bad metadata or side-car config) the load raises a
``WeightFileError`` (a ``StyleKitError``) whose message names the file, and never suggests the unsafe
``weights_only=False``.
"""
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from stylekit.attention.layers import model_layers
from tiny_models import (flat_state_dict, tiny_dvae, tiny_deadiff_state_dict, tiny_ip_adapter,
                                  tiny_sd15_unet, tiny_translator, write_official_dvae_pickles)
from stylekit.errors import StyleKitError, WeightFileError
from stylekit.models.catversion import CatVersionPrefix, load_official, load_prefix, save_prefix
from stylekit.models.deadiff import load_deadiff
from stylekit.models.dvae import convert_dalle_pickle, load_dvae
from stylekit.models.ip_adapter import load_adapter
from stylekit.models.stylerdalle import load_translator, save_translator


@pytest.fixture(scope="module")
def sd15_layers():
    import stylekit.bridge  # noqa: F401  (registers diffusers' UNet layout, which the tiny UNet has)
    return model_layers(tiny_sd15_unet(seed=0))


def good_files(folder, layers) -> dict:
    """{loader name: (load function, path of a good file in the published layout)}."""
    os.makedirs(folder, exist_ok=True)
    files = {}
    p = os.path.join(folder, "deadiff.safetensors")
    save_file({k: v.contiguous() for k, v in tiny_deadiff_state_dict(layers, seed=1).items()}, p,
              metadata={"qformer_heads": "4"})
    files["deadiff"] = (load_deadiff, p)
    p = os.path.join(folder, "adapter.safetensors")
    save_file(flat_state_dict(tiny_ip_adapter(layers, "plain", feature_width=48, tokens=4)), p)
    files["ip-adapter safetensors"] = (load_adapter, p)
    p = os.path.join(folder, "adapter.bin")
    torch.save(tiny_ip_adapter(layers, "plus", feature_width=48, tokens=8), p)
    files["ip-adapter bin"] = (load_adapter, p)
    p = os.path.join(folder, "prefix.safetensors")
    save_prefix(CatVersionPrefix.random([9, 10, 11], 64, seed=0, base_word="dog"), p)
    files["catversion ours"] = (load_prefix, p)
    os.makedirs(os.path.join(folder, "official"), exist_ok=True)
    p = os.path.join(folder, "official", "pytorch_adapter.bin")
    torch.save({"prefix_tunings.catversion.control_trans": torch.randn(2 * 3 * 64)}, p)
    with open(os.path.join(folder, "official", "adapter_config.json"), "w") as f:
        json.dump({"hidden_size": 64, "config": {"prefix_length": 1}}, f)
    files["catversion official"] = (load_official, p)
    p = os.path.join(folder, "translator.safetensors")
    save_translator(tiny_translator(seed=2), p, style="tiny")
    files["translator"] = (load_translator, p)
    enc, dec = tiny_dvae(seed=1)
    from stylekit.models.dvae import convert_files
    write_official_dvae_pickles(enc, dec, folder)
    p = os.path.join(folder, "dvae.safetensors")
    convert_files(os.path.join(folder, "encoder.pkl"), os.path.join(folder, "decoder.pkl"), p)
    files["dvae"] = (load_dvae, p)
    files["dvae pickle"] = (convert_dalle_pickle, os.path.join(folder, "encoder.pkl"))
    return files


LOADERS = ["deadiff", "ip-adapter safetensors", "ip-adapter bin", "catversion ours", "catversion official",
           "translator", "dvae", "dvae pickle"]


def refused(load, path, match):
    with pytest.raises(WeightFileError) as info:
        load(path)
    message = str(info.value)
    assert os.path.basename(path) in message, message
    assert "weights_only=False" not in message
    assert pytest.importorskip("re").search(match, message), message
    return message


def test_good_files_load(tmp_path, sd15_layers):
    for name, (load, path) in good_files(str(tmp_path), sd15_layers).items():
        assert load(path) is not None, name


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("damage", ["missing", "folder", "empty", "truncated", "garbage"])
def test_unreadable_files(tmp_path, sd15_layers, loader, damage):
    load, good = good_files(str(tmp_path), sd15_layers)[loader]
    path = good
    if damage == "missing":
        os.remove(good)
        match = "not found"
    elif damage == "folder":
        os.remove(good)
        os.mkdir(good)
        match = "is a folder"
    elif damage == "empty":
        open(good, "wb").close()
        match = "is empty"
    elif damage == "truncated":
        data = open(good, "rb").read()
        open(good, "wb").write(data[: len(data) // 2])
        match = "truncated|corrupt|do not form|missing"
    else:
        open(good, "wb").write(os.urandom(4096))
        match = "truncated|corrupt|not a torch file|readable"
    refused(load, path, match)


@pytest.mark.parametrize("loader", ["deadiff", "ip-adapter safetensors", "ip-adapter bin", "catversion ours",
                                    "catversion official", "translator", "dvae"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_tensors_are_refused_by_name(tmp_path, sd15_layers, loader, bad):
    load, path = good_files(str(tmp_path), sd15_layers)[loader]
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        with safe_open(path, "pt") as f:
            sd, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
        name = sorted(k for k, t in sd.items() if t.is_floating_point())[0]
        sd[name] = sd[name].clone()
        sd[name].view(-1)[0] = bad
        save_file(sd, path, metadata=meta)
    else:
        sd = torch.load(path, weights_only=True)
        inner = sd["ip_adapter"] if "ip_adapter" in sd else sd
        name = sorted(inner)[0]
        inner[name] = inner[name].clone()
        inner[name].view(-1)[0] = bad
        torch.save(sd, path)
    refused(load, path, r"tensor '[^']*" + name.split(".")[-1] + r"' holds NaN or inf")


@pytest.mark.parametrize("value", ["0", "-4", "abc", "3.5", ""])
def test_metadata_fields_are_validated(tmp_path, sd15_layers, value):
    files = good_files(str(tmp_path), sd15_layers)
    for loader, field in [("deadiff", "qformer_heads"), ("translator", "heads"), ("catversion ours", "hidden")]:
        load, path = files[loader]
        from safetensors import safe_open
        with safe_open(path, "pt") as f:
            sd, meta = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
        meta[field] = value
        save_file(sd, path, metadata=meta)
        refused(load, path, f"{field} is '{value}'")


@pytest.mark.parametrize("config,match", [
    ([1, 2], "JSON list, not an object"), ({"hidden_size": 0}, "hidden_size is 0"),
    ({"hidden_size": "abc"}, "hidden_size is 'abc'"), ({"config": {"prefix_length": 0}}, "prefix_length is 0"),
    ({"config": [1]}, "'config' is a list"), ("{not json", "not valid JSON")])
def test_side_car_config_is_validated(tmp_path, sd15_layers, config, match):
    load, path = good_files(str(tmp_path), sd15_layers)["catversion official"]
    cfg = os.path.join(os.path.dirname(path), "adapter_config.json")
    with open(cfg, "w") as f:
        f.write(config if isinstance(config, str) else json.dumps(config))
    with pytest.raises(WeightFileError, match=match) as info:
        load(path)
    assert "adapter_config.json" in str(info.value)


@pytest.mark.parametrize("loader,key", [("ip-adapter safetensors", "image_proj.proj.weight"),
                                        ("ip-adapter safetensors", "ip_adapter.1.to_k_ip.weight"),
                                        ("translator", "outNet.weight"), ("dvae", "decoder.blocks.output.conv.b")])
def test_wrong_shapes_are_refused_at_load(tmp_path, sd15_layers, loader, key):
    load, path = good_files(str(tmp_path), sd15_layers)[loader]
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        sd, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    sd[key] = torch.zeros(*[d + 1 for d in sd[key].shape])
    save_file(sd, path, metadata=meta)
    refused(load, path, r"do not form|wrong shapes|not \(tokens|not an IP-Adapter|do not read")


def test_errors_read_as_stylekit_in_comfyui():
    """ComfyUI shows '<module>.<class>: message'; the pack's errors say StyleKit, not the folder path."""
    from stylekit.errors import InputError, OutputFileError, UnsupportedModelError
    from stylekit.models.ip_adapter import AdapterWeightsError
    for cls in (StyleKitError, WeightFileError, InputError, OutputFileError, UnsupportedModelError, AdapterWeightsError):
        assert cls.__module__ == "StyleKit" and issubclass(cls, StyleKitError)


def sparse_safetensors(path, tensors: dict, metadata: dict | None = None):
    """A .safetensors file whose header declares ``tensors`` ({name: (dtype, shape)}) over a sparse body: a few
    KB on disk (and nothing in memory) however large it says it is."""
    import struct
    sizes = {"F32": 4, "F16": 2, "I64": 8}
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = sizes[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)


BOMBS = {  # loader -> a header declaring 1-3 GB in names the format accepts
    "catversion": ("load_prefix", "stylekit.models.catversion", {"catversion.control_trans": ("F32", (1, 2 ** 28))}),
    "dvae": ("load_dvae", "stylekit.models.dvae", {"encoder.blocks.input.w": ("F32", (2 ** 29,))}),
    "translator": ("load_translator", "stylekit.models.stylerdalle", {"x": ("F32", (3 * 2 ** 28,))}),
}


def in_child(imports: str, call: str) -> str:
    """Run ``call`` (after ``imports``) in a child process; its output: the error it raised and how many MB its
    peak memory grew."""
    import subprocess
    import sys
    code = (f"import resource\n{imports}\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            f"try:\n    {call}\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
            "print('grew_mb', (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    return p.stdout + p.stderr


def load_in_child(func: str, module: str, path) -> str:
    """``module.func(path)`` in a child process (:func:`in_child`)."""
    return in_child(f"from {module} import {func}", f"{func}({str(path)!r})")


def grew_mb(out: str) -> int:
    return int(out.rsplit("grew_mb", 1)[1].split()[0])


@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_a_file_declaring_gigabytes_is_refused_from_its_header(tmp_path, kind):
    """Run in a child process: the refusal must come before the tensors are read, so the child's peak memory
    grows by far less than the gigabyte(s) the header declares (read, they would cost all of it)."""
    func, module, tensors = BOMBS[kind]
    path = tmp_path / f"{kind}.safetensors"
    sparse_safetensors(path, tensors)
    out = load_in_child(func, module, path)
    assert "WeightsError" in out and "declare" in out, out
    assert grew_mb(out) < 200, out


def header_of(path) -> tuple[dict, dict]:
    """{name: (dtype, shape)} and the metadata of a .safetensors file."""
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        return {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}, f.metadata()


SHAPE_BOMBS = {  # loader -> (function, module, a tensor of the good file, GB it grows to: under the format's bound)
    "deadiff": ("load_deadiff", "stylekit.models.deadiff", "style_blip.Qformer.bert.embeddings.word_embeddings.weight", 3),
    "ip-adapter safetensors": ("load_adapter", "stylekit.models.ip_adapter", "image_proj.proj.weight", 3),
    "translator": ("load_translator", "stylekit.models.stylerdalle", "outNet.bias", 1.5),
    "dvae": ("load_dvae", "stylekit.models.dvae", "decoder.blocks.output.conv.b", 0.75),
}


def grown(shape, gb: float) -> tuple:
    """A shape of the same rank as ``shape`` holding ``gb`` GB of float32."""
    n = int(gb * 2 ** 28)
    return (n // 2 ** 10, 2 ** 10) if len(shape) == 2 else (n,)


@pytest.mark.parametrize("kind", sorted(SHAPE_BOMBS))
def test_a_file_whose_shapes_do_not_fit_is_refused_before_reading(tmp_path, sd15_layers, kind):
    """The names are the format's and the total is under its bound, but one tensor is 0.75-3 GB and fits
    nothing else: the loader checks every shape on the header (meta tensors) and refuses before reading, so
    the child's memory grows by far less than what the tensor declares (the translator and the dVAE read
    theirs first before: +4.1 GB and +1.9 GB)."""
    func, module, key, gb = SHAPE_BOMBS[kind]
    _, good = good_files(str(tmp_path / "good"), sd15_layers)[kind]
    tensors, meta = header_of(good)
    dtype, shape = tensors[key]
    tensors[key] = ("F32", grown(shape, gb))
    path = tmp_path / "bomb.safetensors"
    sparse_safetensors(path, tensors, meta)
    out = load_in_child(func, module, path)
    assert "WeightsError" in out and "shape" in out and "bomb.safetensors" in out, out
    assert grew_mb(out) < 200, out


class _HolesForZeros:
    """A writable, seekable file whose all-zero writes become holes (a sparse file)."""

    def __init__(self, f):
        self.f = f
        self.tell, self.seek, self.flush = f.tell, f.seek, f.flush

    def write(self, b) -> int:
        b = bytes(b)
        if b.count(0) == len(b):
            self.f.seek(len(b), 1)
        else:
            self.f.write(b)
        return len(b)


def sparse_torch_file(path, obj: dict, key: tuple, numel: int):
    """A zip-format torch file (what torch.save writes, memory-mapped on load) holding ``obj`` with
    ``obj[key[0]][key[1]]...`` a 1-D float32 tensor of ``numel`` zeros over a sparse record: a
    few KB on disk however large it says it is. torch.save writes the dict with that tensor at a size no
    other tensor has; its size is then rewritten in the pickle and its record written as holes."""
    import struct
    import zipfile
    small = 100003  # pickled as a 4-byte BININT: the storage's size and the tensor's shape
    *parents, last = key
    holder = obj
    for name in parents:
        holder = holder[name]
    holder[last] = torch.zeros(small)
    plain = str(path) + ".small"
    torch.save(obj, plain)
    pickled = b"J" + struct.pack("<i", small)
    with zipfile.ZipFile(plain) as src, open(path, "wb") as raw:
        records = [i for i in src.infolist() if "/data/" in i.filename and i.file_size == 4 * small]
        assert len(records) == 1
        with zipfile.ZipFile(_HolesForZeros(raw), "w", zipfile.ZIP_STORED) as dst:
            for info in src.infolist():
                data = src.read(info.filename)
                if info.filename.endswith("/data.pkl"):
                    assert data.count(pickled) == 2
                    data = data.replace(pickled, b"J" + struct.pack("<i", numel))
                if info is records[0]:
                    zero, left = bytes(2 ** 20), 4 * numel
                    with dst.open(info.filename, "w", force_zip64=True) as w:
                        while left:
                            n = min(left, len(zero))
                            w.write(zero[:n])
                            left -= n
                else:
                    dst.writestr(info.filename, data)
    os.remove(plain)


TORCH_SHAPE_BOMBS = {  # a .bin / .pt the loader reads through torch: (function, module, good file, tensor, GB)
    "ip-adapter bin": ("load_adapter", "stylekit.models.ip_adapter", "adapter.bin", ("image_proj", "norm_out.weight"), 3),
    "translator pt": ("load_translator", "stylekit.models.stylerdalle", None, ("outNet.bias",), 1.5),
}


@pytest.mark.parametrize("kind", sorted(TORCH_SHAPE_BOMBS))
def test_a_torch_file_whose_shapes_do_not_fit_is_refused_before_reading(tmp_path, sd15_layers, kind):
    """The same for the torch formats (the IP-Adapter's .bin, the official translator's .pt): the good file with
    one tensor grown to 1.5-3 GB (under the format's bound), a sparse zip-format file that torch memory-maps.
    The loader checks every name and shape on meta tensors of what torch.load gave before it touches one, so
    the child's memory grows by far less than the tensor declares (before, the finite check read it first: the
    child grew by 8.3 GB for the adapter's 3 GB tensor, 4.1 GB for the translator's 1.5 GB)."""
    func, module, good, key, gb = TORCH_SHAPE_BOMBS[kind]
    if good:
        obj = torch.load(good_files(str(tmp_path / "good"), sd15_layers)[kind][1], weights_only=True)
    else:
        obj = dict(tiny_translator(seed=2).state_dict())
    path = tmp_path / f"bomb{os.path.splitext(good or '.pt')[1]}"
    sparse_torch_file(path, obj, key, int(gb * 2 ** 28))
    assert os.stat(path).st_blocks * 512 < 2 ** 20  # sparse: what it declares is not on disk
    out = load_in_child(func, module, path)
    assert "WeightsError" in out and path.name in out, out
    assert grew_mb(out) < 200, out


@pytest.mark.parametrize("numel,refusal", [(2 ** 22, "has shape"),
                                           (2 ** 30 + 2 ** 20, "more than DEADiff's image encoder ever holds")])
def test_a_checkpoint_whose_shapes_would_build_a_huge_encoder_is_refused_before_extracting(tmp_path, sd15_layers,
                                                                                          numel, refusal):
    """DEADiff Extract sizes the Q-Formers from the checkpoint's tensors: a checkpoint whose ln_vision.weight says
    the vision width is 2^22 (a 16 MB tensor, a sparse file) made it build cross-attention projections that
    wide before any shape was refused (the child grew by 4.1 GB). The names and shapes are now checked on
    meta tensors first, and a DEADiff part declaring more than 4 GB is refused before that, so the child
    grows by far less, and nothing is written."""
    sd = {k: v.contiguous() for k, v in tiny_deadiff_state_dict(sd15_layers, seed=1).items()}
    path = tmp_path / "deadiff_v1.ckpt"
    sparse_torch_file(path, {"state_dict": sd}, ("state_dict", "style_blip.ln_vision.weight"), numel)
    out = in_child("from pathlib import Path\nfrom stylekit.models.deadiff import extract_file",
                   f"extract_file(Path({str(path)!r}), Path({str(tmp_path / 'out.safetensors')!r}))")
    assert "DEADiffWeightsError" in out and refusal in out, out
    assert grew_mb(out) < 200, out
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("kind,key", [("deadiff", "style_proj_layer.dense1.weight"),
                                      ("ip-adapter safetensors", "ip_adapter.1.to_k_ip.weight")])
def test_integer_weights_are_refused_from_the_header(tmp_path, sd15_layers, kind, key):
    load, path = good_files(str(tmp_path), sd15_layers)[kind]
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        sd, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    sd[key] = sd[key].to(torch.int32)
    save_file(sd, path, metadata=meta)
    refused(load, path, rf"{key}.*I32")


def legacy_bomb(path, numel: int = 2 ** 28):
    """A torch file in the legacy (pre-1.6, not zip) format, which torch reads whole and cannot memory-map,
    holding {"x": a float32 tensor} whose storage declares ``numel`` elements (1 GB) over a sparse body: the
    small file torch.save writes, its records of the size rewritten, the file extended."""
    import struct
    small = 123457
    torch.save({"x": torch.zeros(small)}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    # BININT in the pickle (the storage's size and the tensor's shape); the int64 record before the data
    pickled, header = b"J" + struct.pack("<i", small), struct.pack("<q", small)
    assert data.count(pickled) == 2 and data.count(header) == 1
    data = data.replace(pickled, b"J" + struct.pack("<i", numel)).replace(header, struct.pack("<q", numel))
    start = data.index(struct.pack("<q", numel)) + 8
    with open(path, "wb") as f:
        f.write(data[:start])
        f.truncate(start + 4 * numel)


def test_a_legacy_torch_file_declaring_a_gigabyte_is_refused_before_it_is_read(tmp_path):
    """CatVersion's official pytorch_adapter.bin may be any torch file; one in the legacy format is read whole
    (torch allocates and fills what its storages declare), so its size is checked first: a sparse 1 GB file
    that says it holds one tensor of 2^28 floats is refused, and the child's memory grows by far less than
    1 GB (before the check it grew by the whole gigabyte). A small legacy file still loads."""
    path = tmp_path / "pytorch_adapter.bin"
    legacy_bomb(path)
    out = in_child("from stylekit.models.weights_file import load_tensor_dict",
                   f"load_tensor_dict({str(path)!r}, max_bytes=64 * 2 ** 20)")
    assert "read whole into memory" in out and "pytorch_adapter.bin" in out, out
    assert grew_mb(out) < 200, out
    small = tmp_path / "small.bin"
    torch.save({"x": torch.ones(3)}, small, _use_new_zipfile_serialization=False)
    from stylekit.models.weights_file import load_tensor_dict
    assert torch.equal(load_tensor_dict(str(small))["x"], torch.ones(3))
