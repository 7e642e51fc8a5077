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
    from train.cli import build_parser

    assert "unet-diffusion" in build_parser().format_help()
