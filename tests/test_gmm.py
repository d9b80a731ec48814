"""1-D GaussianMixture: fused kernels vs their twins, agreement with scikit-learn from the same
initial parameters, dask array / dataframe / distributed inputs equal to NumPy, errors."""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import dask.dataframe as dd
import distributed
import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture
from sklearn.utils.estimator_checks import parametrize_with_checks

from cryoframe.algorithms import _gmm_kernels as kern
from cryoframe.algorithms.gmm import GaussianMixture
from cryoframe.errors import InputError

N = 200_000
FIT_ATTRS = ("weights_", "means_", "covariances_", "precisions_cholesky_", "lower_bound_")


def mixture(seed: int, means: list[float], sds: list[float], weights: list[float], n: int = N) -> np.ndarray:
    rng = np.random.default_rng(seed)
    comp = rng.choice(len(means), size=n, p=weights)
    return rng.normal(np.asarray(means)[comp], np.asarray(sds)[comp])


@pytest.fixture(scope="module")
def bimodal() -> np.ndarray:
    return mixture(0, [-2.0, 3.0], [1.0, 0.7], [0.6, 0.4])


@pytest.fixture(scope="module")
def trimodal() -> np.ndarray:
    # defocus-like values (Å): a large offset tests the centred statistics
    return mixture(1, [12000.0, 15000.0, 21000.0], [900.0, 700.0, 1500.0], [0.3, 0.5, 0.2])


INITS = {
    "bimodal": ([0.5, 0.5], [[-1.0], [1.0]], [[[1.0]], [[1.0]]]),
    "trimodal": ([0.25, 0.5, 0.25], [[9000.0], [13000.0], [17000.0]], [[[1e-6]], [[1e-6]], [[1e-6]]]),
}


def assert_same_fit(a, b, rtol: float) -> None:  # noqa: ANN001
    for attr in FIT_ATTRS:
        np.testing.assert_allclose(getattr(a, attr), getattr(b, attr), rtol=rtol, atol=0, err_msg=attr)
    assert a.n_iter_ == b.n_iter_
    assert a.converged_ == b.converged_


def test_numba_kernel_and_numpy_twin_give_identical_statistics() -> None:
    if not kern.HAVE_NUMBA:
        pytest.skip("numba not installed")
    x = mixture(3, [-3.0, 0.5, 4.0], [1.0, 0.5, 2.0], [0.3, 0.3, 0.4], n=150_001)
    cst, pc, mpc = kern.kernel_params(np.array([0.2, 0.5, 0.3]), np.array([-2.0, 1.0, 5.0]), np.array([1.0, 2.0, 0.6]))
    c = float(x.mean())
    for xx in (x, x.astype(np.float32)):
        a, b = kern.stats_numba(xx, cst, pc, mpc, c), kern.stats_numpy(xx, cst, pc, mpc, c)
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=0)
        assert a[:3].sum() == pytest.approx(xx.shape[0], rel=1e-12)  # responsibilities sum to one per sample


@pytest.mark.parametrize("tol", [1e-3, 1e-6])
@pytest.mark.parametrize("name", ["bimodal", "trimodal"])
def test_matches_sklearn_from_the_same_initial_parameters(name: str, tol: float, request) -> None:  # noqa: ANN001
    x = request.getfixturevalue(name)
    w0, m0, p0 = INITS[name]
    kw = dict(n_components=len(w0), tol=tol, max_iter=200, reg_covar=1e-6,
              weights_init=np.array(w0), means_init=np.array(m0), precisions_init=np.array(p0))
    ref = SkGaussianMixture(covariance_type="full", **kw).fit(x[:, None])
    ours = GaussianMixture(**kw).fit(x)
    assert_same_fit(ours, ref, rtol=1e-6)
    assert ours.covariances_.shape == (len(w0), 1, 1) and ours.means_.shape == (len(w0), 1)
    np.testing.assert_allclose(ours.precisions_, ref.precisions_, rtol=1e-6)
    np.testing.assert_array_equal(ours.predict(x), ref.predict(x[:, None]))
    np.testing.assert_allclose(ours.score_samples(x), ref.score_samples(x[:, None]), rtol=1e-9)
    assert ours.score(x) == pytest.approx(ref.score(x[:, None]), rel=1e-9)
    assert ours.bic(x) == pytest.approx(ref.bic(x[:, None]), rel=1e-9)
    assert ours.aic(x[:, None]) == pytest.approx(ref.aic(x[:, None]), rel=1e-9)


