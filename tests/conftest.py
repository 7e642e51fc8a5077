import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: its models are tiny, and a second thread only adds OpenMP
    contention (measured up to 25x slower on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(**overrides) -> dict:
    """A very small denoiser config (16-pixel inputs, 2 levels) for option tests."""
    config = dict(
        sample_size=16, in_channels=3, channels=(16, 32), blocks_per_level=1, norm_groups=4,
        attention_levels=(1,), mid_attention=True, attention_heads=2,
        weight_init="torch",  # random everywhere, so every option shows in the output (the default starts at zero)
    )
    config.update(overrides)
    return config
