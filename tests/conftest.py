import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_config(**overrides) -> dict:
    """A very small denoiser config (16-pixel inputs, 2 levels) for option tests."""
    config = dict(
        sample_size=16, in_channels=3, channels=(16, 32), blocks_per_level=1, norm_groups=4,
        attention_levels=(1,), mid_attention=True, attention_heads=2,
    )
    config.update(overrides)
    return config
