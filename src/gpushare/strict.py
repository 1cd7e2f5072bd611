"""The strict base of every config model: unknown keys, NaN and infinity refused, frozen,
and a YAML true or false never taken for a number."""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError


def _mentions(annotation: Any, kinds: tuple[type, ...]) -> bool:
    """Whether a field's type, through Optional, unions and Annotated, names one of `kinds`."""
    if annotation is Any:
        return bool in kinds
    if isinstance(annotation, type):
        return issubclass(annotation, kinds)
    return any(_mentions(arg, kinds) for arg in get_args(annotation) if not isinstance(arg, (str, int, float)))


BOOL_FOR_NUMBER = "bool_for_number"
"""The error of a true/false given for a number; its context names the key (the model's
validator sees the mapping, so the error's location stops at the model)."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, data: Any) -> Any:
        """YAML's true/false is not a number: pydantic's lax mode would take true as 1 (a
        concurrency of 1, a seed of 1). Only fields that admit a bool take one."""
        if isinstance(data, dict):
            for key, value in data.items():
                field = cls.model_fields.get(key) if isinstance(key, str) else None
                if isinstance(value, bool) and field is not None and _mentions(field.annotation, (int, float)) \
                        and not _mentions(field.annotation, (bool,)):
                    raise PydanticCustomError(BOOL_FOR_NUMBER, "Input should be a number", {"key": key, "value": value})
        return data
