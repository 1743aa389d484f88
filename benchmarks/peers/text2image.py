"""text2image written straightforwardly in plain PyTorch: a word-embedding + two 1-D conv
text encoder (masked mean), a DCGAN generator fed [z, LeakyReLU(Linear(t))], a DCGAN
discriminator whose 4x4 map is concatenated with the tiled compressed text, a 1x1 and a 4x4
convolution to one logit; one iteration = D's GAN-CLS step (real/right, real/wrong, fake/right;
the text encoder updated with D) then G's step with the GAN-INT term. genlab's ``cpu``
architecture (width 32, words 64, text 128, proj 64, z 100) on 3x32x32 images, random token ids."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

GENLAB = ("text2image", {"width": 32, "words": 64, "text": 128, "proj": 64})
SHAPE = (3, 32, 32)


def reference_step(batch_size: int) -> Callable[[], None]:
    latent, width, words, text, proj, vocab, length = 100, 32, 64, 128, 64, 73, 16
    embed = nn.Embedding(vocab, words, padding_idx=0)
    convs = nn.Sequential(nn.Conv1d(words, text, 3, padding=1), nn.LeakyReLU(0.2),
                          nn.Conv1d(text, text, 3, padding=1), nn.LeakyReLU(0.2))
    g_proj = nn.Sequential(nn.Linear(text, proj), nn.LeakyReLU(0.2))
    g_net = nn.Sequential(
        nn.ConvTranspose2d(latent + proj, width * 4, 4, 1, 0, bias=False),
        nn.BatchNorm2d(width * 4), nn.ReLU(),
        nn.ConvTranspose2d(width * 4, width * 2, 4, 2, 1, bias=False),
        nn.BatchNorm2d(width * 2), nn.ReLU(),
        nn.ConvTranspose2d(width * 2, width, 4, 2, 1, bias=False),
        nn.BatchNorm2d(width), nn.ReLU(),
        nn.ConvTranspose2d(width, 3, 4, 2, 1), nn.Tanh())
    d_body = nn.Sequential(
        nn.Conv2d(3, width, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2),
        nn.LeakyReLU(0.2),
        nn.Conv2d(width * 2, width * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 4),
        nn.LeakyReLU(0.2))
    d_proj = nn.Sequential(nn.Linear(text, proj), nn.LeakyReLU(0.2))
    d_joint = nn.Sequential(nn.Conv2d(width * 4 + proj, width * 4, 1), nn.LeakyReLU(0.2),
                            nn.Conv2d(width * 4, 1, 4))

    def encode(ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != 0).unsqueeze(1).float()
        h = convs(embed(ids).transpose(1, 2)) * mask
        return h.sum(2) / mask.sum(2).clamp(min=1)

    def generate(t: torch.Tensor) -> torch.Tensor:
        z = torch.randn(t.shape[0], latent)
        return g_net(torch.cat([z, g_proj(t)], 1)[:, :, None, None])

    def judge(fmap: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tiled = d_proj(t)[:, :, None, None].expand(-1, -1, 4, 4)
        return d_joint(torch.cat([fmap, tiled], 1)).flatten()

    d_params = [*embed.parameters(), *convs.parameters(), *d_body.parameters(),
                *d_proj.parameters(), *d_joint.parameters()]
    g_params = [*g_proj.parameters(), *g_net.parameters()]
    opt_d = torch.optim.Adam(d_params, lr=2e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(g_params, lr=2e-4, betas=(0.5, 0.999))
    real = torch.rand(batch_size, *SHAPE) * 2 - 1
    ids = torch.randint(2, vocab, (batch_size, length))
    ids[:, 10:] = 0
    wrong = torch.roll(torch.arange(batch_size), -1)

    def step() -> None:
        opt_d.zero_grad()
        t = encode(ids)
        with torch.no_grad():
            fake = generate(t)
        fmap = d_body(real)
        loss_d = (F.softplus(-judge(fmap, t)).mean()
                  + (F.softplus(judge(fmap, t[wrong])).mean()
                     + F.softplus(judge(d_body(fake), t)).mean()) / 2)
        loss_d.backward()
        opt_d.step()
        opt_g.zero_grad()
        with torch.no_grad():
            t = encode(ids)
        t_int = 0.5 * t + 0.5 * t[wrong]
        loss_g = (F.softplus(-judge(d_body(generate(t)), t)).mean()
                  + F.softplus(-judge(d_body(generate(t_int)), t_int)).mean())
        loss_g.backward()  # D's weights get gradients here; its optimizer zeroes them first
        opt_g.step()

    return step
