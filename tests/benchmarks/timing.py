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
