"""One t-SNE interface over several backends, so a run names its parameters once.

The reference ran `tsnecuda.TSNE(num_neighbors=1000, perplexity=200, n_iter=4000,
learning_rate=2000)`; that is `TSNEParams(perplexity=200, n_iter=4000, learning_rate=2000,
num_neighbors=1000)` here (`REFERENCE_PARAMS`), and every backend accepts it. tsnecuda 3.0.1 on
PyPI has no kernels for Ampere or Hopper GPUs, so `auto` only picks it after a tiny run works.

How each backend receives the parameters (`backend_kwargs` returns exactly this):

| TSNEParams | openTSNE 1.0 | scikit-learn | cuML | tsnecuda |
| --- | --- | --- | --- | --- |
| perplexity | `PerplexityBasedNN(perplexity=)` | `perplexity` | `perplexity` | `perplexity` |
| n_iter (all iterations, the first 250 exaggerated) | `early_exaggeration_iter=250`, `n_iter=n_iter - 250` | `max_iter=n_iter` (and `n_iter_without_progress=n_iter`, so it runs them all) | `max_iter=n_iter` (`n_iter` before cuML 24.x), `exaggeration_iter=250` | `n_iter=n_iter`, `force_magnify_iters=250` |
| learning_rate, a number (bhtsne / FIt-SNE units) | `learning_rate` | `learning_rate / 4` (its gradient keeps the factor 4) | `learning_rate`, `learning_rate_method="none"` | `learning_rate` |
| learning_rate "auto" | max(N / early_exaggeration, 200), computed here | `"auto"`: max(N / early_exaggeration / 4, 50), the same rule in its unit | max(N / early_exaggeration, 200), computed here (its `"adaptive"` would also change perplexity and neighbours) | max(N / early_exaggeration, 200), computed here |
| num_neighbors k (0: backend default) | `PerplexityBasedNN(k_neighbors=k)`; 0: "auto" = min(N - 1, int(3 perplexity)) | not settable: always min(N - 1, int(3 perplexity + 1)); a k is ignored with a warning | `n_neighbors=k`; 0: ceil(3 perplexity) | `num_neighbors=k`; 0: ceil(3 perplexity) (its own default, 32, is too few) |
| early_exaggeration | `early_exaggeration` | `early_exaggeration` | `early_exaggeration` | `early_exaggeration` |
| seed | `random_state` (kNN index, PCA init) | `random_state` | `random_state` (not bit-reproducible on GPU) | `random_seed` (accepted, unused by tsnecuda 3.0.1) |
| n_jobs | `n_jobs` (affinities and optimisation) | `n_jobs` | (GPU) | (GPU) |
| fixed here | `negative_gradient_method="fft"`, `initialization="pca"`, momentum 0.5 then 0.8 | `method="barnes_hut"`, `init="pca"` | `method="fft"` | `init="random"` (its only one) |

The learning-rate unit is bhtsne's, shared by FIt-SNE, openTSNE, tsnecuda and cuML (ports of the
first two); scikit-learn's documentation says its own is 4 times larger, so the reference's
2000 becomes 500 there. "auto" is one rule for all (Belkina et al. 2019, scikit-learn's "auto"):
openTSNE's own "auto" would switch to N after the exaggerated phase, and its default momentum
is 0.8 throughout; both are aligned here on what the other three do (momentum 0.5 while
exaggerated, then 0.8), so one TSNEParams runs the same optimisation on every backend.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import math
import numbers
import subprocess
import sys
from dataclasses import dataclass, replace

import numpy as np

from ..errors import UserError

log = logging.getLogger(__name__)

#: Iterations run with early exaggeration, the same in every backend (their common default).
EARLY_EXAGGERATION_ITER = 250
#: Preference order of `auto`: fastest first.
BACKENDS = ("cuml", "tsnecuda", "opentsne", "sklearn")
#: Modules whose presence makes a backend worth trying.
_MODULES = {"cuml": "cuml", "tsnecuda": "tsnecuda", "opentsne": "openTSNE", "sklearn": "sklearn"}
#: Seconds a GPU backend gets for its trial run (first CUDA use can compile kernels).
PROBE_TIMEOUT_S = 300
#: Most explained-variance ratios `pca` reports.
PCA_CURVE_CAP = 1024


@dataclass(frozen=True)
class TSNEParams:
    """Backend-neutral t-SNE settings; see the module docstring for how each backend gets them."""

    perplexity: float = 30.0
    n_iter: int = 750
    learning_rate: float | str = "auto"
    num_neighbors: int = 0
    early_exaggeration: float = 12.0
    seed: int = 0
    n_jobs: int = -1

    @classmethod
    def from_config(cls, t: dict, **override) -> TSNEParams:
        """From the pipeline's [tsne] (backend and pca are the stage's, not the map's)."""
        keys = ("perplexity", "n_iter", "learning_rate", "num_neighbors", "seed")
        return cls(**{k: t[k] for k in keys} | override)

    def __post_init__(self) -> None:
        if not (_number(self.perplexity) and self.perplexity > 0):
            raise UserError(f"t-SNE perplexity must be > 0, not {self.perplexity!r}; the usual range is 5 to 200")
        if not (_whole(self.n_iter) and self.n_iter >= EARLY_EXAGGERATION_ITER):
            raise UserError(
                f"t-SNE n_iter must be a whole number >= {EARLY_EXAGGERATION_ITER} (the exaggerated "
                f"phase), not {self.n_iter!r}; 750 is a quick map, the reference used 4000"
            )
        if not (self.learning_rate == "auto" or (_number(self.learning_rate) and self.learning_rate > 0)):
            raise UserError(f"t-SNE learning_rate must be 'auto' or a number > 0, not {self.learning_rate!r}")
        if not (_whole(self.num_neighbors) and self.num_neighbors >= 0):
            raise UserError(
                f"t-SNE num_neighbors must be a whole number >= 0 (0: 3 x perplexity), not {self.num_neighbors!r}"
            )
        if not (_number(self.early_exaggeration) and self.early_exaggeration >= 1):
            raise UserError(f"t-SNE early_exaggeration must be >= 1, not {self.early_exaggeration!r}; 12 is usual")
        if not (_whole(self.seed) and 0 <= self.seed < 2**32):
            raise UserError(f"t-SNE seed must be a whole number in 0 .. 2**32 - 1, not {self.seed!r}")
        if not (_whole(self.n_jobs) and self.n_jobs != 0 and self.n_jobs >= -1):
            raise UserError(f"t-SNE n_jobs must be -1 (all cores) or >= 1, not {self.n_jobs!r}")


