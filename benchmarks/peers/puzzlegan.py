"""PuzzleGAN written straightforwardly in plain PyTorch: a shared patch encoder (3x3 conv, two
stride-2 4x4 convs, linear) whose codes are summed over the used slots, a DCGAN image
generator fed [z, sum], a DCGAN mask generator fed [code_k, sum] for each of the 3 slots, a
DCGAN discriminator; one iteration = D's step (real vs generated, plus real vs the two kinds of
re-assembled images: parts swapped with the next image of the batch, inside the true boxes)
then G's step (non-saturating loss + 10 x (mask BCE + 1 - soft IoU) over the used slots + 10 x
L1 inside the true boxes), 10% of rows with every patch hidden. genlab's ``cpu`` architecture
(latent 64, codes 64, width 32, mask width 16, D width 32) on 3x32x32 images, 12x12 patches."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

GENLAB = ("puzzlegan", {"latent": 64, "embed": 64, "width": 32, "mask_width": 16,
                        "d_width": 32})
SHAPE = (3, 32, 32)


def dcgan_generator(inputs: int, out: int, width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(inputs, width * 4, 4, 1, 0, bias=False),
        nn.BatchNorm2d(width * 4), nn.ReLU(),
        nn.ConvTranspose2d(width * 4, width * 2, 4, 2, 1, bias=False),
        nn.BatchNorm2d(width * 2), nn.ReLU(),
        nn.ConvTranspose2d(width * 2, width, 4, 2, 1, bias=False),
        nn.BatchNorm2d(width), nn.ReLU(),
        nn.ConvTranspose2d(width, out, 4, 2, 1))


def reference_step(batch_size: int) -> Callable[[], None]:
    latent, embed, width, mask_width, d_width, slots, patch = 64, 64, 32, 16, 32, 3, 12
    b = batch_size
    encoder = nn.Sequential(
        nn.Conv2d(3, width, 3, 1, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(width, width * 2, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(width * 2, width * 4, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Flatten(), nn.Linear(width * 4 * 9, embed))
    image_g = dcgan_generator(latent + embed, 3, width)
    mask_g = dcgan_generator(2 * embed, 1, mask_width)
    d = nn.Sequential(
        nn.Conv2d(3, d_width, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(d_width, d_width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(d_width * 2),
        nn.LeakyReLU(0.2),
        nn.Conv2d(d_width * 2, d_width * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(d_width * 4),
        nn.LeakyReLU(0.2), nn.Conv2d(d_width * 4, 1, 4))
    g_params = [*encoder.parameters(), *image_g.parameters(), *mask_g.parameters()]
    opt_g = torch.optim.Adam(g_params, lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))

    x = torch.rand(b, *SHAPE)
    real = x * 2 - 1
    count = torch.randint(1, slots + 1, (b,))
    valid = torch.arange(slots)[None, :] < count[:, None]  # (B, K)
    truth = torch.zeros(b, slots, 32, 32)
    patches = torch.zeros(b, slots, 3, patch, patch)
    for i in range(b):
        for k in range(int(count[i])):
            t, left = torch.randint(0, 32 - patch + 1, (2,)).tolist()
            truth[i, k, t:t + patch, left:left + patch] = 1
            patches[i, k] = x[i, :, t:t + patch, left:left + patch]
    inside = truth.amax(1, keepdim=True)  # (B, 1, H, W); every row has a patch
    other = torch.roll(real, -1, 0)
    mixed = torch.cat([other * inside + real * (1 - inside), real * inside + other * (1 - inside)])

    def generate(shown: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        use = shown.flatten().float()
        codes = encoder(patches.flatten(0, 1) * use[:, None, None, None] * 2 - 1) * use[:, None]
        codes = codes.view(b, slots, embed)
        total = codes.sum(1)
        z = torch.randn(b, latent)
        image = torch.tanh(image_g(torch.cat([z, total], 1)[:, :, None, None]))
        pairs = torch.cat([codes, total[:, None].expand(b, slots, embed)], 2)
        logits = mask_g(pairs.flatten(0, 1)[:, :, None, None]).view(b, slots, 32, 32)
        return image, logits

    def shown_slots() -> torch.Tensor:
        return valid & (torch.rand(b) >= 0.1)[:, None]

    def step() -> None:
        opt_d.zero_grad()
        with torch.no_grad():
            fake, _ = generate(shown_slots())
        real_logit = d(real).flatten()
        loss_d = (F.softplus(-real_logit).mean() + F.softplus(d(fake).flatten()).mean()
                  + F.softplus(-real_logit).mean() + F.softplus(d(mixed).flatten()).mean())
        loss_d.backward()
        opt_d.step()
        opt_g.zero_grad()
        shown = shown_slots()
        fake, logits = generate(shown)
        adv = F.softplus(-d(fake).flatten()).mean()
        bce = F.binary_cross_entropy_with_logits(logits, truth, reduction="none").mean((2, 3))
        spatial = (bce * shown).sum() / shown.sum().clamp(min=1)
        p = torch.sigmoid(logits)
        inter = (p * truth).sum((2, 3))
        soft_iou = inter / (p.sum((2, 3)) + truth.sum((2, 3)) - inter).clamp(min=1e-6)
        overlap = ((1 - soft_iou) * shown).sum() / shown.sum().clamp(min=1)
        seen = (truth * shown[:, :, None, None]).amax(1, keepdim=True)
        appearance = (((fake + 1) / 2 - x).abs() * seen).sum() / (seen.sum() * 3).clamp(min=1)
        loss_g = adv + 10 * (spatial + overlap) + 10 * appearance
        loss_g.backward()  # D's weights get gradients here; its optimizer zeroes them first
        opt_g.step()

    return step