def test_default_kmeanspp_init_is_reproducible_and_recovers_the_components(trimodal: np.ndarray) -> None:
    a = GaussianMixture(3, tol=1e-6, random_state=7, sample_size=20_000).fit(trimodal)
    b = GaussianMixture(3, tol=1e-6, random_state=7, sample_size=20_000).fit(trimodal)
    assert_same_fit(a, b, rtol=0)
    order = np.argsort(a.means_.ravel())
    np.testing.assert_allclose(a.means_.ravel()[order], [12000, 15000, 21000], rtol=0.01)
    np.testing.assert_allclose(a.weights_[order], [0.3, 0.5, 0.2], atol=0.02)
    assert a.converged_ and a.n_features_in_ == 1


def test_numpy_twin_path_fits_like_the_numba_path(trimodal: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    a = GaussianMixture(3, random_state=0).fit(trimodal)  # K = 3: the compiled loop (K <= 2 is closed form)
    monkeypatch.setattr(kern, "HAVE_NUMBA", False)
    b = GaussianMixture(3, random_state=0).fit(trimodal)
    assert_same_fit(a, b, rtol=1e-10)


@pytest.mark.parametrize("k", [1, 2])
def test_closed_form_statistics_equal_the_per_sample_loop(k: int) -> None:
    # far-apart narrow components and a large offset: the quadratic form of Δ must not cancel
    x = mixture(4, [15000.0, 15003.0], [0.5, 2.0], [0.3, 0.7], n=100_003)
    w = np.array([0.4, 0.6])[:k] / np.array([0.4, 0.6])[:k].sum()
    cst, pc, mpc = kern.kernel_params(w, np.array([15000.5, 15002.0])[:k], np.array([1.5, 0.4])[:k])
    c = float(x.mean())
    for xx in (x, x.astype(np.float32)):
        ref = kern.stats_numpy(xx, cst, pc, mpc, c)
        got = kern.stats_closed(xx, cst, pc, mpc, c)
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9 * xx.shape[0])
        assert got[:k].sum() == pytest.approx(xx.shape[0], rel=1e-12)
    with pytest.raises(ValueError, match="two components"):
        kern.stats_closed(x, *kern.kernel_params(np.ones(3) / 3, np.arange(3.0), np.ones(3)), c)


def test_numpy_kmeans_init_agrees_with_sklearn_kmeans(trimodal: np.ndarray) -> None:
    from sklearn.cluster import KMeans

    from cryoframe.algorithms.gmm_em import kmeans_1d

    xs = trimodal[:20_000]
    ours = kmeans_1d(xs, 3, np.random.RandomState(0))
    ref = KMeans(3, n_init=1, random_state=0).fit(xs[:, None])
    centres = np.sort([xs[ours == j].mean() for j in range(3)])
    np.testing.assert_allclose(centres, np.sort(ref.cluster_centers_.ravel()), rtol=1e-3)


def test_dask_array_with_several_chunks_equals_numpy(bimodal: np.ndarray) -> None:
    ref = GaussianMixture(2, random_state=0, sample_size=10_000).fit(bimodal)
    for x in (da.from_array(bimodal, chunks=23_000), da.from_array(bimodal[:, None], chunks=(37_000, 1))):
        with dask.config.set(scheduler="threads"):
            gm = GaussianMixture(2, random_state=0, sample_size=10_000).fit(x)
            labels = gm.predict(x)
            assert isinstance(labels, da.Array)
            np.testing.assert_array_equal(labels.compute(), ref.predict(bimodal))
            proba = gm.predict_proba(x).compute()
        assert_same_fit(gm, ref, rtol=1e-9)
        np.testing.assert_allclose(proba, ref.predict_proba(bimodal), rtol=1e-9, atol=1e-15)


