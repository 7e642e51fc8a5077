"""Each convention is written once: the rule's home is named below, and every other module asks it.

Text and syntax-tree searches of the project's packages; each test names the home a stray copy should call instead.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("unet_diffusion", "pipelines", "train", "bench")


def sources(*packages: str) -> dict[str, str]:
    """``"package/module.py"`` -> source text of every module of ``packages``."""
    return {str(path.relative_to(ROOT)): path.read_text() for package in packages for path in sorted((ROOT / package).rglob("*.py"))}


def matches(pattern: str, *packages: str, home: tuple[str, ...] = ()) -> list[str]:
    """``"file:line: text"`` of each line of ``packages`` outside ``home`` that the regular expression matches."""
    found = []
    for name, text in sources(*packages).items():
        if name in home:
            continue
        found += [f"{name}:{n}: {line.strip()}" for n, line in enumerate(text.splitlines(), 1) if re.search(pattern, line)]
    return found


def functions_named(name: str, *packages: str) -> list[str]:
    return [f"{file}:{node.lineno}" for file, text in sources(*packages).items() for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name]


def string_constants(value: str, *packages: str) -> list[str]:
    return [f"{file}:{node.lineno}" for file, text in sources(*packages).items() for node in ast.walk(ast.parse(text))
            if isinstance(node, ast.Constant) and node.value == value]


def files(places: list[str]) -> list[str]:
    """The files of ``"file:line..."`` places, each once per place."""
    return [place.split(":")[0] for place in places]


# ---------------------------------------------------------------------------- dims: unet_diffusion.inputs.model_dims
def test_dims_default_is_read_only_by_model_dims():
    assert matches(r"""\.get\(\s*["']dims["']""", *PACKAGES, home=("unet_diffusion/inputs.py",)) == []


def test_no_private_dims_property():
    assert matches(r"\b_dims\b", *PACKAGES) == []


# ---------------------------------------------------------------------------- null label: inputs.null_label, class_table_size
NULL_LABEL_ARITHMETIC = r"num_class_labels\s*\+|\+\s*int\(\s*\w+(\.|\[\")null_class_label"


def test_null_label_index_is_computed_only_in_inputs():
    assert matches(NULL_LABEL_ARITHMETIC, *PACKAGES, home=("unet_diffusion/inputs.py",)) == []
    assert matches(r"full_like\([^)]*num_class_labels", *PACKAGES) == []
    assert matches(r"tensor\(\s*\w+\.num_class_labels|==\s*\w+\.num_class_labels", *PACKAGES) == []


# ---------------------------------------------------------------------------- config checks: unet.check_config, weights.check_fields
def test_one_function_named_check_config():
    assert files(functions_named("check_config", *PACKAGES)) == ["unet_diffusion/unet.py"]


def test_one_did_you_mean():
    assert files(matches(r"get_close_matches", *PACKAGES)) == ["unet_diffusion/annotations.py"]  # annotations.closest


def test_loaders_build_stored_configs_through_one_function():
    """A UNet rebuilt from a stored config goes through weights.build_from_config, which names the source once."""
    assert matches(r"UNet\(\*\*config\)|cls\(\*\*\{k: v ", "unet_diffusion", "pipelines") == []


# ---------------------------------------------------------------------------- sources: unet_diffusion.hub
def test_source_options_are_listed_once():
    assert files(string_constants("local_files_only", *PACKAGES)) == ["unet_diffusion/hub.py"]  # hub.SOURCE_OPTIONS


def test_what_a_source_is_is_decided_in_hub():
    folder_probe = r"""/\s*["'](model_index|config)\.json["']\)\.is_file\(\)"""
    assert matches(folder_probe, "unet_diffusion", "pipelines", home=("unet_diffusion/hub.py",)) == []
    assert matches(r"""suffix\s*==\s*["']\.safetensors["']""", "unet_diffusion", "pipelines", home=("unet_diffusion/hub.py",)) == []


def test_pickled_weights_are_refused_in_one_place():
    assert len(matches(r"use_safetensors=False is not supported", *PACKAGES)) == 1


# ---------------------------------------------------------------------------- schedules: pipelines.samplers.default_scheduler
def test_default_schedule_is_written_once():
    assert matches(r"DDPMScheduler\(\)\.config|beta_end=0\.02", "pipelines", "unet_diffusion", home=("pipelines/samplers.py",)) == []


# ---------------------------------------------------------------------------- size: unet_diffusion.inputs.check_keeps_size
def test_keeps_size_rule_in_pipelines_is_check_keeps_size():
    assert matches(r"a denoiser must keep", "unet_diffusion", "pipelines", home=("unet_diffusion/inputs.py",)) == []


def test_keeps_size_rule_in_training_is_check_keeps_size():
    assert matches(r"a denoiser must keep", "train") == []
    diffusion = (ROOT / "train" / "diffusion.py").read_text()  # (segmentation's valid-padding sizes are another rule)
    assert not re.search(r"output_size\(", diffusion)


# ---------------------------------------------------------------------------- the homes' answers
def test_source_kind_names_each_kind_of_source(tmp_path):
    import torch
    from diffusers import DDPMScheduler, UNet2DModel

    from pipelines import DenoisePipeline
    from unet_diffusion import UNet, save_weights
    from unet_diffusion.hub import source_kind

    unet = UNet.from_preset("tiny", sample_size=8)
    unet.save_pretrained(tmp_path / "ours")
    DenoisePipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=10)).save_pretrained(tmp_path / "pipe")
    UNet2DModel(sample_size=8, block_out_channels=(8, 16), norm_num_groups=4, layers_per_block=1,
                down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D")).save_pretrained(tmp_path / "theirs")
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    save_weights(unet, tmp_path / "w.safetensors")
    torch.save({}, tmp_path / "w.pt")
    (tmp_path / "images").mkdir()
    kinds = {name: source_kind(tmp_path / name) for name in ("ours", "pipe", "theirs", "vae", "w.safetensors", "w.pt", "images", "none")}
    assert kinds == {"ours": "unet", "pipe": "pipeline", "theirs": "diffusers-unet", "vae": "other-model",
                     "w.safetensors": "weights", "w.pt": "pickle", "images": "other", "none": "missing"}


def test_null_label_and_table_size_follow_the_config():
    from unet_diffusion.inputs import class_table_size, model_dims, null_label

    assert (null_label({"num_class_labels": 10, "null_class_label": True}), class_table_size({"num_class_labels": 10, "null_class_label": True})) == (10, 11)
    assert (null_label({"num_class_labels": 10, "null_class_label": False}), class_table_size({"num_class_labels": 10, "null_class_label": False})) == (None, 10)
    assert (null_label({"num_class_labels": None, "null_class_label": True}), class_table_size({"num_class_labels": None})) == (None, None)
    assert model_dims({"sample_size": 32}) == 2 and model_dims({"dims": 3}) == 3  # a diffusers config has no dims


def test_a_stored_config_is_refused_naming_its_source_once(tmp_path):
    import json

    from unet_diffusion import UNet, load_weights, save_weights
    from unet_diffusion.errors import InputError
    from unet_diffusion.weights import (CONFIG_METADATA_KEY, atomic_save_file, build_from_config, read_safetensors,
                                        read_weights_metadata)

    save_weights(UNet.from_preset("tiny", sample_size=8), tmp_path / "w.safetensors")
    metadata = read_weights_metadata(tmp_path / "w.safetensors")
    config = {**json.loads(metadata[CONFIG_METADATA_KEY]), "norm_groups": 2.5}
    atomic_save_file(read_safetensors(tmp_path / "w.safetensors"), tmp_path / "bad.safetensors",
                     {**metadata, CONFIG_METADATA_KEY: json.dumps(config)})
    with pytest.raises(InputError, match=r"^the config stored in \S+bad.safetensors: norm_groups must be int; got 2.5"):
        load_weights(tmp_path / "bad.safetensors")
    with pytest.raises(InputError, match=r"^model.args has unknown UNet fields: 'chanels' \(did you mean 'channels'\?\)"):
        build_from_config(UNet, {"chanels": (8, 16)}, "model.args")


def test_check_keeps_size_names_the_fix():
    from unet_diffusion import UNet
    from unet_diffusion.errors import InputError
    from unet_diffusion.inputs import check_keeps_size

    check_keeps_size(UNet.from_preset("tiny", sample_size=8), (8, 8))
    valid = UNet(channels=(8, 16), norm_groups=4, padding="valid", time_embedding=None, block="classic", attention_levels=())
    with pytest.raises(InputError, match="a denoiser must keep the size \\(use padding='same'\\)"):
        check_keeps_size(valid, valid.valid_input_sizes(64)[0])


def test_a_pipeline_folder_given_for_a_unet_says_where_the_unet_is(tmp_path):
    from diffusers import DDPMScheduler

    from pipelines import DenoisePipeline
    from unet_diffusion import UNet

    unet = UNet.from_preset("tiny", sample_size=8)
    DenoisePipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=10)).save_pretrained(tmp_path / "pipe")
    with pytest.raises(FileNotFoundError, match="is a pipeline folder; its U-Net loads with subfolder='unet'"):
        UNet.from_pretrained(tmp_path / "pipe")
    assert tuple(UNet.from_pretrained(tmp_path / "pipe", subfolder="unet").config.channels) == tuple(unet.config.channels)
