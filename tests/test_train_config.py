"""The training config: defaults, YAML files, overrides, errors that say what to do, shipped configs."""

from pathlib import Path

import pytest
import torch
import yaml

from train.config import Config, ConfigError, apply_overrides, config_from_dict, expand_path, load_config, save_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_defaults_are_valid_and_overrides_apply():
    config = load_config(None, ["optim.lr=1e-4", "model.args.channels=[16, 32]", "train.mixed_precision=bf16",
                                "ema.enabled=false", "diffusion.min_snr_gamma=5"])
    assert config.optim.lr == 1e-4 and isinstance(config.optim.lr, float)  # YAML reads 1e-4 as a string
    assert config.model.args == {"channels": [16, 32]}
    assert config.train.mixed_precision == "bf16" and config.ema.enabled is False
    assert config.diffusion.min_snr_gamma == 5.0
    assert config.train.steps == Config().train.steps  # untouched fields keep their defaults


def test_yaml_file_section_given_in_part_keeps_other_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  steps: 7\noptim:\n  lr: 3.0e-4\n")
    config = load_config(path, ["train.batch_size=8"])
    assert (config.train.steps, config.train.batch_size, config.optim.lr) == (7, 8, 3e-4)
    assert config.train.seed == 0 and config.optim.optimizer == "adamw"


def test_saved_config_loads_back_identical(tmp_path):
    config = load_config(None, ["task=segmentation", "model.preset=seg-small", "segmentation.class_weights=[1, 2]"])
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "unknown key optim.lrr in optim. Did you mean optim.lr?"),
    ("trian.steps=3", "unknown key trian at the top level. Did you mean train?"),
    ("optim.lr=fast", "optim.lr must be float; got 'fast'"),
    ("train.steps=2.5", "train.steps must be int"),
    ("train.mixed_precision=fp8", "train.mixed_precision must be one of 'no', 'fp16', 'bf16'; got 'fp8'"),
    ("diffusion.noise_schedule=quadratic", "diffusion.noise_schedule must be one of 'linear', 'cosine', 'sigmoid', 'scaled_linear'"),
    ("train.batch_size=0", "train.batch_size must be positive"),
    ("data.channels=2", "data.channels must be 1 (grayscale) or 3 (RGB)"),
    ("optim=3", "optim must be OptimConfig"),
])
def test_config_errors_name_the_key_and_the_fix(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)


def test_override_syntax_and_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        apply_overrides({}, ["optim.lr"])
    with pytest.raises(FileNotFoundError, match="no config file at"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="must be a mapping"):
        config_from_dict([1, 2])


def test_yaml_is_read_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("task: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_data_dir_variable_is_expanded(monkeypatch):
    monkeypatch.setenv("UNET_DATA_DIR", "/data/here")
    assert expand_path("${UNET_DATA_DIR}/mnist/train.parquet") == "/data/here/mnist/train.parquet"
    monkeypatch.delenv("UNET_DATA_DIR")
    assert expand_path("${UNET_DATA_DIR}/x").endswith("shared/data/x")


def test_the_shipped_configs_are_there():
    names = {p.stem for p in CONFIGS}
    assert {"quickstart", "ddpm_cifar10", "mnist", "mnist_gpu", "isbi2012", "isbi2012_paper", "shapes_crossattn"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_parses_and_builds_its_model(path):
    from train.loop import build_task

    config = load_config(path)
    task = build_task(config)  # builds the model from preset + args and checks it against the task
    with torch.device("meta"):  # every check of the constructor runs; no memory for the weights
        model = task.build_model()
    assert sum(p.numel() for p in model.parameters()) > 0
    assert yaml.safe_load(path.read_text())  # plain YAML, no tags


def test_ddpm_cifar10_config_has_the_paper_hyperparameters():
    config = load_config(CONFIGS[0].parent / "ddpm_cifar10.yaml")
    d, o, t = config.diffusion, config.optim, config.train
    assert (d.num_train_timesteps, d.noise_schedule, d.beta_start, d.beta_end, d.prediction) == (1000, "linear", 1e-4, 0.02, "epsilon")
    assert (o.optimizer, o.lr, o.warmup_steps, o.grad_clip) == ("adam", 2e-4, 5000, 1.0)
    assert (t.batch_size, t.steps, config.ema.decay) == (128, 800_000, 0.9999)
    from train.loop import build_task

    with torch.device("meta"):
        model = build_task(config).build_model()
    assert sum(p.numel() for p in model.parameters()) == 35_746_307