def test_dask_dataframe_column_with_pyarrow_dtype_equals_numpy(bimodal: np.ndarray) -> None:
    ref = GaussianMixture(2, random_state=3, sample_size=5_000).fit(bimodal)
    df = dd.from_pandas(pd.DataFrame({"ctf/df1_A": pd.Series(bimodal, dtype="double[pyarrow]")}), npartitions=6)
    with dask.config.set(scheduler="threads"):
        for x in (df["ctf/df1_A"], df):
            gm = GaussianMixture(2, random_state=3, sample_size=5_000).fit(x)
            assert_same_fit(gm, ref, rtol=1e-9)
            labels = gm.predict(x).compute()
            np.testing.assert_array_equal(labels.to_numpy(), ref.predict(bimodal))
            assert gm.score(x) == pytest.approx(ref.score(bimodal), rel=1e-12)


@pytest.fixture
def local_cluster():  # noqa: ANN201
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           host="127.0.0.1", dashboard_address=None)
        client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def test_distributed_local_cluster_gives_identical_results_to_threads(bimodal: np.ndarray, local_cluster) -> None:  # noqa: ANN001
    x = da.from_array(bimodal, chunks=40_000)
    with dask.config.set(scheduler="threads"):
        ref = GaussianMixture(2, random_state=0, sample_size=10_000).fit(x)
        ref_labels = ref.predict(x).compute()
    with distributed.get_task_stream(local_cluster) as tasks:  # the client is the default scheduler
        gm = GaussianMixture(2, random_state=0, sample_size=10_000).fit(x)
    assert len(tasks.data) > 0
    assert_same_fit(gm, ref, rtol=0)
    np.testing.assert_array_equal(gm.predict(x).compute(), ref_labels)


def test_predict_proba_rows_sum_to_one_and_fit_predict_equals_predict(trimodal: np.ndarray) -> None:
    gm = GaussianMixture(3, random_state=1)
    labels = gm.fit_predict(trimodal)
    np.testing.assert_array_equal(labels, gm.predict(trimodal))
    proba = gm.predict_proba(trimodal[:, None])
    assert proba.shape == (N, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(proba.argmax(axis=1), labels)


def test_n_init_keeps_the_best_lower_bound(bimodal: np.ndarray) -> None:
    one = GaussianMixture(2, random_state=5, init_params="random_from_data", max_iter=3).fit(bimodal[:20_000])
    three = GaussianMixture(2, random_state=5, init_params="random_from_data", max_iter=3,
                            n_init=3).fit(bimodal[:20_000])
    assert three.lower_bound_ >= one.lower_bound_


def test_max_iter_zero_returns_the_initial_parameters(bimodal: np.ndarray) -> None:
    w0, m0, p0 = INITS["bimodal"]
    gm = GaussianMixture(2, max_iter=0, weights_init=w0, means_init=m0, precisions_init=p0).fit(bimodal)
    np.testing.assert_array_equal(gm.weights_, w0)
    np.testing.assert_array_equal(gm.means_, m0)
    np.testing.assert_array_equal(gm.precisions_, p0)
    assert gm.n_iter_ == 0 and gm.lower_bound_ == -np.inf and not gm.converged_


def test_not_converged_warns_like_sklearn(bimodal: np.ndarray) -> None:
    with pytest.warns(ConvergenceWarning):
        GaussianMixture(2, max_iter=1, tol=0, random_state=0).fit(bimodal)


def test_estimator_stores_parameters_only_and_clones() -> None:
    gm = GaussianMixture(4, tol=1e-5, device="cpu")
    assert gm.get_params()["n_components"] == 4 and not hasattr(gm, "weights_")
    assert clone(gm).get_params() == gm.get_params()


def test_invalid_inputs_raise_input_error(bimodal: np.ndarray) -> None:
    x = bimodal[:1000].copy()
    x[[3, 17]] = np.nan
    x[99] = np.inf
    with pytest.raises(InputError, match="3 non-finite"):
        GaussianMixture(2).fit(x)
    with pytest.raises(InputError, match="3 non-finite"):
        GaussianMixture(2).fit(da.from_array(x, chunks=300))
    s = pd.Series(bimodal[:1000], dtype="double[pyarrow]")
    s[5] = None
    with pytest.raises(InputError, match="1 non-finite"):
        GaussianMixture(2).fit(dd.from_pandas(s, npartitions=3))
    with pytest.raises(InputError, match="2 distinct"):
        GaussianMixture(3).fit(np.repeat([1.0, 2.0], 500))
    with pytest.raises(InputError, match="1 distinct"):
        GaussianMixture(2).fit(da.from_array(np.full(1000, 4.0), chunks=100))
    with pytest.raises(InputError, match="shape"):
        GaussianMixture(2).fit(np.zeros((10, 2)))
    with pytest.raises(InputError, match="one column"):
        GaussianMixture(2).fit(dd.from_pandas(pd.DataFrame({"a": x, "b": x}), npartitions=2))
    with pytest.raises(InputError, match="n_components"):
        GaussianMixture(0).fit(bimodal)
    with pytest.raises(InputError, match="weights_init"):
        GaussianMixture(2, weights_init=[0.7, 0.7]).fit(bimodal)
    with pytest.raises(InputError, match="at least"):
        GaussianMixture(2).fit(np.array([1.0]))
    fitted = GaussianMixture(2, random_state=0).fit(bimodal[:5000])
    with pytest.raises(InputError, match="1 non-finite"):
        fitted.predict(np.array([0.0, np.nan]))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-10), (np.float32, 1e-4)])
