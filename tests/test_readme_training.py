"""The README's Training section: its commands parse and name real configs, its Python runs."""

import shlex

from readme import code_blocks, section

from train.config import PROJECT_ROOT, load_config
from unet_diffusion.cli import build_parser


def test_readme_training_commands_parse_and_their_configs_load():
    blocks = [block.replace("\\\n", " ") for block in code_blocks("Training", language="bash")]  # join continued lines
    commands = [line for block in blocks for line in block.strip().splitlines()]
    assert commands[0] == "pip install -e . && unet-diffusion demo"
    parser = build_parser()
    trains = 0
    for line in commands[1:]:
        argv = shlex.split(line, comments=True)
        while "=" in argv[0]:                  # environment settings such as UNET_DATA_DIR=...
            argv = argv[1:]
        if argv[0] == "python":                # a benchmark that scores the trained run: python -m bench.NAME
            assert argv[1] == "-m" and (PROJECT_ROOT / f"{argv[2].replace('.', '/')}.py").is_file(), argv[1:3]
            continue
        if argv[0] == "accelerate":
            argv = argv[argv.index("unet_diffusion.cli") + 1:]
        else:
            assert argv[0] == "unet-diffusion"
            argv = argv[1:]
        args = parser.parse_args(argv)
        assert args.command == "train"
        load_config(PROJECT_ROOT / args.config, args.overrides)   # the config exists and the overrides are valid
        trains += 1
    assert trains == 9


def test_readme_training_python_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (python,) = code_blocks("Training")
    namespace: dict = {}
    exec(python.replace('"configs/quickstart.yaml"', repr(str(PROJECT_ROOT / "configs" / "quickstart.yaml")))  # noqa: S102
         .replace("train.steps=100", "train.steps=2").replace("train.log_every=10", "train.log_every=1")
         .replace("losses[100]", "losses[2]"), namespace)
    assert namespace["result"].step == 2 and (tmp_path / "runs" / "try" / "model.safetensors").is_file()


def test_readme_shows_the_demo_grid():
    assert "![samples of the quick-start model](docs/quickstart_samples.png)" in section("Training")
    assert (PROJECT_ROOT / "docs" / "quickstart_samples.png").is_file()
