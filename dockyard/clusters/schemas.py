"""What a cluster request may contain: a run's or definition's ``cluster`` (its size), a
notebook cluster (a name, an image and a pool besides), a scale. Shapes only; the limits
an admin sets are ``service.check_cluster_request``'s."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field
from pydantic_core import PydanticCustomError

CLUSTER_NAME = r"^[a-z][a-z0-9-]{0,39}$"
#: Docker's smallest CPU limit; a smaller one would be rounded to 0, which means none.
MIN_WORKER_CPU = 0.01


def no_control_characters(value: str) -> str:
    """Refuse NUL and other control characters in a name or reference: PostgreSQL cannot
    store NUL (the request would end in a 500), and no image, pool or tag has the others."""
    if any(not character.isprintable() for character in value):
        raise PydanticCustomError("control_character",
                                  "contains a control character (NUL, newline, …)")
    return value


#: A one-line string of a request (a name, a reference): no control characters.
PlainText = Annotated[str, AfterValidator(no_control_characters)]


class ClusterSizeIn(BaseModel, extra="forbid"):
    """A cluster's engine and size: the ``cluster`` field of a run or definition."""

    kind: Literal["ray", "spark"] = Field(description="ray or spark.")
    workers: int = Field(2, ge=1, description="Worker containers besides the head.")
    worker_cpu: float = Field(1.0, ge=MIN_WORKER_CPU, description="CPUs of each worker "
                              "(fractions allowed, at least 0.01).")
    worker_memory_mb: int = Field(2048, ge=512, description="Memory limit of each worker "
                                  "in MB.")


class ClusterIn(ClusterSizeIn):
    """A cluster of your own, for your notebooks."""

    name: str = Field(pattern=CLUSTER_NAME, description="Unique among your live clusters: "
                      "a lower-case letter, then up to 39 lower-case letters, digits and -.")
    image: PlainText | None = Field(None, min_length=1, max_length=255,
                              description="An image from the catalog, enabled for jobs, "
                              "with Ray or Spark. Unset: the jobs default image.")
    pool: PlainText = Field("default", min_length=1, max_length=64,
                      description="A job pool on Docker or Swarm.")


class ClusterScaleIn(BaseModel, extra="forbid"):
    workers: int = Field(ge=1, description="The number of workers wanted from now on.")