def test_gpu_kernel_matches_numpy_twin(dtype, rtol: float) -> None:  # noqa: ANN001
    from cryoframe.backend.kernels import gmm_stats

    x = mixture(3, [-3.0, 0.5, 4.0], [1.0, 0.5, 2.0], [0.3, 0.3, 0.4], n=1_000_003).astype(dtype)
    cst, pc, mpc = kern.kernel_params(np.array([0.2, 0.5, 0.3]), np.array([-2.0, 1.0, 5.0]), np.array([1.0, 2.0, 0.6]))
    c = float(x.astype(np.float64).mean())
    ref = kern.stats_numpy(x, cst, pc, mpc, c)
    got = gmm_stats(x, cst, pc, mpc, c)
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=0)
    np.testing.assert_array_equal(gmm_stats(x, cst, pc, mpc, c), got)  # deterministic


@pytest.mark.gpu
def test_gpu_fit_matches_cpu_fit(bimodal: np.ndarray) -> None:
    cpu = GaussianMixture(2, random_state=0).fit(bimodal)
    gpu = GaussianMixture(2, random_state=0, device="gpu").fit(bimodal)
    assert_same_fit(gpu, cpu, rtol=1e-9)
    with dask.config.set(scheduler="threads"):
        gpu_dask = GaussianMixture(2, random_state=0, device="gpu").fit(da.from_array(bimodal, chunks=50_000))
    assert_same_fit(gpu_dask, cpu, rtol=1e-9)


# -- scikit-learn's estimator checks ------------------------------------------------------------------
# GaussianMixture is univariate by design (one value per particle): it accepts X of shape (n,) or
# (n, 1) and refuses more features with a clear error.  The checks below fit multi-feature X, so
# they cannot apply; check_fit1d asks that 1-D X be refused, which this estimator accepts on purpose.
_MULTI_FEATURE = "univariate estimator: the check fits X with several features"
GMM_XFAIL = {name: _MULTI_FEATURE for name in (
    "check_fit_score_takes_y", "check_estimators_overwrite_params", "check_dont_overwrite_parameters",
    "check_estimators_fit_returns_self", "check_readonly_memmap_input", "check_n_features_in_after_fitting",
    "check_positive_only_tag_during_fit", "check_estimators_dtypes", "check_dtype_object",
    "check_pipeline_consistency", "check_estimators_pickle", "check_f_contiguous_array_estimator",
    "check_methods_sample_order_invariance", "check_methods_subset_invariance", "check_fit2d_1sample",
    "check_dict_unchanged", "check_fit_idempotent", "check_fit_check_is_fitted", "check_n_features_in",
    "check_fit2d_predict1d", "check_estimators_nan_inf")}
GMM_XFAIL["check_fit1d"] = "1-D X (n,) is accepted on purpose: one value per particle"


@parametrize_with_checks([GaussianMixture(n_components=2, random_state=0)],
                         expected_failed_checks=lambda est: GMM_XFAIL)
def test_sklearn_estimator_checks(estimator, check) -> None:  # noqa: ANN001
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)
