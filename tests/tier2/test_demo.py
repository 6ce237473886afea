import json


def test_demo_writes_images_and_report(tmp_path):
    from stylekit.demo import DEMOS, main
    assert main(["--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert "miniature world" in report["note"] and set(report["runs"]) == set(DEMOS)
    assert set(report["effects"]) == set(DEMOS) - {"router"}  # every method's claim, measured
    for name, figures in report["effects"].items():
        assert figures and all({"value"} <= set(f) for f in figures.values())
        assert any({"target", "met"} <= set(f) for f in figures.values())
        assert (tmp_path / f"{name}_sheet.png").stat().st_size > 1000
    for name, run in report["runs"].items():
        assert run["seconds"] > 0
        assert run.get("peak_rss_mb", run.get("process_peak_rss_mb_so_far", 0)) > 0
        for image in run["images"]:
            assert (tmp_path / image).stat().st_size > 100
    assert report["runs"]["router"]["mean_abs_change_vs_plain"] > 0


def test_peak_memory_is_per_method_where_the_system_can_reset_it():
    """A method's peak is its own: after a reset the high-water mark falls back below a large earlier
    allocation (Linux /proc/self/clear_refs); elsewhere the report names the figure a process maximum."""
    import pytest
    import torch

    from stylekit.demo import peak_rss_kb, reset_peak_rss
    big = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    before = peak_rss_kb()
    del big
    if not reset_peak_rss():
        pytest.skip("this system cannot reset the peak resident memory")
    assert peak_rss_kb() < before - 32 * 1024
