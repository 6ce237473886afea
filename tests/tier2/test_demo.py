import json


def test_demo_writes_images_and_report(tmp_path):
    from stylekit.demo import DEMOS, main
    assert main(["--out", str(tmp_path), "--steps", "2"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert "random" in report["note"] and set(report["runs"]) == set(DEMOS)
    for name, run in report["runs"].items():
        assert run["seconds"] > 0 and run["peak_rss_mb"] > 0
        for image in run["images"]:
            assert (tmp_path / image).stat().st_size > 100
    assert report["runs"]["router"]["mean_abs_change_vs_plain"] > 0
