"""Conversion between diffusers' U-Nets (``UNet2DModel``, ``UNet2DConditionModel``) and our ``UNet``.

A conversion is two exact translations: the configuration (diffusers fields <-> our fields) and
the tensors (our names <-> diffusers names; diffusers' separate q/k/v projections become our fused
ones and back, 1x1-conv transformer projections become our Linear ones). Whatever one side has and
the other cannot express is refused by name; nothing is dropped and nothing is left randomly
initialised.

Example:
    >>> from unet_diffusion import UNet
    >>> from unet_diffusion.convert import to_diffusers
    >>> unet = UNet.from_pretrained("ddpm-cifar10-32")       # a downloaded diffusers folder
    >>> to_diffusers(unet).save_pretrained("back-to-diffusers")  # and back, same outputs
"""

from __future__ import annotations

import inspect
import re

import torch

from .blocks import attention_heads, embedding_width, head_channels
from .blocks import per_level
from .errors import InputError
from .hub import DIFFUSERS_CLASSES
from .inputs import class_table_size, model_dims
from .weights import raise_if_mismatched, raise_if_other_kind, state_dict_differences


class UnsupportedConversionError(InputError):
    """The model uses something the other side cannot express; the message names every such thing."""


# ---------------------------------------------------------------------------- diffusers config -> ours
def diffusers_class(name: str):
    import diffusers

    return getattr(diffusers, name)


def _with_defaults(config: dict) -> tuple[str, dict]:
    """The class name and every constructor field of a diffusers config, defaults filled in.

    Older configs (e.g. ``ddpm-cifar10-32``'s) predate fields that diffusers added later; their
    defaults are what those checkpoints were built with. Unknown fields are an error.
    """
    name = config.get("_class_name")
    if name not in DIFFUSERS_CLASSES:
        raise UnsupportedConversionError(
            f"expected a diffusers config with _class_name in {DIFFUSERS_CLASSES}; got _class_name={name!r}."
        )
    params = inspect.signature(diffusers_class(name).__init__).parameters
    fields = {k: p.default for k, p in params.items() if k != "self"}
    unknown = sorted(k for k in config if not k.startswith("_") and k not in fields)
    if unknown:
        raise UnsupportedConversionError(
            f"the {name} config has fields this diffusers version does not know: {unknown}. "
            "Convert it with the diffusers version that wrote it, or remove the fields if they are no-ops."
        )
    return name, {**fields, **{k: v for k, v in config.items() if not k.startswith("_")}}


def _collapse(values: list):
    """One value if every level has the same, else a tuple (keeps converted configs short)."""
    return values[0] if len(set(values)) == 1 else tuple(values)


_DOWN_KINDS = {"DownBlock2D": "plain", "AttnDownBlock2D": "attn", "CrossAttnDownBlock2D": "cross"}
_UP_KINDS = {"UpBlock2D": "plain", "AttnUpBlock2D": "attn", "CrossAttnUpBlock2D": "cross"}

# Fields that must keep these values: any other value changes the function in a way our UNet does not.
_REQUIRED = {
    "UNet2DModel": {
        "act_fn": ("silu", "swish"),
        "downsample_padding": (0, 1),
        "downsample_type": ("conv",),
        "upsample_type": ("conv",),
        "time_embedding_type": ("positional", "fourier"),
        "resnet_time_scale_shift": ("default", "scale_shift"),
        "class_embed_type": (None,),
        "mid_block_type": ("UNetMidBlock2D", None),
    },
    "UNet2DConditionModel": {
        "act_fn": ("silu", "swish"),
        "downsample_padding": (0, 1),
        "time_embedding_type": ("positional", "fourier"),
        "resnet_time_scale_shift": ("default", "scale_shift"),
        "class_embed_type": (None,),
        "mid_block_type": ("UNetMidBlock2DCrossAttn", None),
        "dual_cross_attention": (False,),
        "encoder_hid_dim": (None,),
        "encoder_hid_dim_type": (None,),
        "addition_embed_type": (None,),
        "num_attention_heads": (None,),
        "reverse_transformer_layers_per_block": (None,),
        "resnet_skip_time_act": (False,),
        "resnet_out_scale_factor": (1, 1.0),
        "time_embedding_act_fn": (None,),
        "timestep_post_act": (None,),
        "time_cond_proj_dim": (None,),
        "conv_in_kernel": (3,),
        "conv_out_kernel": (3,),
        "projection_class_embeddings_input_dim": (None,),
        "attention_type": ("default",),
        "class_embeddings_concat": (False,),
        "mid_block_only_cross_attention": (None, False),
        "cross_attention_norm": (None,),
    },
}
# Fields with no effect on the supported layout, read by nothing here: num_train_timesteps (only for
# "learned" time embeddings), addition_time_embed_dim and addition_embed_type_num_heads (only with
# an addition_embed_type), upcast_attention (diffusers' default SDPA processor does not read it and
# float32 needs no upcast), use_linear_projection (only the shape of two weights, handled when the
# tensors are converted).