def _number(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _whole(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


#: The reference's tsnecuda settings.
REFERENCE_PARAMS = TSNEParams(perplexity=200.0, n_iter=4000, learning_rate=2000.0, num_neighbors=1000)


# --------------------------------------------------------------------------- checks and preprocessing


def finite_rows(X: np.ndarray) -> np.ndarray:
    """Rows t-SNE can use: one NaN or inf row would poison every distance computed against it."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise UserError(f"expected a 2-D array (points x features), got shape {X.shape}")
    return np.isfinite(X).all(axis=1)


def max_perplexity(n: int, num_neighbors: int = 0) -> float:
    """The largest perplexity every backend honours for n points (2 decimals, rounded down).

    Each point's affinities come from its 3 x perplexity nearest neighbours (openTSNE silently
    lowers a perplexity above (n - 1) / 3; scikit-learn needs perplexity < n), or from
    num_neighbors when it is set, which must then hold 3 x perplexity.
    """
    k = min(num_neighbors, n - 1) if num_neighbors else n - 1
    return math.floor(max(k, 0) / 3 * 100) / 100


def check_perplexity(n: int, perplexity: float, num_neighbors: int = 0) -> None:
    """Fail early, with the value that works, instead of a backend silently changing the perplexity."""
    if perplexity <= 0:
        raise UserError(f"t-SNE perplexity must be > 0, not {perplexity}")
    if num_neighbors and num_neighbors > n - 1:
        raise UserError(
            f"t-SNE num_neighbors={num_neighbors} needs more than {num_neighbors} points, the subset has {n}: "
            f"set num_neighbors to at most {n - 1}, or 0 (3 x perplexity)"
        )
    if 3 * perplexity > (num_neighbors or n - 1):
        best = max_perplexity(n, num_neighbors)
        if num_neighbors:
            raise UserError(
                f"t-SNE perplexity {perplexity} needs num_neighbors >= 3 x perplexity = {math.ceil(3 * perplexity)} "
                f"(now {num_neighbors}): raise num_neighbors or use perplexity <= {best}"
            )
        if best <= 0:
            raise UserError(f"t-SNE needs at least 2 points, the subset has {n}")
        raise UserError(
            f"t-SNE perplexity {perplexity} is too large for {n} points (it needs 3 x perplexity neighbours "
            f"per point): use perplexity <= {best}, or at least {math.ceil(3 * perplexity) + 1} points"
        )


def fit_to_rows(params: TSNEParams, n: int) -> TSNEParams:
    """A perplexity too large for a small subset lowered to the largest it allows, saying so in one line.

    The map is for looking (the clusters are found in the PCA space): a first run on a few dozen
    photos should draw one rather than stop. A set num_neighbors is the user's explicit choice
    and stays checked by `check_perplexity`.
    """
    if params.num_neighbors or 3 * params.perplexity <= n - 1:
        return params
    best = max_perplexity(n)
    if best < 1:  # too few points for any map: check_perplexity says so
        return params
    log.warning(
        "t-SNE perplexity %g is too large for %d points: the map uses %g, the largest they allow",
        params.perplexity,
        n,
        best,
    )
    return replace(params, perplexity=best)


def pca(X: np.ndarray, n_components: int, seed: int = 0, cap: int = PCA_CURVE_CAP) -> tuple[np.ndarray, np.ndarray]:
    """(X reduced to n_components, or X itself for 0; explained-variance ratio of the first min(n, d, cap) components).

    The curve is always computed so the report can say how many components reach 80 % (the
    reference needed about 200 of 512: PCA alone does not summarise the layer). One fit serves
    both: the curve needs the components anyway.
    """
    Z, curve, _, _ = pca_fit(X, n_components, seed, cap)
    return Z, curve


def pca_fit(
    X: np.ndarray, n_components: int, seed: int = 0, cap: int = PCA_CURVE_CAP
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`pca`'s (reduced rows, curve) and the projection that made them: (mean (d,), components (n x d)).

    New rows land in the same space as `(X_new - mean) @ components.T` (what places them on the
    map, `science.placement`). With n_components 0 the rows are X itself: mean 0, identity.
    """
    from sklearn.decomposition import PCA

    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] < 2:
        raise UserError(f"PCA needs a 2-D array of at least 2 points, got shape {X.shape}")
    n, d = X.shape
    full = min(n, d)
    if int(n_components) != n_components or not 0 <= n_components <= full:
        raise UserError(f"PCA n_components must be 0 (off) to {full} (min of points and features), not {n_components}")
    k = min(full, max(cap, n_components))
    if n >= d:
        solver = "covariance_eigh"  # one pass over X, then a d x d eigenproblem: cheap when n >> d
    elif k < 0.8 * full:
        solver = "randomized"  # only the leading k of many components
    else:
        solver = "full"
    model = PCA(n_components=k, svd_solver=solver, random_state=seed).fit(X)
    curve = model.explained_variance_ratio_.astype(np.float64)
    if n_components == 0:
        return X, curve, np.zeros(d, np.float32), np.eye(d, dtype=np.float32)
    mean, comps = model.mean_, model.components_[:n_components]
    Z = (X - mean) @ comps.T
    return Z.astype(np.float32, copy=False), curve, mean.astype(np.float32), comps.astype(np.float32)


