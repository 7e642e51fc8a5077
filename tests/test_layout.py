"""The code's layout: imports run one way and never in a circle, functions stay short.

Every import statement counts, at module level or inside a function: a deferred import still
makes one module depend on the other.
"""

import ast
import sys
import traceback
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("unet_diffusion", "pipelines", "train")
RANK = {"unet_diffusion": 0, "pipelines": 1, "train": 2}  # a package imports only packages of lower or equal rank


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The project modules that ``path`` imports (``from .x import y`` resolved; ``from pkg import mod`` counts ``pkg.mod``)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {module for module in found if module in known}


def import_graph() -> dict[str, set[str]]:
    files = [path for package in PACKAGES for path in (ROOT / package).rglob("*.py")]
    known = {module_name(path) for path in files}
    return {module_name(path): imported_modules(path, known) - {module_name(path)} for path in files}


def test_imports_run_one_way_between_packages():
    backwards = [
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        for target in targets
        if RANK[target.split(".")[0]] > RANK[module.split(".")[0]]
    ]
    assert not backwards


def test_no_import_cycle():
    graph = import_graph()
    # A package's __init__ only names its modules lazily (lazy.py); it is not a dependency of them.
    graph = {m: {t for t in targets if t not in PACKAGES} for m, targets in graph.items()}
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycle = path[path.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def functions(package: str):
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(ROOT), node


def lines(node, docstring: bool = True) -> int:
    """Lines of a function, with or without its docstring."""
    count = node.end_lineno - node.lineno + 1
    first = node.body[0]
    if not docstring and isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        count -= first.end_lineno - first.lineno + 1
    return count


# (package, most lines with the docstring): 60 lines of code everywhere; the network's functions read in one screen
# docstring included, a pipeline's __call__ may document each of its arguments beyond that.
@pytest.mark.parametrize("package, with_docstring", [("unet_diffusion", 60), ("pipelines", 80), ("train", 80), ("bench", 80)])
def test_functions_stay_short(package, with_docstring):
    long = [f"{path}:{node.lineno} {node.name} ({lines(node)} lines, {lines(node, docstring=False)} without the docstring)"
            for path, node in functions(package) if lines(node, docstring=False) > 60 or lines(node) > with_docstring]
    assert not long


def test_unet_constructor_reads_in_one_screen():
    """The signature has one line per configuration field (with its meaning); the body: plan, embeddings, the U, head."""
    init = next(node for path, node in functions("unet_diffusion") if path.name == "unet.py" and node.name == "__init__")
    assert init.end_lineno - init.lineno + 1 <= 60


# ---------------------------------------------------------------------------- the network, readable in one sitting
# The files a reader opens to see the whole network, in reading order (docs/model.md, "How to read the network").
NETWORK = ("unet_diffusion/unet.py", "unet_diffusion/blocks.py", "unet_diffusion/attention.py", "unet_diffusion/nd.py")
# What forward calls that is not the network: the checks of what it accepts.
NOT_THE_NETWORK = ("unet_diffusion/inputs.py",)


def every_kind_of_unet():
    """Small U-Nets that between them build every block, layer and option of the network."""
    from conftest import tiny_config

    from unet_diffusion import UNet

    residual = UNet(**tiny_config(num_class_labels=3, cross_attention_levels=(1,), context_dim=8, attention_gates=True,
                                  skip_conv=True, time_embedding="fourier", time_injection="scale_shift",
                                  downsample="conv_asym", upsample="bilinear"))
    classic = UNet(**tiny_config(block="classic", conv_in=False, time_embedding=None, head="segment", skips="level",
                                 mid_block=False, padding="valid", batch_norm=True, downsample="maxpool",
                                 upsample="conv_transpose", attention_levels=(), sample_size=44))
    return residual, classic


def test_the_network_lives_in_at_most_four_files():
    """Every module class a U-Net is built from, and every package function its forward and backward run
    (traced), is defined in one of the NETWORK files."""
    import torch

    residual, classic = every_kind_of_unet()
    files = {sys.modules[type(m).__module__].__file__ for model in (residual, classic) for m in model.modules()}
    seen: set[str] = set()

    def trace(frame, event, arg):
        if event == "call":
            seen.add(frame.f_code.co_filename)

    sys.setprofile(trace)
    try:
        out = residual(torch.randn(2, 3, 16, 16), 5, class_labels=torch.tensor([0, 1]),
                       encoder_hidden_states=torch.randn(2, 4, 8)).sample
        out.square().mean().backward()
        classic(torch.randn(1, 3, 44, 44)).sample.sum().backward()
        residual.output_size(16), classic.valid_input_sizes(44)
    finally:
        sys.setprofile(None)
    files |= seen
    package = ROOT / "unet_diffusion"
    used = {str(Path(f).resolve().relative_to(ROOT)) for f in files if Path(f).resolve().is_relative_to(package)}
    assert used - set(NOT_THE_NETWORK) <= set(NETWORK), sorted(used - set(NOT_THE_NETWORK) - set(NETWORK))
    assert len(NETWORK) <= 4 and all((ROOT / name).is_file() for name in NETWORK)


def test_network_code_sets_attributes_only_on_itself():
    """No attribute is patched onto another object (as ``block.push_skip = ...`` once was): structure is a constructor
    argument or recorded by its owner. Allowed: ``self``, autograd's ``ctx``, and the runtime switch
    ``set_fused_norm_conv`` (like ``nn.Module.train``, it flips a flag on every layer it concerns)."""
    patched = []
    for name in NETWORK:
        for function in ast.walk(ast.parse((ROOT / name).read_text())):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)) or function.name == "set_fused_norm_conv":
                continue
            for node in ast.walk(function):
                targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
                for target in targets:
                    for attribute in ast.walk(target) if target is not None else ():
                        if isinstance(attribute, ast.Attribute) and not (
                                isinstance(attribute.value, ast.Name) and attribute.value.id in ("self", "ctx")):
                            patched.append(f"{name}:{attribute.lineno} {ast.unparse(attribute)}")
    assert not patched


def test_the_timestep_reaches_a_residual_block_through_two_network_frames(tmp_path, monkeypatch):
    """One training step, with the stack captured where the embedding enters a residual block: between the training
    code and ResidualBlock.forward the network adds only UNet.forward and UNetBlock.forward."""
    import torch
    from trainkit import TINY_DIFFUSION, merged

    from train import train
    from train.config import config_from_dict
    from unet_diffusion.blocks import ResidualBlock

    stacks = []
    forward = ResidualBlock.forward

    def spy(self, x, emb):
        if torch.is_grad_enabled() and not stacks:
            stacks.append(traceback.extract_stack()[:-1])
        return forward(self, x, emb)

    monkeypatch.setattr(ResidualBlock, "forward", spy)
    values = merged(TINY_DIFFUSION, train={"steps": 1, "checkpoint_every": 0, "output_dir": str(tmp_path / "run")})
    train(config_from_dict(values))
    frames = [(Path(f.filename).resolve().relative_to(ROOT), f.name) for f in stacks[0]
              if any(Path(f.filename).resolve().is_relative_to(ROOT / p) for p in PACKAGES)]
    network = frames[[str(path) for path, _ in frames].index("unet_diffusion/unet.py"):]
    print(f"timestep path: {len(frames)} project frames in {len({p for p, _ in frames})} files: {frames}")
    assert network == [(Path("unet_diffusion/unet.py"), "forward"), (Path("unet_diffusion/blocks.py"), "forward")]
