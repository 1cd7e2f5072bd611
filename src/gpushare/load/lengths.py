"""Token-length distributions: how many tokens a prompt or an output has, drawn per request."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

import numpy as np
from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from ..strict import StrictModel


class FixedLength(StrictModel):
    dist: Literal["fixed"] = "fixed"
    value: PositiveInt

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.full(n, self.value, dtype=np.int64)

    @property
    def label(self) -> str:
        return str(self.value)


class UniformLength(StrictModel):
    dist: Literal["uniform"]
    low: PositiveInt
    high: PositiveInt

    @model_validator(mode="after")
    def _ordered(self) -> "UniformLength":
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) must be >= low ({self.low})")
        return self

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.integers(self.low, self.high + 1, size=n, dtype=np.int64)

    @property
    def label(self) -> str:
        return f"U[{self.low},{self.high}]"


class NormalLength(StrictModel):
    """Normal lengths, rounded and clipped to [min, max] so every length stays usable."""

    dist: Literal["normal"]
    mean: PositiveFloat
    std: float = Field(ge=0)
    min: PositiveInt = 1
    max: PositiveInt | None = None

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        values = np.rint(rng.normal(self.mean, self.std, size=n)).astype(np.int64)
        return np.clip(values, self.min, self.max if self.max is not None else None)

    @property
    def label(self) -> str:
        return f"N({self.mean:g},{self.std:g})[{self.min},{'' if self.max is None else self.max}]"


def fixed_if_int(value: Any) -> Any:
    """A bare whole number as a fixed length (`output_tokens: 128`)."""
    return {"dist": "fixed", "value": value} if isinstance(value, int) and not isinstance(value, bool) else value


LengthDistribution = Annotated[
    Union[FixedLength, UniformLength, NormalLength], Field(discriminator="dist")
]