def components_for(curve: np.ndarray, fraction: float = 0.8) -> int | None:
    """How many components reach `fraction` of the variance (None: not within the curve)."""
    hit = np.flatnonzero(np.cumsum(curve) >= fraction)
    return int(hit[0]) + 1 if hit.size else None


# --------------------------------------------------------------------------- backends


def _auto_learning_rate(n: int, early_exaggeration: float) -> float:
    """scikit-learn's "auto", max(N / ee / 4, 50), in bhtsne units: one rule for every backend."""
    return max(n / early_exaggeration, 200.0)


def _neighbors(params: TSNEParams, n_samples: int | None) -> int:
    k = params.num_neighbors or math.ceil(3 * params.perplexity)
    return min(k, n_samples - 1) if n_samples else k


def backend_kwargs(params: TSNEParams, backend: str, n_samples: int | None = None) -> dict[str, dict]:
    """How `backend` is called for `params`: {"estimator": constructor kwargs} (+ "affinities" for openTSNE).

    Pure: the table in the module docstring, as data. n_samples is needed for learning_rate
    "auto" (computed here for all but scikit-learn) and caps neighbours at n - 1.
    """
    p, ee, it = params.perplexity, params.early_exaggeration, params.n_iter
    lr = params.learning_rate
    if backend not in BACKENDS:
        raise UserError(f"unknown t-SNE backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if lr == "auto" and backend != "sklearn":
        if not n_samples:
            raise ValueError(f"learning_rate='auto' for {backend} needs n_samples")
        lr = _auto_learning_rate(n_samples, ee)
    if backend == "opentsne":
        return {
            "estimator": dict(
                n_components=2,
                perplexity=p,
                learning_rate=float(lr),
                early_exaggeration=ee,
                early_exaggeration_iter=EARLY_EXAGGERATION_ITER,
                n_iter=it - EARLY_EXAGGERATION_ITER,
                initial_momentum=0.5,
                final_momentum=0.8,
                initialization="pca",
                negative_gradient_method="fft",
                n_jobs=params.n_jobs,
                random_state=params.seed,
                verbose=False,
            ),
            "affinities": dict(
                perplexity=p, k_neighbors=params.num_neighbors or "auto", n_jobs=params.n_jobs, random_state=params.seed
            ),
        }
    if backend == "sklearn":
        return {
            "estimator": dict(
                n_components=2,
                perplexity=p,
                learning_rate=lr if lr == "auto" else lr / 4,
                early_exaggeration=ee,
                max_iter=it,
                n_iter_without_progress=it,
                init="pca",
                method="barnes_hut",
                random_state=params.seed,
                n_jobs=params.n_jobs,
            ),
        }
    k = _neighbors(params, n_samples)
    if backend == "cuml":
        return {
            "estimator": dict(
                n_components=2,
                perplexity=p,
                n_neighbors=k,
                max_iter=it,
                learning_rate=float(lr),
                learning_rate_method="none",
                early_exaggeration=ee,
                exaggeration_iter=EARLY_EXAGGERATION_ITER,
                method="fft",
                random_state=params.seed,
            ),
        }
    return {
        "estimator": dict(
            n_components=2,
            perplexity=p,
            num_neighbors=k,
            n_iter=it,
            learning_rate=float(lr),
            early_exaggeration=ee,
            force_magnify_iters=EARLY_EXAGGERATION_ITER,
            random_seed=params.seed,
        ),
    }


# A trial run in a child process: a GPU library built for other GPUs can crash or hang instead of raising.
_PROBE = """
import sys
import numpy as np
X = np.random.RandomState(0).randn(300, 8).astype(np.float32)
X[:150] += 6
if sys.argv[1] == "cuml":
    from cuml.manifold import TSNE
    Y = TSNE(n_components=2, perplexity=10, n_neighbors=30, method="fft", random_state=0, output_type="numpy").fit_transform(X)
else:
    from tsnecuda import TSNE
    Y = TSNE(n_components=2, perplexity=10, num_neighbors=30, n_iter=300).fit_transform(X)
Y = np.asarray(Y.get() if hasattr(Y, "get") else Y)
ok = Y.shape == (300, 2) and bool(np.isfinite(Y).all()) and float(Y.std()) > 0
print("PROBE-OK" if ok else "PROBE-BAD")
"""


def _works(backend: str) -> bool:
    """Importable, and for the GPU backends a tiny embedding comes out finite (in a child process)."""
    if importlib.util.find_spec(_MODULES[backend]) is None:
        return False
    if backend in ("opentsne", "sklearn"):
        return True
    try:
        run = subprocess.run(
            [sys.executable, "-c", _PROBE, backend], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S
        )
    except (subprocess.TimeoutExpired, OSError) as e:
        log.info("t-SNE backend %s does not work here: %s", backend, e)
        return False
    if "PROBE-OK" not in run.stdout:
        why = (run.stderr.strip().splitlines() or [f"exit status {run.returncode}"])[-1]
        log.info("t-SNE backend %s does not work here: %s", backend, why)
        return False
    return True


def available_backends() -> list[str]:
    """Backends that import and run here, fastest first (GPU ones are tried in a child process)."""
    return [b for b in BACKENDS if _works(b)]


def _run(X: np.ndarray, params: TSNEParams, backend: str) -> np.ndarray:
    kw = backend_kwargs(params, backend, n_samples=len(X))
    if backend == "opentsne":
        from openTSNE import TSNE
        from openTSNE.affinity import PerplexityBasedNN

        affinities = PerplexityBasedNN(X, **kw["affinities"])
        est = kw["estimator"]
        return np.asarray(TSNE(**est).fit(X, affinities=affinities, initialization=est["initialization"]))
    if backend == "sklearn":
        from sklearn.manifold import TSNE

        if params.num_neighbors:
            log.warning(
                "scikit-learn's t-SNE cannot set num_neighbors (%d); it uses 3 x perplexity + 1", params.num_neighbors
            )
        return TSNE(**kw["estimator"]).fit_transform(X)
    X32 = np.ascontiguousarray(X, dtype=np.float32)
    if backend == "cuml":
        from cuml.manifold import TSNE

        est = dict(kw["estimator"])
        try:
            names = inspect.signature(TSNE).parameters
        except (TypeError, ValueError):
            names = {}
        if "max_iter" not in names and "n_iter" in names:  # cuML before 24.x
            est["n_iter"] = est.pop("max_iter")
        Y = TSNE(**est, output_type="numpy").fit_transform(X32)
        return np.asarray(Y.get() if hasattr(Y, "get") else Y)
    from tsnecuda import TSNE

    return np.asarray(TSNE(**kw["estimator"]).fit_transform(X32))


def embed(X: np.ndarray, params: TSNEParams | None = None, backend: str = "auto") -> tuple[np.ndarray, str]:
    """(N x 2 float32 map, backend used). `auto` takes the fastest backend that works here."""
    params = params or TSNEParams()
    X = np.asarray(X)
    if X.ndim != 2:
        raise UserError(f"t-SNE expects points x features, got shape {X.shape}")
    bad = int((~finite_rows(X)).sum())
    if bad:
        raise UserError(f"{bad} of {len(X)} rows hold NaN or inf; drop them first (introspect.tsne.finite_rows)")
    check_perplexity(len(X), params.perplexity, params.num_neighbors)
    if backend == "auto":
        for name in BACKENDS:
            if _works(name):
                backend = name
                break
        else:
            raise UserError("no t-SNE backend works here; install openTSNE (pip install openTSNE)")
        log.info("t-SNE backend: %s (auto)", backend)
    elif backend not in BACKENDS:
        raise UserError(
            f"unknown t-SNE backend {backend!r}; available here: {', '.join(['auto', *available_backends()])}"
        )
    elif not _works(backend):
        raise UserError(
            f"t-SNE backend {backend!r} does not work here; available: {', '.join(['auto', *available_backends()])}"
        )
    Y = _run(X, params, backend)
    return np.ascontiguousarray(Y, dtype=np.float32), backend
