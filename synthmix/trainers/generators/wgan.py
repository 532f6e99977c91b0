"""WGAN-GP pieces shared by the Wasserstein families (dcgan_wgangp, and the progressive GANs).

Written by hand: the gradient penalty is a few lines and no maintained library exposes it as a
function of (critic, real, fake).
"""

from __future__ import annotations

import torch


def gradient_penalty(critic: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(critic(real), critic(fake), mean (||grad critic(x_hat)||_2 - 1)^2) with x_hat on the
    line between real and fake (Gulrajani et al.). One critic forward over the concatenated
    batch: a critic without batch norm gives the same as three calls, and a DDP-wrapped
    critic sees exactly one forward per backward."""
    x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    scores = critic(torch.cat([real, fake, x_hat]))
    s_real, s_fake, s_hat = scores.float().split(len(real))
    (grad,) = torch.autograd.grad(s_hat.sum(), x_hat, create_graph=True)
    penalty = ((grad.float().flatten(1).norm(2, dim=1) - 1) ** 2).mean()
    return s_real, s_fake, penalty
