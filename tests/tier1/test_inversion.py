import torch

from stylekit.bridge import DiscreteSchedule, sample_euler
from stylekit.models.inversion import ddim_invert
from stylekit.models.inversion import ddim_uniform_sigmas


def gaussian_eps(m, c):
    """Exact eps of data ~ N(m, c^2 I): smooth in sigma, so DDIM inversion converges with steps."""
    return lambda x, sigma: sigma * (x - m) / (c ** 2 + sigma ** 2)


def test_invert_then_sample_reconstructs_with_shrinking_error():
    ms = DiscreteSchedule()
    m, c = torch.full((1, 4, 8, 8), 0.3), 0.8
    x0 = m + c * torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    eps = gaussian_eps(m, c)
    errors = []
    for steps in (10, 50, 200):
        sig = ddim_uniform_sigmas(ms, steps)
        inv = ddim_invert(eps, x0, sig)
        rec = sample_euler(lambda x, s: x - s.view(-1, 1, 1, 1) * eps(x, s.view(-1, 1, 1, 1)), inv.latent, sig)
        errors.append(float((rec - x0).abs().mean()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.25 * errors[0], errors


def test_inversion_calls_the_model_at_the_sampling_sigmas():
    ms = DiscreteSchedule()
    sig = ddim_uniform_sigmas(ms, 8)
    seen = []
    inv = ddim_invert(lambda x, s: (seen.append(s), torch.zeros_like(x))[1], torch.ones(2, 4, 4, 4), sig)
    assert sorted(seen, reverse=True) == [float(s) for s in sig[:-1]]
    assert set(inv.inputs) == set(seen) and torch.equal(inv.latent, torch.ones(2, 4, 4, 4))


def test_ddim_uniform_schedule_shape():
    ms = DiscreteSchedule()
    for steps in (4, 25, 50):
        sig = ddim_uniform_sigmas(ms, steps)
        assert len(sig) == steps + 1 and float(sig[-1]) == 0.0 and bool((sig[:-1] > sig[1:]).all())
        assert abs(float(sig[-2]) - float(ms.sigmas[1])) < 1e-6  # the lowest non-zero step is t = 1
