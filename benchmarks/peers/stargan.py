"""StarGAN written straightforwardly (the loop of the authors' ``solver.py``): G an
encoder-residual-decoder with instance norm taking the image and the tiled one-hot target
attributes, D a PatchGAN body with a critic head and an attribute-classifier head, WGAN-GP with
lambda_gp 10, lambda_cls 1, lambda_rec 10; genlab's ``cpu`` sizes (G 32 channels, 2
down-samplings, 3 residual blocks; D 32 channels, 3 layers) on 3x32x32 images with colour (8),
thickness (3) and rotation (3). One iteration: a critic step, then a generator step.

``GENLAB`` sets genlab's model to the same: the paper's instance norm and unmasked output
(genlab's defaults are batch norm and a masked output) and one critic step per generator step
(the default five would leave genlab's side four critic-only steps out of five)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

GENLAB = ("stargan", {"norm": "instance", "masked": False, "n_critic": 1})
SHAPE = (3, 32, 32)
SIZES = (8, 3, 3)


def _norm_relu(c: int) -> list[nn.Module]:
    return [nn.InstanceNorm2d(c, affine=True), nn.ReLU()]


class _Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), *_norm_relu(c),
                               nn.Conv2d(c, c, 3, 1, 1, bias=False),
                               nn.InstanceNorm2d(c, affine=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x)


def reference_step(batch_size: int) -> Callable[[], None]:
    a = sum(SIZES)
    generator = nn.Sequential(
        nn.Conv2d(3 + a, 32, 7, 1, 3, bias=False), *_norm_relu(32),
        nn.Conv2d(32, 64, 4, 2, 1, bias=False), *_norm_relu(64),
        nn.Conv2d(64, 128, 4, 2, 1, bias=False), *_norm_relu(128),
        *[_Block(128) for _ in range(3)],
        nn.ConvTranspose2d(128, 64, 4, 2, 1, bias=False), *_norm_relu(64),
        nn.ConvTranspose2d(64, 32, 4, 2, 1, bias=False), *_norm_relu(32),
        nn.Conv2d(32, 3, 7, 1, 3), nn.Tanh())
    body = nn.Sequential(nn.Conv2d(3, 32, 4, 2, 1), nn.LeakyReLU(0.01),
                         nn.Conv2d(32, 64, 4, 2, 1), nn.LeakyReLU(0.01),
                         nn.Conv2d(64, 128, 4, 2, 1), nn.LeakyReLU(0.01))
    src, cls = nn.Conv2d(128, 1, 3, 1, 1, bias=False), nn.Conv2d(128, a, 4, bias=False)
    d_params = [*body.parameters(), *src.parameters(), *cls.parameters()]
    opt_g = torch.optim.Adam(generator.parameters(), lr=1e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d_params, lr=1e-4, betas=(0.5, 0.999))
    real = torch.rand(batch_size, *SHAPE) * 2 - 1
    label = torch.stack([torch.randint(0, s, (batch_size,)) for s in SIZES], 1)

    def discriminate(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = body(x)
        return src(h).flatten(1).mean(1), cls(h).flatten(1)

    def onehot(lab: torch.Tensor) -> torch.Tensor:
        c = torch.cat([F.one_hot(lab[:, j], s) for j, s in enumerate(SIZES)], 1).float()
        return c[:, :, None, None].expand(-1, -1, *SHAPE[1:])

    def ce(logits: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        parts = logits.split(list(SIZES), 1)
        return sum(F.cross_entropy(p, lab[:, j]) for j, p in enumerate(parts))

    def step() -> None:
        target = label[torch.randperm(batch_size)]
        # the critic
        out_src, out_cls = discriminate(real)
        fake = generator(torch.cat([real, onehot(target)], 1)).detach()
        fake_src, _ = discriminate(fake)
        alpha = torch.rand(batch_size, 1, 1, 1)
        hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(discriminate(hat)[0].sum(), hat, create_graph=True)
        gp = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
        loss_d = fake_src.mean() - out_src.mean() + ce(out_cls, label) + 10 * gp
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        # the generator
        fake = generator(torch.cat([real, onehot(target)], 1))
        fake_src, fake_cls = discriminate(fake)
        back = generator(torch.cat([fake, onehot(label)], 1))
        loss_g = -fake_src.mean() + ce(fake_cls, target) + 10 * (back - real).abs().mean()
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()

    return step