def _level_kinds(name: str, c: dict) -> list[str]:
    """The attention kind of each level ("plain", "attn", "cross"), after checking every field we cannot reproduce."""
    conditional = name == "UNet2DConditionModel"
    problems = [
        f"{field}={c[field]!r} (supported: {', '.join(map(repr, allowed))})"
        for field, allowed in _REQUIRED[name].items()
        if c[field] not in allowed
    ]
    if c["norm_num_groups"] is None:
        problems.append("norm_num_groups=None (residual blocks need GroupNorm)")
    levels = len(c["block_out_channels"])
    if conditional and any(per_level("only_cross_attention", c["only_cross_attention"], levels)):
        problems.append(f"only_cross_attention={c['only_cross_attention']!r} (supported: False)")
    down, up = list(c["down_block_types"]), list(c["up_block_types"])
    if len(down) != levels or len(up) != levels:
        raise UnsupportedConversionError(f"{name} has {levels} block_out_channels but {len(down)} down and {len(up)} up block types.")
    kinds = []
    for level in range(levels):
        d, u = down[level], up[levels - 1 - level]
        if d not in _DOWN_KINDS or (d == "CrossAttnDownBlock2D" and not conditional):
            problems.append(f"down block type {d!r} at level {level}")
        if u not in _UP_KINDS or (u == "CrossAttnUpBlock2D" and not conditional):
            problems.append(f"up block type {u!r} at level {level}")
        kind = _DOWN_KINDS.get(d)
        if kind is not None and u in _UP_KINDS and _UP_KINDS[u] != kind:
            problems.append(f"level {level} pairs {d} with {u} (our UNet gives both halves of a level the same attention)")
        kinds.append(kind)
    if problems:
        raise UnsupportedConversionError(f"this {name} cannot be converted; unsupported: " + "; ".join(problems) + ".")
    return kinds


def config_from_diffusers(config: dict) -> dict:
    """Our ``UNet`` configuration for a diffusers ``UNet2DModel`` / ``UNet2DConditionModel`` config.

    ``config`` is the content of its ``config.json`` (``_class_name`` included). Raises
    ``UnsupportedConversionError`` naming every block type or option that our UNet cannot reproduce.
    """
    name, c = _with_defaults(config)
    conditional = name == "UNet2DConditionModel"
    kinds = _level_kinds(name, c)
    channels = list(c["block_out_channels"])
    levels = len(channels)
    ours = dict(
        sample_size=c["sample_size"],
        in_channels=c["in_channels"],
        out_channels=c["out_channels"],
        channels=tuple(channels),
        blocks_per_level=_collapse(per_level("layers_per_block", c["layers_per_block"], levels)),
        dropout=c["dropout"],
        norm_groups=c["norm_num_groups"],
        norm_eps=c["norm_eps"],
        downsample="conv_asym" if c["downsample_padding"] == 0 else "conv",
        upsample="nearest",
        time_embed_dim=c["time_embedding_dim"],
        flip_sin_to_cos=c["flip_sin_to_cos"],
        freq_shift=c["freq_shift"],
        time_injection="add" if c["resnet_time_scale_shift"] == "default" else "scale_shift",
        num_class_labels=c["num_class_embeds"],
        null_class_label=False,  # diffusers' embedding table has exactly num_class_embeds rows
        attention_levels=tuple(l for l in range(levels) if kinds[l] == "attn"),
        cross_attention_levels=tuple(l for l in range(levels) if kinds[l] == "cross"),
        mid_block=c["mid_block_type"] is not None,
        mid_block_scale=c["mid_block_scale_factor"],
        center_input=c["center_input_sample"],
    )
    if c["time_embedding_type"] == "fourier":
        ours.update(time_embedding="fourier")
        if conditional:
            # Fourier features of t itself, as wide as the embedding (2 * block_out_channels[0] by default).
            if (c["time_embedding_dim"] or 2 * channels[0]) != 2 * channels[0]:
                raise UnsupportedConversionError(
                    f"a Fourier UNet2DConditionModel with time_embedding_dim={c['time_embedding_dim']} cannot be converted; "
                    f"our Fourier features are 2 * block_out_channels[0] = {2 * channels[0]} wide."
                )
            ours.update(time_embed_dim=2 * channels[0], fourier_log=False, fourier_scale=1.0)
        else:
            # UNet2DModel's Fourier variant is the score-SDE one: features of log(sigma), never
            # flipped whatever flip_sin_to_cos says, and an output divided by sigma.
            ours.update(flip_sin_to_cos=False, fourier_log=True, divide_by_timestep=True)

    if conditional:
        ours.update(_conditional_attention(c, channels, kinds))
    else:
        ours.update(_unconditional_attention(c))
    return ours


