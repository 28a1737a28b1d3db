"""Skip96VAE: a U-Net-shaped beta-VAE for 96x96 RGB patches with a spatial latent."""

from collections.abc import Sequence

import torch
from torch import nn

# The shipped model's widths: the defaults of this class, so train.json, inference.json and ``monai.bundle.load``
# all build the network that ``models/model.pt`` fits.
CHANNELS = (16, 32, 64, 64, 128, 128)
LATENT_CHANNELS = 32


def _conv_block(in_ch: int, out_ch: int, stride: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(min(groups, out_ch), out_ch),
        nn.SiLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, kernel_size=3, padding=1, bias=False),
        nn.GroupNorm(min(groups, out_ch), out_ch),
        nn.SiLU(inplace=True),
    )


class _UpBlock(nn.Module):
    """Upsample x2, drop the skip for a random subset of samples while training, concatenate, convolve."""

    def __init__(self, in_ch: int, out_ch: int, skip_dropout: float, groups: int) -> None:
        super().__init__()
        self.skip_dropout = skip_dropout
        self.up = nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2)
        self.conv = _conv_block(2 * out_ch, out_ch, 1, groups)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.training and self.skip_dropout > 0:
            keep = torch.rand(skip.shape[0], 1, 1, 1, device=skip.device) >= self.skip_dropout
            skip = skip * keep.to(skip.dtype)
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class Skip96VAE(nn.Module):
    """Encoder 96->48->24->12->6->3, a ``latent_channels`` x 3 x 3 latent, and a mirrored decoder with a skip per level.

    Skips keep the reconstruction sharp, but a decoder that can copy through them never needs the latent (posterior
    collapse). ``skip_dropout`` zeroes whole skip tensors per sample during training so the latent must carry the
    content. Skips are zeroed, not rescaled: the decoder learns to work with or without each skip and at evaluation
    always gets it unscaled.

    The decoder has no output activation: it predicts in the same normalised space as its input.

    Args:
        in_channels: image channels.
        channels: feature widths at 96, 48, 24, 12, 6 and 3 px.
        latent_channels: channels of the 3x3 latent.
        skip_dropout: per-sample probability of dropping each skip tensor while training.
        norm_groups: GroupNorm groups (capped at a layer's width).
        recon_only: ``forward`` returns the reconstruction alone (what ``verify_net_in_out``, ``ckpt_export`` and
            TorchScript users expect; the anomaly scorer calls ``encode``/``decode`` itself); training sets it False
            to get ``(recon, mu, logvar)`` for the loss.
    """

    recon_only: torch.jit.Final[bool]

    def __init__(
        self,
        in_channels: int = 3,
        channels: Sequence[int] = CHANNELS,
        latent_channels: int = LATENT_CHANNELS,
        skip_dropout: float = 0.25,
        norm_groups: int = 8,
        recon_only: bool = True,
    ) -> None:
        super().__init__()
        if len(channels) != 6:
            raise ValueError(f"channels needs 6 widths (96, 48, 24, 12, 6, 3 px), got {list(channels)}.")
        if not 0.0 <= skip_dropout < 1.0:
            raise ValueError(f"skip_dropout must be in [0, 1), got {skip_dropout}.")
        self.channels = tuple(int(c) for c in channels)
        self.latent_channels = int(latent_channels)
        self.skip_dropout = float(skip_dropout)
        self.recon_only = recon_only
        self.encoder = nn.ModuleList(
            [_conv_block(in_channels, channels[0], 1, norm_groups)]
            + [_conv_block(channels[i - 1], channels[i], 2, norm_groups) for i in range(1, 6)]
        )
        self.to_latent = nn.Conv2d(channels[5], 2 * latent_channels, kernel_size=1)
        self.from_latent = _conv_block(latent_channels, channels[5], 1, norm_groups)
        # coarsest first: up_blocks[k] takes the 3*2**k px map to 6*2**k px and joins the matching skip
        self.up_blocks = nn.ModuleList(
            [_UpBlock(channels[i + 1], channels[i], self.skip_dropout, norm_groups) for i in range(4, -1, -1)]
        )
        self.head = nn.Conv2d(channels[0], in_channels, kernel_size=1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Return ``mu``, ``logvar`` (each B x latent x 3 x 3) and the five skip tensors, finest first."""
        skips: list[torch.Tensor] = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        mu, logvar = self.to_latent(skips.pop()).chunk(2, dim=1)
        return mu, logvar, skips

    def decode(self, z: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        x = self.from_latent(z)
        for k, block in enumerate(self.up_blocks):
            x = block(x, skips[4 - k])
        return self.head(x)

    def forward_vae(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample z by reparameterisation while training; use z = mu otherwise, so scores are deterministic."""
        mu, logvar, skips = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return self.decode(z, skips), mu, logvar

    def forward(self, x: torch.Tensor):
        recon, mu, logvar = self.forward_vae(x)
        if self.recon_only:
            return recon
        return recon, mu, logvar
