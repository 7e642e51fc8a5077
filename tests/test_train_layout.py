"""The training loop uses Accelerate through its public API: it never writes Accelerate's counters or swaps the
scheduler inside Accelerate's wrapper, and it leaves the autocast of the prepared model's forward to Accelerate."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAIN_FILES = sorted((ROOT / "train").rglob("*.py"))


def assignments(tree: ast.AST):
    """Every attribute assigned in ``tree``: (attribute name, the source of the object, line)."""
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
        for target in targets:
            for part in target.elts if isinstance(target, ast.Tuple) else [target]:
                if isinstance(part, ast.Attribute):
                    yield part.attr, ast.unparse(part.value), node.lineno


def test_no_writes_to_accelerate_internals():
    found = [f"{path.name}:{line}: {owner}.{attr} = ..." for path in TRAIN_FILES
             for attr, owner, line in assignments(ast.parse(path.read_text()))
             if (attr == "scheduler" and "schedule" in owner) or (attr == "step" and "acc" in owner.lower())]
    assert not found, "Accelerate's internals are written: " + "; ".join(found)


def called_names(node: ast.AST) -> set[str]:
    """The dotted names of the functions called inside ``node`` (``self.model``, ``self.task.loss``, ...)."""
    return {ast.unparse(call.func) for call in ast.walk(node) if isinstance(call, ast.Call)}


def test_the_prepared_model_is_not_wrapped_in_a_second_autocast():
    # accelerator.prepare(model) runs the model's forward under train.mixed_precision's autocast already.
    found = []
    for path in TRAIN_FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.With) and any("autocast" in ast.unparse(item.context_expr) for item in node.items):
                calls = called_names(ast.Module(body=node.body, type_ignores=[]))
                found += [f"{path.name}:{node.lineno}: {name}" for name in sorted(calls)
                          if name in ("self.model", "model", "self.trainer.model") or name.endswith(("task.loss", "example_losses"))]
    assert not found, "the prepared model's call inside autocast(): " + "; ".join(found)


def test_the_checks_catch_what_they_look_for():
    source = ("acc.step = 0\nself.lr_schedule.scheduler = s\n"
              "with acc.autocast():\n    loss = self.task.loss(self.model, batch)\n")
    tree = ast.parse(source)
    assert {(attr, owner) for attr, owner, _ in assignments(tree)} == {("step", "acc"), ("scheduler", "self.lr_schedule")}
    with_node = next(node for node in ast.walk(tree) if isinstance(node, ast.With))
    assert "self.task.loss" in called_names(ast.Module(body=with_node.body, type_ignores=[]))
