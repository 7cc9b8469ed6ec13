"""Reject unknown keys in a Serve config file.

Ray Serve's schema quietly ignores keys it does not know, so a misspelt
``max_ongoing_request`` or ``autoscaling_confg`` would deploy with defaults and
nobody would notice. This walks the YAML against Serve's own pydantic models
(``ServeDeploySchema`` and everything nested in it) and names every key that
has no field.

    python -m serve.config_check serve_config.yaml [--cpus N]

With ``--cpus N`` it also refuses a config whose replicas, at their most, do not fit one Ray
node of N logical CPUs (``serve.placement``): Serve would leave them waiting forever.
"""

import argparse
import sys
import typing
from pathlib import Path

import yaml
from pydantic import BaseModel
from ray.serve.schema import ServeDeploySchema

from serve.placement import Node, describe


def _models_in(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found = []
    for arg in typing.get_args(annotation):
        found += _models_in(arg)
    return found


def _field_names(model: type[BaseModel]) -> dict[str, object]:
    names = {}
    for name, info in model.model_fields.items():
        names[name] = info.annotation
        if info.alias:
            names[info.alias] = info.annotation
    return names


def unknown_keys(data, model: type[BaseModel] = ServeDeploySchema, path: str = "") -> list[str]:
    if not isinstance(data, dict):
        return []
    fields = _field_names(model)
    problems = []
    for key, value in data.items():
        where = f"{path}.{key}" if path else key
        if key not in fields:
            problems.append(where)
            continue
        nested = _models_in(fields[key])
        if not nested:
            continue
        items = value if isinstance(value, list) else [value]
        for index, item in enumerate(items):
            label = f"{where}[{index}]" if isinstance(value, list) else where
            if key == "args":  # the application builder's own arguments: AppArgs checks those
                continue
            problems += unknown_keys(item, nested[0], label)
    return problems


def check_file(path: str | Path) -> dict:
    data = yaml.safe_load(Path(path).read_text())
    problems = unknown_keys(data)
    if problems:
        raise ValueError(f"{path}: unknown Serve config key(s): {', '.join(problems)}")
    ServeDeploySchema.model_validate(data)
    return data


def check_placement(config: dict, cpus: float) -> None:
    problem = describe(config, [Node("local", {"CPU": cpus})])
    if problem:
        raise ValueError(f"on one node of {cpus:g} CPUs, {problem}")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", nargs="?", default="serve_config.yaml", help="the Serve config file")
    parser.add_argument(
        "--cpus", type=float, default=None, help="logical CPUs of the one-node cluster (default: no placement check)"
    )
    return parser


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        config = check_file(args.path)
        if args.cpus is not None:
            check_placement(config, args.cpus)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
