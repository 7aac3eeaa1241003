"""``eval_mode``: eval mode inside the block, every submodule's own flag back after it, even on error."""

import pytest
from torch import nn

from pyro_mmebm.modes import eval_mode


def test_every_flag_is_restored_even_after_an_error():
    outer = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5), nn.BatchNorm1d(2))
    outer[1].eval()  # a submodule left in eval mode by its owner stays so
    other = nn.Dropout(0.1)
    before = [m.training for m in [*outer.modules(), other]]
    with pytest.raises(RuntimeError, match="inside"):
        with eval_mode(outer, other):
            assert not any(m.training for m in [*outer.modules(), other])
            raise RuntimeError("inside")
    assert [m.training for m in [*outer.modules(), other]] == before == [True, True, False, True, True]
