"""Fixtures shared by test modules."""

import pytest
import ray


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray with 2 CPUs for one test module, shut down after it."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
