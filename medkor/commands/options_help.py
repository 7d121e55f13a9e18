"""Option help of a class read from its source file, so `--help` of a plain command imports nothing heavy.

`medkor prepare --help` lists `MedKorDataModule`'s options (the `data.*` of a run
config) from the Google-style `Args:` section of its docstring and the defaults of its
`__init__`, without importing Lightning or torch.
"""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path
from typing import Any


def _args_section(doc: str) -> dict[str, str]:
    section = doc.split("Args:", 1)[1] if "Args:" in doc else ""
    helps: dict[str, str] = {}
    name = None
    for line in section.splitlines():
        match = re.match(r"^\s{4}(\w+):\s*(.*)$", line)
        if match:
            name = match.group(1)
            helps[name] = match.group(2)
        elif name and line.strip():
            helps[name] += " " + line.strip()
    return helps


def _default(node: ast.expr, constants: dict[str, ast.expr]) -> str:
    if isinstance(node, ast.Name) and node.id in constants:  # a module constant such as DEFAULT_TEMPLATE
        node = constants[node.id]
    try:
        return repr(ast.literal_eval(node))
    except ValueError:
        return ast.unparse(node)


def _constants(tree: ast.Module, source: Path, follow: bool = True) -> dict[str, ast.expr]:
    """Module-level `NAME = value` of `tree`, and of the medkor modules it imports names from."""
    found = {t.id: n.value for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    package_root = Path(__file__).resolve().parent.parent.parent
    for node in tree.body if follow else []:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("medkor."):
            other = package_root / (node.module.replace(".", "/") + ".py")
            if other.is_file():
                theirs = _constants(ast.parse(other.read_text(encoding="utf-8")), other, follow=False)
                found.update({a.asname or a.name: theirs[a.name] for a in node.names if a.name in theirs})
    return found


def class_options(source: Path, class_name: str) -> list[tuple[str, str, str]]:
    """(name, default, help) of every `__init__` argument of `class_name` in `source`."""
    tree = ast.parse(source.read_text(encoding="utf-8"))
    constants = _constants(tree, source)
    cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == class_name)
    helps = _args_section(ast.get_docstring(cls) or "")
    init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    args = init.args.args[1:]
    defaults = [None] * (len(args) - len(init.args.defaults)) + list(init.args.defaults)
    return [(a.arg, _default(d, constants) if d is not None else "required", helps.get(a.arg, "")) for a, d in zip(args, defaults)]


def class_defaults(source: Path, class_name: str) -> dict[str, Any]:
    """Name -> default value of every `__init__` argument of `class_name` whose default is a literal
    (or a module constant holding one); arguments without one are left out."""
    tree = ast.parse(source.read_text(encoding="utf-8"))
    constants = _constants(tree, source)
    init = _init_of(tree, class_name)
    args = init.args.args[1:]
    defaults: list[Any] = [None] * (len(args) - len(init.args.defaults)) + list(init.args.defaults)
    out: dict[str, Any] = {}
    for arg, node in zip(args, defaults):
        if node is None:
            continue
        if isinstance(node, ast.Name) and node.id in constants:
            node = constants[node.id]
        try:
            out[arg.arg] = ast.literal_eval(node)
        except ValueError:
            continue
    return out


def class_annotations(source: Path, class_name: str) -> dict[str, str]:
    """Name -> annotation text (`Optional[int]`, `str`, ...) of every `__init__` argument of `class_name`."""
    init = _init_of(ast.parse(source.read_text(encoding="utf-8")), class_name)
    return {a.arg: ast.unparse(a.annotation) if a.annotation is not None else "" for a in init.args.args[1:]}


def _init_of(tree: ast.Module, class_name: str) -> ast.FunctionDef:
    cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == class_name)
    return next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")


def datamodule_source() -> Path:
    return Path(__file__).resolve().parent.parent / "data" / "datamodule.py"


def format_options(prefix: str, options: list[tuple[str, str, str]], skip: tuple[str, ...] = ()) -> str:
    lines = []
    for name, default, text in options:
        if name in skip:
            continue
        lines.append(f"  --{prefix}.{name} (default: {default})")
        lines.extend(textwrap.wrap(text, width=88, initial_indent="      ", subsequent_indent="      "))
    return "\n".join(lines)


def data_options_help() -> str:
    """The `--data.*` options of a run config, as `medkor prepare --help` lists them."""
    source = datamodule_source()
    # tokenizer_path is linked from model.tokenizer_path; the other linked or model options are not read here
    return format_options("data", class_options(source, "MedKorDataModule"), skip=("tokenizer_path",))
