import torch

from stylekit.bridge import DiscreteSchedule, sample_euler
from stylekit.models.inversion import every_step_schedule, invert, styleid_schedule
from stylekit.models.schedules import ddim_uniform_sigmas


def gaussian_eps(m, c):
    """Exact eps of data ~ N(m, c^2 I): smooth in sigma, so DDIM inversion converges with steps."""
    return lambda x, sigma: sigma * (x - m) / (c ** 2 + sigma ** 2)


def gaussian_flow(m, c, x, s_from, s_to):
    """The exact probability-flow ODE of N(m, c^2 I) from ``s_from`` to ``s_to`` (sigma space)."""
    return m + (x - m) * ((c ** 2 + s_to ** 2) / (c ** 2 + s_from ** 2)) ** 0.5


def test_invert_then_sample_follows_the_exact_flow_with_shrinking_error():
    """StyleID's pipeline: from the clean latent taken at t = 1 up to t = 999, back down from the second
    timestep to t = 0. With the exact eps of a Gaussian, the round trip approaches the exact ODE from the
    clean latent at sigma(1) to sigma(0) as the steps grow (the skipped step's gap shrinks with them)."""
    ms = DiscreteSchedule()
    m, c = torch.full((1, 4, 8, 8), 0.3), 0.8
    x0 = m + c * torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    eps = gaussian_eps(m, c)
    s0, s1 = float(ms.sigmas[0]), float(ms.sigmas[1])
    errors = []
    for steps in (10, 50, 200):
        sched = styleid_schedule(ms, steps)
        inv = invert(eps, x0, sched)
        rec = sample_euler(lambda x, s: x - s.view(-1, 1, 1, 1) * eps(x, s.view(-1, 1, 1, 1)), inv.latent,
                           sched.sample_sigmas)
        exact = gaussian_flow(m, c, x0 * (1 + s1 ** 2) ** 0.5, s1, s0)
        errors.append(float((rec - exact).abs().mean()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.25 * errors[0], errors


def test_every_step_inversion_then_sampling_reconstructs_with_shrinking_error():
    """The alternative convention: from sigma 0 up ddim_uniform's sigmas, eps read at the level stepped to,
    sampled back over the same sigmas to 0: the round trip converges to the clean latent."""
    ms = DiscreteSchedule()
    m, c = torch.full((1, 4, 8, 8), 0.3), 0.8
    x0 = m + c * torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    eps = gaussian_eps(m, c)
    errors = []
    for steps in (10, 50, 200):
        sig = ddim_uniform_sigmas(ms, steps)
        inv = invert(eps, x0, every_step_schedule(sig))
        rec = sample_euler(lambda x, s: x - s.view(-1, 1, 1, 1) * eps(x, s.view(-1, 1, 1, 1)), inv.latent, sig)
        errors.append(float((rec - x0).abs().mean()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.25 * errors[0], errors


def test_ddim_schedule_calls_at_the_current_timestep_and_skips_the_top_one():
    ms = DiscreteSchedule()
    s = [float(v) for v in ms.sigmas]
    sched = styleid_schedule(ms, 10)  # timesteps 1, 101, ..., 901
    seen = []
    x0 = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    inv = invert(lambda x, sigma: (seen.append((sigma, x)), torch.zeros_like(x))[1], x0, sched)
    assert [sg for sg, _ in seen] == [s[t] for t in range(1, 1000, 100)]  # eps read at the level stepped from
    assert list(sched.levels) == [s[t] for t in range(1, 1000, 100)] + [s[999]]  # the last target is t = 999
    assert torch.equal(seen[0][1], x0 * sched.clean_scale)
    # VP scaling (x / sqrt(1 + sigma^2)): the clean latent is the latent at t = 1 ...
    torch.testing.assert_close(seen[0][1] / (1 + s[1] ** 2) ** 0.5, x0, rtol=1e-6, atol=0)
    # ... the sampler skips t = 901 and starts at t = 801 with the t = 999 latent as it is in VP scaling
    assert sched.sample_sigmas.tolist() == torch.tensor([s[t] for t in range(801, 0, -100)] + [s[0]]).tolist()
    top = x0 * sched.clean_scale  # eps is 0: the latent does not move in sigma space
    torch.testing.assert_close(inv.latent / (1 + s[801] ** 2) ** 0.5, top / (1 + s[999] ** 2) ** 0.5,
                               rtol=1e-6, atol=0)
    assert set(inv.inputs) == {sg for sg, _ in seen}


def test_flow_schedule_reads_the_velocity_where_it_steps_to():
    sig = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    sched = every_step_schedule(sig)
    seen = []
    inv = invert(lambda x, sigma: (seen.append(sigma), torch.ones_like(x))[1], torch.zeros(1, 4, 2, 2), sched)
    assert seen == [0.25, 0.5, 0.75, 1.0] and torch.equal(sched.sample_sigmas, sig)
    assert torch.equal(inv.latent, torch.ones(1, 4, 2, 2))  # 0 + (1 - 0) * 1: no rescaling on a flow


def test_ddim_uniform_schedule_shape():
    ms = DiscreteSchedule()
    for steps in (4, 25, 50):
        sig = ddim_uniform_sigmas(ms, steps)
        assert len(sig) == steps + 1 and float(sig[-1]) == 0.0 and bool((sig[:-1] > sig[1:]).all())
        assert abs(float(sig[-2]) - float(ms.sigmas[1])) < 1e-6  # the lowest non-zero step is t = 1
        sched = styleid_schedule(ms, steps)  # the same timesteps, less the top one, ending at t = 0
        assert torch.equal(sched.sample_sigmas[:-1], sig[1:-1])
        assert float(sched.sample_sigmas[-1]) == float(ms.sigmas[0])


def test_ddim_schedule_follows_the_official_timesteps_when_steps_do_not_divide_1000():
    """make_ddim_timesteps gives exactly `steps` timesteps (1 + 33 k at 30 steps, top 958); encode_ddim's
    step from the top one goes to 991 (not 999), and that latent is the start, fed at 925."""
    import pytest

    from stylekit.errors import InputError
    ms = DiscreteSchedule()
    s = [float(v) for v in ms.sigmas]
    sched = styleid_schedule(ms, 30)
    assert sched.calls() == [s[1 + 33 * k] for k in range(30)] and sched.levels[-1] == s[991]
    assert sched.sample_sigmas.tolist() == torch.tensor([s[1 + 33 * k] for k in range(28, -1, -1)] + [s[0]]).tolist()
    assert len(styleid_schedule(ms, 999).levels) == 999  # t = 999 is the top timestep: no zero-length step
    with pytest.raises(InputError, match="2 to 999 steps"):
        styleid_schedule(ms, 1000)
