"""bench/debias.py's side-by-side case of the one core's step trains the same numbers three
ways (optax's Adam and XLA's sort; the core's Adam; NumPy's sort) and times each."""

import pytest


@pytest.mark.slow  # make test-all (see Makefile): three Yahoo!-sized runs of 2 epochs
def test_core_case_trains_the_same_numbers_three_ways(load_repo_script):
    bench = load_repo_script("bench/debias.py")
    result = bench.case_yahoo_proxy_dr_jl_core(quick=True)
    names = ["a_optax_adam_xla_sort", "b_core_adam_xla_sort", "c_core_adam_numpy_sort"]
    assert list(result["speedup"]) == names
    aucs = [result[name]["test_auc"] for name in names]
    assert aucs == pytest.approx([aucs[0]] * 3, abs=1e-6)
    assert all(result[name]["epochs_run"] == bench.QUICK_EPOCHS for name in names)
    assert all(result[name]["epoch_seconds"] > 0 for name in names)