def _unconditional_attention(c: dict) -> dict:
    """Attention fields of a UNet2DModel: one head width everywhere (None: one head per block)."""
    fields = dict(mid_attention=bool(c["mid_block_type"]) and c["add_attention"])
    head_dim = c["attention_head_dim"]
    if head_dim is None:
        fields["attention_heads"] = 1
    else:
        widths = [w for w, kind in zip(c["block_out_channels"], c["down_block_types"]) if "Attn" in kind]
        widths += [c["block_out_channels"][-1]] if fields["mid_attention"] else []
        for width in widths:
            if width % head_dim:
                raise UnsupportedConversionError(
                    f"attention_head_dim={head_dim} does not divide the attention width {width}: diffusers would "
                    f"drop channels there, our attention needs heads that split the width exactly."
                )
        fields["attention_head_channels"] = head_dim
    if fields["mid_attention"]:
        # diffusers' middle attention is normalised with attn_norm_num_groups, which defaults to
        # the ResNet groups with "default" time injection and to no normalisation with "scale_shift".
        groups = c["attn_norm_num_groups"]
        if groups is None:
            fields["mid_attention_norm"] = c["resnet_time_scale_shift"] == "default"
        elif groups != c["norm_num_groups"]:
            raise UnsupportedConversionError(
                f"attn_norm_num_groups={groups} differs from norm_num_groups={c['norm_num_groups']}; "
                "our middle attention uses the same GroupNorm groups as the rest of the network."
            )
    return fields


