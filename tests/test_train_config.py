"""The training config: defaults, YAML files, overrides, errors that say what to do, shipped configs."""

import json
from pathlib import Path
from typing import Literal

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


def test_data_dir_variable_is_expanded(monkeypatch, tmp_path):
    monkeypatch.setenv("UNET_DATA_DIR", str(tmp_path))
    assert expand_path("${UNET_DATA_DIR}/mnist/train.parquet") == str(tmp_path.resolve() / "mnist" / "train.parquet")


def test_the_shipped_configs_are_there():
    names = {p.stem for p in CONFIGS}
    assert {"quickstart", "ddpm_cifar10", "mnist", "mnist_gpu", "isbi2012", "isbi2012_paper", "shapes_crossattn",
            "isbi2012_latent"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_parses_and_builds_its_model(path, tmp_path):
    from train.loop import build_task

    config = load_config(path)
    if config.diffusion.vae:  # a Hub VAE, not downloadable offline: a small random one that also shrinks images 8x
        config.diffusion.vae = str(stand_in_vae(tmp_path / "vae"))
    task = build_task(config)  # builds the model from preset + args and checks it against the task
    with torch.device("meta"):  # every check of the constructor runs; no memory for the weights
        model = task.build_model()
    assert sum(p.numel() for p in model.parameters()) > 0
    assert yaml.safe_load(path.read_text())  # plain YAML, no tags


def stand_in_vae(folder: Path) -> Path:
    """A small random AutoencoderTiny of TAESD's shape: 3-channel images, 4-channel latents 8x smaller per side."""
    from diffusers import AutoencoderTiny

    AutoencoderTiny(encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4, num_encoder_blocks=(1,) * 4,
                    num_decoder_blocks=(1,) * 4).save_pretrained(folder)
    return folder


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


def test_a_choice_outside_the_literal_names_the_key_and_the_choices():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"segmentation": {"loss": "focal"}})
    assert "segmentation.loss must be one of 'ce', 'dice', 'ce_dice'; got 'focal'." in str(err.value)
    with pytest.raises(ConfigError, match="train.mixed_precision must be one of .*got False .*quote it"):
        load_config(None, ["train.mixed_precision=no"])  # YAML reads a bare no as false


def test_a_nested_unknown_key_gets_a_did_you_mean():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"data": {"augment": {"hflipp": True}}})
    assert "unknown key data.augment.hflipp in data.augment. Did you mean data.augment.hflip?" in str(err.value)


def test_one_checker_serves_a_unet_config_and_a_training_config(tmp_path):
    from train.loop import build_task
    from unet_diffusion import UNet
    from unet_diffusion.errors import InputError

    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet", "norm_groups": "four"}))
    with pytest.raises(InputError) as from_json:
        UNet.from_pretrained(tmp_path)  # the config is checked before any weight file is looked for
    with pytest.raises(InputError) as from_model_args:
        build_task(load_config(None, ["model.args.norm_groups=four"]))
    with pytest.raises(InputError) as from_yaml:
        load_config(None, ["train.seed=four"])
    assert "config.json: norm_groups must be int; got 'four' (str)." in str(from_json.value)
    assert "model.args: norm_groups must be int; got 'four' (str)." in str(from_model_args.value)
    assert "train.seed must be int; got 'four' (str)." in str(from_yaml.value)


@pytest.mark.parametrize("value, hint, expected", [
    ([32, 32], int | tuple[int, int] | None, (32, 32)),  # JSON and YAML have lists where the annotation says tuple
    ([1, 2, 3], tuple[int, ...], (1, 2, 3)),
    (2, float, 2.0),
    (None, str | None, None),
    ("sample", Literal["epsilon", "v", "sample"], "sample"),
])
def test_values_from_json_and_yaml_fit_their_annotations(value, hint, expected):
    from unet_diffusion.annotations import check_value

    converted = check_value(value, hint, "key")
    assert converted == expected and type(converted) is type(expected)


@pytest.mark.parametrize("value, hint, coerce, message", [
    ([1, 2, 3], int | tuple[int, int] | None, False, "key must be int | tuple[int, int] | None; got [1, 2, 3] (list)."),
    (True, int, True, "key must be int; got True (bool)."),  # a bool is no number
    ("1e-4", float, False, "key must be float; got '1e-4' (str)."),  # config.json: strings stay strings
    (2.0, int, False, "key must be int; got 2.0 (float)."),
])
def test_values_that_do_not_fit_name_the_key_the_type_and_the_value(value, hint, coerce, message):
    from unet_diffusion.annotations import check_value
    from unet_diffusion.errors import InputTypeError

    with pytest.raises(InputTypeError) as err:
        check_value(value, hint, "key", coerce=coerce)
    assert str(err.value) == message


def test_yaml_forms_of_numbers_and_booleans_are_read_when_coercing():
    from unet_diffusion.annotations import check_value

    assert check_value("1e-4", float, "k", coerce=True) == 1e-4  # PyYAML reads 1e-4 (no dot) as a string
    assert check_value(1000.0, int, "k", coerce=True) == 1000 and check_value("Yes", bool, "k", coerce=True) is True


# Data that does not exist: reading it would fail, so a rule's error shows it was checked first, as the config was read.
MISSING_PAIRS = ["data.source=pairs", "data.image_dir=/nonexistent/images", "data.mask_dir=/nonexistent/masks"]
SEGMENTER = ["task=segmentation", "model.preset=seg-small", "data.channels=1", *MISSING_PAIRS]
VOLUMES_3D = ["task=segmentation", "model.preset=unet3d-cicek2016", "data.channels=1", "data.source=volumes",
              "data.image_dir=/nonexistent/volumes", "data.mask_dir=/nonexistent/labels"]


