"""Reject unknown keys in a Serve config file.

Ray Serve's schema quietly ignores keys it does not know, so a misspelt
``max_ongoing_request`` or ``autoscaling_confg`` would deploy with defaults and
nobody would notice. This walks the YAML against Serve's own pydantic models
(``ServeDeploySchema`` and everything nested in it) and names every key that
has no field.

    python -m serve.config_check serve_config.yaml
"""

import sys
import typing
from pathlib import Path

import yaml
from pydantic import BaseModel
from ray.serve.schema import ServeDeploySchema


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


if __name__ == "__main__":
    check_file(sys.argv[1] if len(sys.argv) > 1 else "serve_config.yaml")
    print("ok")
