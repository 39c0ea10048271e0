"""``make test``'s scheduling does what tests/conftest.py says: under ``-n 2 --dist loadgroup`` each test file is
one xdist group, so that its module fixtures are built once and the multi-process files never run side by side.

pytest-xdist marks a grouped test by a ``@group`` suffix on its node id; when a pytest release changes how node
ids are stored (pytest 9.2, pytest-xdist#1386) the suffix silently vanishes and every file is split over both
workers. This test fails then, instead of CI just taking longer.
"""

from __future__ import annotations

import pytest


def test_each_file_runs_as_one_xdist_group(request):
    if not getattr(request.config.option, "loadgroup", False):  # set on pytest-xdist workers under loadgroup
        pytest.skip("not run by pytest-xdist with --dist loadgroup")
    assert request.node.nodeid.endswith("@test_xdist_groups"), (
        f"node id {request.node.nodeid!r} has no xdist group: --dist loadgroup is not grouping (see setup.cfg)")
