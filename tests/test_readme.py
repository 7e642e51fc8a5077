"""The README's model examples run as written."""

from readme import code_blocks


def test_readme_model_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = code_blocks("Quick start: the model")
    assert len(blocks) == 2
    namespace: dict = {}
    exec(blocks[0], namespace)  # noqa: S102 - our own README
    assert namespace["logits"].shape == (1, 2, 388, 388)
    assert namespace["out"].shape == (4, 3, 32, 32)
    exec(blocks[1].replace("num_inference_steps=50", "num_inference_steps=2"), namespace)  # noqa: S102
    assert len(namespace["images"]) == 4


def test_cli_help_lists_commands():
    from unet_diffusion.cli import build_parser

    help_text = build_parser().format_help()
    for command in ("convert", "sample", "segment", "train", "demo"):
        assert command in help_text, f"'unet-diffusion {command}' is not registered"


def test_readme_diffusers_loading_runs(tmp_path, monkeypatch, request):
    """The 'Loading diffusers checkpoints' section, on a tiny diffusers folder standing in for the download."""
    import shlex

    import torch
    from diffusers import DDPMScheduler, UNet2DModel

    from unet_diffusion.cli import main

    monkeypatch.chdir(tmp_path)
    request.addfinalizer(lambda threads=torch.get_num_threads(): torch.set_num_threads(threads))
    torch.set_num_threads(1)  # tiny models on a shared 2-core machine: avoid OpenMP oversubscription
    UNet2DModel(
        sample_size=16, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, attention_head_dim=None,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6,
    ).save_pretrained("ddpm-cifar10-32")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained("ddpm-cifar10-32")

    download, commands = code_blocks("Loading diffusers checkpoints", "bash")
    assert "google/ddpm-cifar10-32" in download
    (python,) = code_blocks("Loading diffusers checkpoints")
    namespace: dict = {}
    exec(python.replace("num_inference_steps=50", "num_inference_steps=2"), namespace)  # noqa: S102 - our own README
    assert len(namespace["images"]) == 4 and namespace["images"][0].size == (16, 16)
    assert (tmp_path / "ddpm-cifar10-32-roundtrip" / "config.json").is_file()
    for line in commands.splitlines():
        argv = shlex.split(line, comments=True)
        assert argv[0] == "unet-diffusion"
        assert main(argv[1:]) == 0, line
    assert (tmp_path / "ddpm-cifar10-32-back" / "diffusion_pytorch_model.safetensors").is_file()
