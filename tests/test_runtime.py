import platform

import pytest

from crossmatch.runtime import tune_allocator


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="mallopt tuning applies to glibc only")
def test_allocator_tuning_is_accepted_by_glibc():
    assert tune_allocator() is True
