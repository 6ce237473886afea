"""Wall-clock helpers shared by the benchmarks."""
import time


def best_of(fn, n=3):
    """(fastest of ``n`` runs in seconds, the last run's result)."""
    times, out = [], None
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def interleaved(runs: dict, rounds: int = 4) -> dict:
    """Fastest time of each run over ``rounds`` rounds that run every entry once in turn, so that a
    machine's drift (clock, other load) falls on all entries alike rather than on the last ones."""
    best = {name: float("inf") for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            best[name] = min(best[name], best_of(fn, 1)[0])
    return best


def check_targets(name: str, fig: dict, targets: dict) -> None:
    """Record each target (figure <= bound) and whether it was met in ``fig["targets"]``, write the
    figures to bench/<name>.json (figures from random-weight models), and report each miss (its figure,
    value and bound) as a warning in pytest's summary: benchmarks report misses, they never fail."""
    import json
    import warnings
    from pathlib import Path
    fig["random_weights"] = True
    fig["targets"] = {key: {"value": fig[key], "at_most": bound, "met": fig[key] <= bound} for key, bound in targets.items()}
    out = Path("bench")
    out.mkdir(exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(fig, indent=1) + "\n")
    print(json.dumps(fig, indent=1))
    for key, t in fig["targets"].items():
        if not t["met"]:
            warnings.warn(f"MISSED {name}: {key} = {t['value']:.3f}, target <= {t['at_most']}", stacklevel=2)
