"""The training commands of the README and docs/training.md parse and name real configs; the Python example runs."""

import shlex

from readme import code_blocks, commands

from train.config import PROJECT_ROOT, load_config
from unet_diffusion.cli import build_parser


def parse_train_command(parser, line: str):
    """The parsed arguments of one ``unet-diffusion train`` / ``accelerate launch ... train`` line."""
    argv = shlex.split(line, comments=True)
    while "=" in argv[0]:                  # environment settings such as UNET_DATA_DIR=...
        argv = argv[1:]
    if argv[0] == "accelerate":
        argv = argv[argv.index("unet_diffusion.cli") + 1:]
    else:
        assert argv[0] == "unet-diffusion", line
        argv = argv[1:]
    args = parser.parse_args(argv)
    assert args.command == "train", line
    load_config(args.config, args.overrides)   # the config exists (by name or path) and the overrides are valid
    return args


def test_readme_training_commands_parse_and_their_configs_load(monkeypatch):
    monkeypatch.chdir(PROJECT_ROOT)  # configs/... paths are written from the clone
    parser = build_parser()
    lines = commands("Train a denoiser") + commands("Many GPUs and nodes", page="docs/training.md")
    parsed = [parse_train_command(parser, line) for line in lines]
    assert len(parsed) == 7
    assert any(args.resume == "latest" for args in parsed)


def test_readme_demo_command_parses():
    (line,) = commands("The demo")
    install, demo = line.split(" && ")
    assert install == "pip install -e ."
    assert build_parser().parse_args(shlex.split(demo)[1:]).command == "demo"


def test_training_page_python_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (python,) = code_blocks("The config", page="docs/training.md")
    namespace: dict = {}
    exec(python.replace('"configs/quickstart.yaml"', repr(str(PROJECT_ROOT / "configs" / "quickstart.yaml")))  # noqa: S102
         .replace("train.steps=100", "train.steps=2").replace("train.log_every=10", "train.log_every=1")
         .replace("losses[100]", "losses[2]"), namespace)
    assert namespace["result"].step == 2 and (tmp_path / "runs" / "try" / "model.safetensors").is_file()