def test_the_bases_of_the_rule_tests_load():
    for base in (MISSING_PAIRS, SEGMENTER, VOLUMES_3D):
        load_config(None, base)


@pytest.mark.parametrize("overrides, message", [
    # diffusion: the noise schedule, latents, and the model the task needs
    (MISSING_PAIRS + ["diffusion.zero_terminal_snr=true"], "diffusion.zero_terminal_snr needs diffusion.prediction 'v' or 'sample'"),
    (MISSING_PAIRS + ["diffusion.cache_latents=true"], "diffusion.cache_latents caches a VAE's latents: set diffusion.vae"),
    (MISSING_PAIRS + ["model.preset=seg-small"], "the diffusion task needs a denoising model (head='denoise')"),
    (MISSING_PAIRS + ["model.args.learned_variance=true"], "learned_variance needs a variational-bound loss"),
    (MISSING_PAIRS + ["model.args.num_class_labels=3", "model.args.null_class_label=false"],
     "condition dropout needs the null label: set model.args.null_class_label=true"),
    (MISSING_PAIRS + ["optim.lr_schedule=cosin"], "optim.lr_schedule must be one of linear, cosine"),
    (MISSING_PAIRS + ["model.args.padding=valid"], "the diffusion task needs model.args.padding='same'"),
    (MISSING_PAIRS + ["model.args.dims=1"], "a 1D denoiser trains on arrays (data.source: arrays)"),
    (["data.source=arrays", "data.data_files=/nonexistent/signals.npz"], "data.source 'arrays' holds signals or volumes"),
    # segmentation: a segmenter of the data's dimensions, per-class settings for its classes
    (SEGMENTER + ["model.preset=tiny"], "the segmentation task needs a segmentation model (head='segment')"),
    (SEGMENTER + ["model.args.time_embedding=sinusoidal"], "it is conditioned through time_embedding"),
    (SEGMENTER + ["segmentation.class_weights=[1, 2, 3]"], "segmentation.class_weights has 3 entries for 2 classes"),
    (SEGMENTER + ["segmentation.weight_map=true", "segmentation.object_class=2"], "segmentation.object_class=2 is not a class (0..1)"),
    (SEGMENTER + ["segmentation.class_names=[cells]"], "segmentation.class_names has 1 names for 2 classes"),
    (SEGMENTER + ["model.args.dims=3"], "a 3D model trains on volumes: set data.source to 'volumes'"),
    (SEGMENTER + ["data.source=volumes"], "data.source 'volumes' trains a 3D model (model.args.dims: 3)"),
    # data sources
    (["data.source=datasets"], "data.source is 'datasets' but data.path is empty"),
    (SEGMENTER + ["data.source=datasets", "data.path=parquet", "data.data_files=/nonexistent/train.parquet"],
     "a segmentation run on a datasets source needs data.mask_column"),
    (["data.source=pairs", "data.image_dir=/nonexistent/images"], "data.source is 'pairs': set data.image_dir and data.mask_dir"),
    (["model.args.dims=1", "data.source=arrays"], "data.source is 'arrays': set data.data_files to one .npy or .npz file"),
    (VOLUMES_3D + ["data.split_depth_at=[0, 8]"], "data.split_depth_at [0, 8] must name slice indices of at least 1"),
    (VOLUMES_3D + ["data.augment.rotation=10"], "data.augment.rotation turns 2D images; volumes take flips"),
    # what the best evaluation is kept by
    (MISSING_PAIRS + ["train.best_metric=val_loss"], "train.best_metric=val_loss needs validation data to evaluate on"),
    (MISSING_PAIRS + ["train.best_metric=fid", "data.val_size=0.1"], "train.best_metric=fid is not reported by this run's evaluation"),
    (SEGMENTER + ["train.best_metric=dice_cells", "data.val_size=0.1"], "choose one of dice, iou, pixel_error, dice_class0"),
])
def test_a_conflict_between_fields_is_refused_as_the_config_is_read(overrides, message, monkeypatch):
    import train.data

    def untouched(*args, **kwargs):
        raise AssertionError("the config was checked by reading data or building a network")

    monkeypatch.setattr(train.data, "open_source", untouched)
    monkeypatch.setattr(torch.nn.Module, "__init__", untouched)
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value)
    with pytest.raises(ConfigError) as err:  # the same rule when the config is built from a dict
        config_from_dict(apply_overrides({}, overrides))
    assert message in str(err.value)


def test_a_conflict_set_after_reading_is_refused_before_training(tmp_path):
    from train.loop import train

    config = load_config(None, [f"train.output_dir={tmp_path / 'run'}", *MISSING_PAIRS])
    config.diffusion.zero_terminal_snr = True
    with pytest.raises(ConfigError, match="diffusion.zero_terminal_snr needs diffusion.prediction"):
        train(config)
    assert not (tmp_path / "run").exists()


def test_a_best_metric_of_named_classes_is_accepted():
    config = load_config(None, SEGMENTER + ["segmentation.class_names=[background, cells]", "train.best_metric=dice_cells",
                                            "data.val_size=0.1"])
    assert config.train.best_metric == "dice_cells"


def test_the_train_command_reports_a_conflict_before_reading_data(tmp_path, capsys):
    from unet_diffusion.cli import main

    run = tmp_path / "run"
    code = main(["train", "--config", "quickstart", *MISSING_PAIRS, "diffusion.cache_latents=true", f"train.output_dir={run}"])
    assert code == 1
    err = capsys.readouterr().err
    assert "diffusion.cache_latents caches a VAE's latents" in err and "is not a folder" not in err
    assert not run.exists()
