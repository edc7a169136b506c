"""The checkpoint store: latest and best, the progress record alone, and the params alone."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxbert.checkpoint import CheckpointStore


def state(step, value, opt_state):
    return {"step": jnp.asarray(step, jnp.int32), "params": {"bert": jnp.full((3,), value), "sst": jnp.ones(2)},
            "opt_state": opt_state}


def test_latest_best_progress_and_params_alone(tmp_path):
    store = CheckpointStore(tmp_path)
    assert store.restore(state(0, 0.0, ()), which="best") is None and store.progress() is None
    # Two "stages" whose optimizer states differ in structure.
    store.save(state(5, 1.0, {"frozen": jnp.zeros(3)}), {"stage": 0, "score": 0.7}, best=True)
    store.save(state(9, 2.0, (jnp.zeros(3), jnp.zeros(2))), {"stage": 1, "score": 0.4})
    assert store.progress() == {"stage": 1, "score": 0.4}
    assert store.progress("best") == {"stage": 0, "score": 0.7}

    latest, progress = store.restore(state(0, 0.0, (jnp.ones(3), jnp.ones(2))))
    assert progress["stage"] == 1 and int(latest["step"]) == 9
    np.testing.assert_array_equal(latest["params"]["bert"], [2.0, 2.0, 2.0])
    # The best checkpoint's params, read with the latest state's params as the template.
    best, progress = store.restore({"params": latest["params"]}, which="best", partial=True)
    assert set(best) == {"params"} and progress["stage"] == 0
    np.testing.assert_array_equal(best["params"]["bert"], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="structures do not match"):  # without `partial`: the whole state
        store.restore({"params": latest["params"]}, which="best")

    with pytest.raises(ValueError, match="which must be 'latest' or 'best'"):
        store.progress("newest")
    store.close()

    reopened = CheckpointStore(tmp_path)  # as a resumed run or an analysis script finds it
    assert reopened.progress() == {"stage": 1, "score": 0.4}
    saved, _ = reopened.restore(None, which="best")  # as saved, on the host
    assert isinstance(saved["opt_state"]["frozen"], np.ndarray) and int(saved["step"]) == 5
    np.testing.assert_array_equal(saved["params"]["bert"], [1.0, 1.0, 1.0])
    reopened.close()