def _conditional_attention(c: dict, channels: list, kinds: list) -> dict:
    """Attention fields of a UNet2DConditionModel.

    There ``attention_head_dim`` is a head *count* for cross-attention blocks (diffusers' historic
    naming) but a head *width* for self-attention blocks; ours is a count per level, and the
    middle block takes the last level's.
    """
    levels = len(channels)
    head_dims_per_level = per_level("attention_head_dim", c["attention_head_dim"], levels)
    contexts = per_level("cross_attention_dim", c["cross_attention_dim"], levels)
    depth = per_level("transformer_layers_per_block", c["transformer_layers_per_block"], levels)
    if any(isinstance(d, (list, tuple)) for d in depth):
        raise UnsupportedConversionError(
            f"transformer_layers_per_block={c['transformer_layers_per_block']!r} gives blocks of one level different "
            "depths; our UNet has one transformer depth per level."
        )
    mid_cross = c["mid_block_type"] == "UNetMidBlock2DCrossAttn"
    uses_cross = mid_cross or "cross" in kinds
    context = {contexts[l] for l in range(levels) if kinds[l] == "cross"} | ({contexts[-1]} if mid_cross else set())
    if len(context) > 1:
        raise UnsupportedConversionError(
            f"cross_attention_dim={c['cross_attention_dim']!r} differs between levels; our UNet has one context_dim."
        )

    heads = []
    for level, (width, value) in enumerate(zip(channels, head_dims_per_level)):
        if kinds[level] == "attn":
            head_width = value or width
            # diffusers sizes up block i's self-attention with attention_head_dim[i], not reversed.
            up_width = head_dims_per_level[levels - 1 - level] or width
            if up_width != head_width:
                raise UnsupportedConversionError(
                    f"attention_head_dim={c['attention_head_dim']!r} gives level {level}'s self-attention heads of width "
                    f"{head_width} in the down block but {up_width} in the up block (diffusers reads the list unreversed "
                    "for up blocks); our UNet has one head count per level."
                )
            if width % head_width:
                raise UnsupportedConversionError(f"attention_head_dim={head_width} does not divide width {width} at level {level}.")
            heads.append(width // head_width)
        else:
            heads.append(value or 1)
        if kinds[level] == "cross" and width % heads[-1]:
            raise UnsupportedConversionError(f"{heads[-1]} attention heads do not divide width {width} at level {level}.")
    if mid_cross:
        if kinds[-1] != "cross" and heads[-1] != head_dims_per_level[-1]:
            if kinds[-1] == "attn":
                raise UnsupportedConversionError(
                    f"the middle block has {head_dims_per_level[-1]} heads but the last level's self-attention has {heads[-1]}; "
                    "our middle block takes the last level's head count."
                )
            heads[-1] = head_dims_per_level[-1]
        if channels[-1] % heads[-1]:
            raise UnsupportedConversionError(f"{heads[-1]} attention heads do not divide width {channels[-1]} in the middle block.")
    return dict(
        attention_heads=_collapse(heads),
        mid_attention=False,
        mid_cross_attention=mid_cross,
        context_dim=context.pop() if uses_cross else None,
        transformer_depth=_collapse(depth),
    )


# ---------------------------------------------------------------------------- our config -> diffusers
def diffusers_config(config: dict) -> tuple[str, dict]:
    """The diffusers class name and constructor fields that express our ``UNet`` configuration.

    ``UNet2DModel`` without cross-attention, ``UNet2DConditionModel`` with it. Raises
    ``UnsupportedConversionError`` naming everything diffusers cannot express.
    """
    c = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    channels = list(c["channels"])
    levels = len(channels)
    attn, cross = set(c["attention_levels"]), set(c["cross_attention_levels"])
    mid_attn = c["mid_block"] and c["mid_attention"]
    conditional = bool(cross) or (c["mid_block"] and c["mid_cross_attention"])
    sites = [(channels[l], attention_heads(c, channels[l], l)) for l in sorted(attn)]
    if mid_attn:
        sites.append((channels[-1], attention_heads(c, channels[-1], levels - 1)))
    head_dims = {w // h for w, h in sites}
    problems = _inexpressible(c, conditional)
    if not conditional and len(head_dims) > 1 and any(h != 1 for _, h in sites):
        problems.append(f"self-attention heads of different widths {sorted(head_dims)} (UNet2DModel has one attention_head_dim)")
    if problems:
        raise UnsupportedConversionError("this UNet cannot be written as a diffusers model: " + "; ".join(problems) + ".")

    down = ["CrossAttnDownBlock2D" if l in cross else "AttnDownBlock2D" if l in attn else "DownBlock2D" for l in range(levels)]
    fields = dict(
        sample_size=c["sample_size"],
        in_channels=c["in_channels"],
        out_channels=head_channels(c),
        center_input_sample=c["center_input"],
        time_embedding_type="fourier" if c["time_embedding"] == "fourier" else "positional",
        time_embedding_dim=c["time_embed_dim"],
        freq_shift=c["freq_shift"],
        flip_sin_to_cos=c["flip_sin_to_cos"],
        down_block_types=down,
        up_block_types=[kind.replace("Down", "Up") for kind in reversed(down)],
        block_out_channels=channels,
        mid_block_scale_factor=c["mid_block_scale"],
        downsample_padding=0 if c["downsample"] == "conv_asym" else 1,
        dropout=c["dropout"],
        act_fn="silu",
        norm_num_groups=c["norm_groups"],
        norm_eps=c["norm_eps"],
        resnet_time_scale_shift="default" if c["time_injection"] == "add" else "scale_shift",
        num_class_embeds=class_table_size(c),
    )
    if not conditional:
        fields.update(
            layers_per_block=per_level("blocks_per_level", c["blocks_per_level"], levels)[0],
            mid_block_type="UNetMidBlock2D" if c["mid_block"] else None,
            add_attention=bool(mid_attn),
            attention_head_dim=None if all(h == 1 for _, h in sites) else head_dims.pop(),  # None: one head per block
            attn_norm_num_groups=c["norm_groups"] if mid_attn and c["mid_attention_norm"] else None,
        )
        return "UNet2DModel", fields
    fields.update(_condition_fields(c, attn))
    return "UNet2DConditionModel", fields


def _inexpressible(c: dict, conditional: bool) -> list[str]:
    """What in our configuration ``c`` no diffusers U-Net expresses (beyond attention head widths)."""
    problems = []
    for field, allowed in (
        ("block", ("residual",)), ("skips", ("dense",)), ("conv_in", (True,)), ("padding", ("same",)),
        ("downsample", ("conv", "conv_asym")), ("upsample", ("nearest",)), ("skip_conv", (False,)),
        ("attention_gates", (False,)), ("head", ("denoise",)), ("pad_input", (False,)),
    ):
        if c[field] not in allowed:
            problems.append(f"{field}={c[field]!r} (diffusers has {', '.join(map(repr, allowed))})")
    attn, cross = set(c["attention_levels"]), set(c["cross_attention_levels"])
    mid_attn, mid_cross = c["mid_block"] and c["mid_attention"], c["mid_block"] and c["mid_cross_attention"]
    fourier = c["time_embedding"] == "fourier"
    blocks = per_level("blocks_per_level", c["blocks_per_level"], len(c["channels"]))
    for broken, problem in (
        (model_dims(c) != 2, f"dims={model_dims(c)} (diffusers' UNet2DModel and UNet2DConditionModel are 2D)"),
        (c["time_embedding"] is None, "time_embedding=None (diffusers U-Nets are always time-conditioned)"),
        (attn & cross, f"levels {sorted(attn & cross)} with both self- and cross-attention"),
        (mid_attn and mid_cross, "a middle block with both self- and cross-attention"),
        (conditional and c["mid_block"] and not mid_cross,
         "a middle block without cross-attention in a cross-attention model (UNet2DConditionModel's UNetMidBlock2D has a "
         "single residual block)"),
        (not conditional and len(set(blocks)) > 1,
         f"blocks_per_level={c['blocks_per_level']!r} per level (UNet2DModel has one layers_per_block)"),
        (mid_attn and not c["mid_attention_norm"] and c["time_injection"] != "scale_shift",
         "mid_attention_norm=False with time_injection='add'"),
        (conditional and fourier and (c["fourier_log"] or c["divide_by_timestep"]),
         "Fourier features of log(t) or divide_by_timestep in a cross-attention model (UNet2DConditionModel's Fourier "
         "features are of t, its output undivided)"),
        (conditional and fourier and embedding_width(c) != 2 * c["channels"][0],
         "a Fourier cross-attention model needs time_embed_dim = 2 * channels[0]"),
        (not conditional and fourier and (c["flip_sin_to_cos"] or not c["fourier_log"] or not c["divide_by_timestep"]),
         "UNet2DModel's Fourier variant needs flip_sin_to_cos=False, fourier_log=True, divide_by_timestep=True"),
        (c["divide_by_timestep"] and not (fourier and not conditional),
         "divide_by_timestep without Fourier features (diffusers divides only Fourier UNet2DModels)"),
    ):
        if broken:
            problems.append(problem)
    return problems


def _condition_fields(c: dict, attn: set[int]) -> dict:
    """The UNet2DConditionModel-only fields. Its ``attention_head_dim`` is a head count for cross-attention
    levels and the middle, a head width for self-attention levels."""
    channels, levels = list(c["channels"]), len(c["channels"])
    mid_cross = c["mid_block"] and c["mid_cross_attention"]
    head_dims = []
    for level, width in enumerate(channels):
        heads = attention_heads(c, width, level)
        head_dims.append(width // heads if level in attn else heads)
    unreversed = [l for l in attn if head_dims[levels - 1 - l] != head_dims[l]]
    if unreversed:
        raise UnsupportedConversionError(
            f"this UNet cannot be written as a diffusers model: UNet2DConditionModel sizes the up-block self-attention of "
            f"levels {sorted(unreversed)} with another level's attention_head_dim entry, which differs here."
        )
    if mid_cross and levels - 1 in attn and head_dims[-1] != attention_heads(c, channels[-1], levels - 1):
        raise UnsupportedConversionError(
            "this UNet cannot be written as a diffusers model: its last level has self-attention and the middle "
            "cross-attention, which UNet2DConditionModel sizes with one attention_head_dim entry."
        )
    fields = dict(
        layers_per_block=_collapse(per_level("blocks_per_level", c["blocks_per_level"], levels)),
        mid_block_type="UNetMidBlock2DCrossAttn" if mid_cross else None,
        attention_head_dim=_collapse(head_dims),
        cross_attention_dim=c["context_dim"],
        transformer_layers_per_block=_collapse(per_level("transformer_depth", c["transformer_depth"], levels)),
        use_linear_projection=True,  # our projections are Linear layers: no reshaping on the way out
    )
    if c["time_embedding"] == "fourier":
        fields.update(time_embedding_dim=2 * channels[0])
    return fields


# ---------------------------------------------------------------------------- tensor names
_TOP_LEVEL = {
    "stem": "conv_in",
    "time_embed.features": "time_proj",
    "time_embed.linear_1": "time_embedding.linear_1",
    "time_embed.linear_2": "time_embedding.linear_2",
    "class_embed": "class_embedding",
    "out.norm": "conv_norm_out",
    "out.conv": "conv_out",
}
_RESNET = {"emb_proj": "time_emb_proj", "shortcut": "conv_shortcut"}  # other ResNet names are shared
_SELF_ATTENTION = {"norm": ["group_norm"], "qkv": ["to_q", "to_k", "to_v"], "proj": ["to_out.0"]}
_TRANSFORMER_LAYER = {
    "attn1.to_qkv": ["attn1.to_q", "attn1.to_k", "attn1.to_v"],
    "attn2.to_kv": ["attn2.to_k", "attn2.to_v"],
    "attn1.to_out": ["attn1.to_out.0"],
    "attn2.to_out": ["attn2.to_out.0"],
    "ff.proj_in": ["ff.net.0.proj"],
    "ff.proj_out": ["ff.net.2"],
}


def diffusers_names(name: str, levels: int) -> list[str]:
    """The diffusers tensor name(s) of one of our tensors; several names are concatenated along dim 0.

    ``levels`` is the number of levels: diffusers counts up blocks from the lowest resolution.
    """
    for ours, theirs in _TOP_LEVEL.items():
        if name.startswith(ours + "."):
            return [theirs + name[len(ours):]]
    part, block, rest = name.split(".", 2)  # e.g. "decoder", "level1_block0", "conv.norm1.weight"
    if part == "middle":
        base, index = "mid_block", int(block.removeprefix("mid_block"))
    else:
        match = re.fullmatch(r"level(\d+)_(?:block(\d+)|(down|up))", block)
        level = int(match[1])
        base = f"down_blocks.{level}" if part == "encoder" else f"up_blocks.{levels - 1 - level}"
        if match[3] == "down":
            return [f"{base}.downsamplers.0.conv.{rest.removeprefix('op.')}"]
        if match[3] == "up":
            return [f"{base}.upsamplers.0.{rest}"]
        index = int(match[2])
    module, leaf = rest.split(".", 1)
    module_leaf, param = leaf.rsplit(".", 1)
    if module == "conv":  # the ResNet block
        return [f"{base}.resnets.{index}.{_RESNET.get(module_leaf, module_leaf)}.{param}"]
    if module == "attn":
        return [f"{base}.attentions.{index}.{n}.{param}" for n in _SELF_ATTENTION[module_leaf]]
    if module == "transformer":
        layer = re.fullmatch(r"blocks\.(\d+)\.(.+)", module_leaf)
        if layer is None:  # norm, proj_in, proj_out
            return [f"{base}.attentions.{index}.{module_leaf}.{param}"]
        sub = _TRANSFORMER_LAYER.get(layer[2], [layer[2]])
        return [f"{base}.attentions.{index}.transformer_blocks.{layer[1]}.{n}.{param}" for n in sub]
    raise InputError(f"no diffusers name for {name!r}")


def name_map(model) -> dict[str, list[str]]:
    """Our tensor name -> the diffusers name(s) it is made of, for every tensor of ``model``."""
    levels = len(model.config.channels)
    return {name: diffusers_names(name, levels) for name in model.state_dict()}


# Before diffusers 0.14 the attention of AttnDownBlock2D & co. was named query/key/value/proj_attn.
_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def rename_legacy_attention(state_dict: dict) -> dict:
    """Rename old diffusers attention tensors (``query``/``key``/``value``/``proj_attn``) to today's names."""
    pattern = re.compile(r"(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)")
    renamed = {}
    for name, tensor in state_dict.items():
        match = pattern.fullmatch(name)
        new = f"{match[1]}.{_LEGACY_ATTENTION[match[2]]}.{match[3]}" if match else name
        # A checkpoint with both names keeps the old one, which the strict check then reports as unexpected.
        renamed[name if new in state_dict and new != name else new] = tensor
    return renamed


# ---------------------------------------------------------------------------- building the models
def fill_model(model: torch.nn.Module, state_dict: dict, source: str, dtype: torch.dtype | None) -> None:
    """Load ``state_dict`` into a meta-device ``model`` after checking every name and shape."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in state_dict.items()}
    raise_if_mismatched(*state_dict_differences(expected, found), source=source)
    raise_if_other_kind(model, {name: t.dtype for name, t in state_dict.items()}, source)
    # copy=True: the tensors may belong to a live model, which must not share storage with this one.
    state_dict = {name: t.to(dtype=dtype or t.dtype, copy=True) for name, t in state_dict.items()}
    model.load_state_dict(state_dict, strict=True, assign=True)
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"tensors left without values after conversion: {left}")


def state_dict_from_diffusers(model, state_dict: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """A diffusers state dict (today's attention names) under ``model``'s tensor names, q/k/v fused.

    Raises ``CheckpointMismatchError`` listing every missing, unexpected or mis-shaped diffusers tensor.
    """
    names = name_map(model)
    wanted = {n for ns in names.values() for n in ns}
    raise_if_mismatched(sorted(wanted - set(state_dict)), sorted(set(state_dict) - wanted), [], source=source)
    converted, mismatched = {}, []
    targets = model.state_dict()
    for name, parts in names.items():
        tensors = [state_dict[p] for p in parts]
        if len({t.shape for t in tensors}) > 1:  # q, k and v (or k and v) must have one shape to be fused
            mismatched += [(p, tuple(tensors[0].shape), tuple(t.shape)) for p, t in zip(parts, tensors)]
            continue
        tensor = torch.cat(tensors) if len(tensors) > 1 else tensors[0]
        if tensor.ndim == 4 and targets[name].ndim == 2 and tensor.shape[2:] == (1, 1):
            tensor = tensor.flatten(1)  # a transformer's 1x1-conv projection is our Linear (use_linear_projection=False)
        converted[name] = tensor
    raise_if_mismatched([], [], mismatched, source=source)
    return converted


def to_diffusers(model):
    """A diffusers ``UNet2DModel`` / ``UNet2DConditionModel`` computing the same function as ``model``.

    Raises ``UnsupportedConversionError`` naming what diffusers cannot express (classic blocks,
    valid padding, attention gates, ...). Save it with its own ``save_pretrained``.
    """
    class_name, fields = diffusers_config(model.config)
    with torch.device("meta"):
        target = diffusers_class(class_name)(**fields)
    converted = {}
    for name, tensor in model.state_dict().items():
        parts = diffusers_names(name, len(model.config.channels))
        for part, piece in zip(parts, tensor.chunk(len(parts)) if len(parts) > 1 else [tensor]):
            converted[part] = piece
    fill_model(target, converted, source=f"the {class_name} built from this UNet", dtype=None)
    return target.eval()
