"""Every method's tests carry its marker (``pytest -m catversion``), and every marker is registered."""
import configparser
from pathlib import Path

import conftest

TESTS = Path(__file__).resolve().parents[1]
OWN = {  # each method's own test files; tests elsewhere are marked by their names (conftest.METHOD_WORDS)
    "deadiff": ["tier1/test_deadiff.py", "tier2/test_deadiff_bridge.py", "tier3/test_deadiff_comfy.py"],
    "styleid": ["tier1/test_inversion.py", "tier1/test_feature_fusion.py", "tier2/test_magicstyle.py",
                "tier2/test_styleid_pipeline.py", "tier3/test_magicstyle_comfy.py"],
    "stylestudio": ["tier1/test_stylestudio.py", "tier2/test_stylestudio_bridge.py", "tier3/test_stylestudio_comfy.py"],
    "catversion": ["tier1/test_catversion.py", "tier2/test_catversion_bridge.py", "tier3/test_catversion_comfy.py"],
    "stylerdalle": ["tier1/test_stylerdalle.py", "tier2/test_stylerdalle_nodes.py", "tier3/test_stylerdalle_comfy.py"],
}


def test_each_methods_files_carry_its_marker_and_only_its_own():
    for method, files in OWN.items():
        for f in files:
            assert (TESTS / f).exists(), f
            assert conftest.methods_of(f"{f}::test_it") == [method], f


def test_tests_elsewhere_are_marked_by_their_names():
    assert conftest.methods_of("tier1/test_hardening_files.py::test_dvae_pickle_refused") == ["stylerdalle"]
    assert conftest.methods_of("effect/test_effects.py::test_a_negative_style_image_removes_its_texture") == ["stylestudio"]
    assert conftest.methods_of("tier1/test_router.py::test_copy_on_write") == []


def test_every_method_marker_is_registered():
    ini = configparser.ConfigParser()
    ini.read(TESTS / "pytest.ini")
    registered = {line.split(":")[0].strip() for line in ini["pytest"]["markers"].splitlines() if line.strip()}
    assert set(conftest.METHOD_WORDS) <= registered
