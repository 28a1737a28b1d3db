"""Small helpers shared by tests (kept out of conftest so they can be imported by name)."""

from scripts.network import Skip96VAE


def tiny_net(**kwargs) -> Skip96VAE:
    return Skip96VAE(channels=(8, 8, 16, 16, 16, 16), latent_channels=8, **kwargs)


def write_datalist(path, slides, key: str = "training"):
    """A MONAI-style JSON datalist of slide paths."""
    import json

    path.write_text(json.dumps({key: [{"image": str(s)} for s in slides]}))
    return path
