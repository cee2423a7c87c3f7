"""The per-tensor merge methods: a conformance suite run over every registered kind (a new method is covered
without new test code), then each method's values against tensors computed by hand here."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from fusion.config import is_bool, is_number
from fusion.errors import ConfigError
from fusion.merging import MERGE_METHODS, TensorContext
from fusion.merging.base import BASE_NEVER, BASE_REQUIRED

KINDS = MERGE_METHODS.names()
SHAPES = [(7,), (3, 4)]
# parameters that have no default (what a method learns from data and is then built with), per kind
REQUIRED = {"learned_soup": {"coefficients": {"all": [0.3, 0.7]}}}


def make(cls, **kwargs):
    """The method with its defaults, plus the parameters it cannot default."""
    return cls(**{**REQUIRED.get(cls.kind, {}), **kwargs})


def context(method, name: str = "layer.weight", statistics=None) -> TensorContext:
    return TensorContext(name, seed=method.tensor_seed(name), statistics=statistics or {})


def merge(method, tensors, base=None, name: str = "layer.weight", statistics=None) -> torch.Tensor:
    tensors = [torch.as_tensor(t, dtype=torch.float32) for t in tensors]
    base = None if base is None else torch.as_tensor(base, dtype=torch.float32)
    return method.merge_tensor(tensors, base, context(method, name, statistics))


def inputs(cls, shape, seed: int = 0):
    """Fine-tuned tensors (as many as the method takes, at least 2) and a base (None where it takes none)."""
    g = torch.Generator().manual_seed(seed)
    n = max(cls.min_models, 2) if cls.max_models is None else min(max(cls.min_models, 2), cls.max_models)
    base = torch.randn(shape, generator=g)
    models = [base + 0.1 * torch.randn(shape, generator=g) for _ in range(n)]
    return models, (None if cls.base == BASE_NEVER else base)


def alternatives(config):
    """Valid configs that differ from ``config`` in one field each (a flipped bool, another number)."""
    found = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        candidates = [not value] if is_bool(value) else [value * 0.5 if value else 0.5, value + 1] \
            if is_number(value) else [{k: v[::-1] for k, v in value.items()}] if isinstance(value, dict) else []
        for candidate in candidates:
            try:
                found[f.name] = config.replace(**{f.name: candidate})
                break
            except ConfigError:
                continue
    return found


# --- conformance: every registered kind -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_config_round_trip_and_clone(kind):
    cls = MERGE_METHODS.get(kind)
    method = make(cls)
    data = method.to_config()
    assert data["kind"] == kind
    assert cls.config_from_dict(data) == method.config
    assert type(method.config).from_dict(method.config.to_dict()) == method.config
    twin = method.clone()
    assert twin is not method and twin.config == method.config and twin.fingerprint == method.fingerprint
    with pytest.raises(ConfigError, match="unknown"):
        type(method.config).from_dict({"no_such_parameter": 1})


@pytest.mark.parametrize("kind", KINDS)
def test_fingerprint_stable_and_follows_every_parameter(kind):
    cls = MERGE_METHODS.get(kind)
    assert make(cls).fingerprint == make(cls).fingerprint
    changed = alternatives(make(cls).config)
    assert changed, f"{kind} has no parameter to vary"
    prints = {name: cls(config).fingerprint for name, config in changed.items()}
    assert make(cls).fingerprint not in prints.values()
    assert len(set(prints.values())) == len(prints)  # each parameter changes it its own way


@pytest.mark.parametrize("kind", KINDS)
def test_check_models_refusals(kind):
    cls = MERGE_METHODS.get(kind)
    method = make(cls)
    models, base = inputs(cls, (3,))
    method.check_models(len(models), base is not None)  # what the suite merges is accepted
    with pytest.raises(ConfigError, match=f"{kind}.*takes (at least|exactly) {cls.min_models}"):
        method.check_models(cls.min_models - 1, base is not None)
    if cls.max_models is not None:
        with pytest.raises(ConfigError, match=f"exactly {cls.max_models}.*got {cls.max_models + 1}"):
            method.check_models(cls.max_models + 1, base is not None)
    if cls.base == BASE_REQUIRED:
        with pytest.raises(ConfigError, match="give base="):
            method.check_models(len(models), False)
    if cls.base == BASE_NEVER:
        with pytest.raises(ConfigError, match="does not use a base model"):
            method.check_models(len(models), True)
    try:
        weighted = make(cls, weight=[1.0] * (len(models) + 1))
    except ConfigError as error:  # a method without weights refuses them in its config, saying why
        assert "weight must be None" in str(error)
    else:
        with pytest.raises(ConfigError, match=f"weight has {len(models) + 1} values for {len(models)} models"):
            weighted.check_models(len(models), base is not None)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_shape_determinism_and_inputs_untouched(kind, shape):
    cls = MERGE_METHODS.get(kind)
    models, base = inputs(cls, shape)
    copies = [m.clone() for m in models]
    first = merge(make(cls), models, base)
    assert first.shape == torch.Size(shape) and first.dtype == torch.float32
    assert torch.isfinite(first).all()
    assert torch.equal(first, merge(make(cls), models, base))  # a fresh instance, the same seed: the same tensor
    assert all(torch.equal(m, c) for m, c in zip(models, copies, strict=True))


@pytest.mark.parametrize("kind", KINDS)
def test_documented_with_an_example(kind):
    cls = MERGE_METHODS.get(kind)
    assert cls.__doc__ and "Example:" in cls.__doc__
    module = __import__(cls.__module__, fromlist=["_"])
    assert "mergekit" in module.__doc__


# --- defaults: mergekit's registry ------------------------------------------------------------------------------

MERGEKIT_DEFAULTS = {
    "task_arithmetic": {"normalize": False, "lambda_": 1.0},
    "ties": {"normalize": True, "rescale": None, "density": 1.0, "consensus": "sum", "lambda_": 1.0},
    "dare_linear": {"normalize": False, "rescale": "l1", "density": 1.0, "lambda_": 1.0},
    "dare_ties": {"normalize": False, "rescale": "l1", "density": 1.0, "consensus": "sum", "lambda_": 1.0},
    "breadcrumbs": {"normalize": False, "rescale": None, "density": 1.0, "gamma": 0.01, "lambda_": 1.0},
    "breadcrumbs_ties": {"normalize": False, "rescale": None, "density": 1.0, "gamma": 0.01, "consensus": "sum"},
    "model_stock": {"filter_wise": False},
    "linear": {"normalize": True},
}


@pytest.mark.parametrize("kind", sorted(MERGEKIT_DEFAULTS))
def test_defaults_are_mergekits(kind):
    config = MERGE_METHODS.get(kind)().config
    assert {name: getattr(config, name) for name in MERGEKIT_DEFAULTS[kind]} == MERGEKIT_DEFAULTS[kind]


def test_rescale_accepts_mergekits_bool_and_lambda_its_recipe_name():
    dare = MERGE_METHODS.get("dare_linear")
    assert dare(rescale=True).config.rescale == "l1"
    assert dare.Config.from_dict({"rescale": False}).rescale is None
    with pytest.raises(ConfigError, match="rescale must be None.*'l1'.*'inverse_density'"):
        dare(rescale="l2")
    lambda_field = {f.name: f for f in dataclasses.fields(dare.Config)}["lambda_"]
    from fusion.config import recipe_key

    assert recipe_key(lambda_field) == "lambda"


# --- task arithmetic: weights, normalize, lambda ----------------------------------------------------------------

BASE3 = [10.0, 10.0, 10.0]
D1, D2 = [1.0, -2.0, 3.0], [4.0, 0.0, -3.0]


def plus(base, delta):
    return [b + d for b, d in zip(base, delta, strict=True)]


@pytest.mark.parametrize(("normalize", "lambda_", "expected_delta"), [
    (False, 1.0, [6.0, -4.0, 3.0]),  # 2*D1 + D2
    (True, 1.0, [2.0, -4.0 / 3.0, 1.0]),  # (2*D1 + D2) / 3
    (False, 0.5, [3.0, -2.0, 1.5]),
    (True, -1.0, [-2.0, 4.0 / 3.0, -1.0]),
])
def test_task_arithmetic_weights_normalize_lambda(normalize, lambda_, expected_delta):
    method = MERGE_METHODS.get("task_arithmetic")(weight=[2.0, 1.0], normalize=normalize, lambda_=lambda_)
    out = merge(method, [plus(BASE3, D1), plus(BASE3, D2)], BASE3)
    assert torch.allclose(out, torch.tensor(plus(BASE3, expected_delta)))


def test_normalize_by_weights_summing_to_zero_divides_by_one_as_mergekit():
    method = MERGE_METHODS.get("task_arithmetic")(weight=[1.0, -1.0], normalize=True)
    out = merge(method, [plus(BASE3, D1), plus(BASE3, D2)], BASE3)
    assert torch.allclose(out, torch.tensor(plus(BASE3, [-3.0, -2.0, 6.0])))  # D1 - D2, undivided


# --- TIES: trim (per tensor, per model), sign election, disjoint mean -------------------------------------------

BASE = torch.ones(2, 3)
DELTA_1 = torch.tensor([[0.5, -2.0, 0.1], [3.0, 0.0, -0.4]])
DELTA_2 = torch.tensor([[-1.0, -0.5, 0.2], [1.0, 2.5, 0.3]])
SMALL_1, SMALL_2 = torch.tensor([5.0, 0.05]), torch.tensor([0.01, -0.02])


def test_ties_trims_each_tensor_elects_sign_and_averages_the_agreeing_deltas():
    ties = MERGE_METHODS.get("ties")(density=0.5)  # keeps int(0.5 * 6) = 3 entries per task vector
    # trimmed: DELTA_1 -> [[0.5, -2, 0], [3, 0, 0]]; DELTA_2 -> [[-1, 0, 0], [1, 2.5, 0]]
    # elected signs (sum): [[-, -, +], [+, +, +]]; mean of the deltas of that sign (0 where none)
    expected = BASE + torch.tensor([[-1.0, -2.0, 0.0], [2.0, 2.5, 0.0]])
    assert torch.allclose(merge(ties, [BASE + DELTA_1, BASE + DELTA_2], BASE), expected)


def test_ties_without_normalize_sums_the_agreeing_deltas():
    ties = MERGE_METHODS.get("ties")(density=0.5, normalize=False)
    expected = BASE + torch.tensor([[-1.0, -2.0, 0.0], [4.0, 2.5, 0.0]])
    assert torch.allclose(merge(ties, [BASE + DELTA_1, BASE + DELTA_2], BASE), expected)


def stream(per_model):
    """Task vectors as the driver streams them: ``(name, [one delta per model])``, re-iterable."""
    return [(name, [model[name] for model in per_model]) for name in per_model[0]]


def test_ties_trim_over_the_whole_model_uses_one_threshold_per_model():
    ties = MERGE_METHODS.get("ties")(density=0.5, trim="model")
    assert ties.whole_model_pass and not MERGE_METHODS.get("ties")().whole_model_pass
    models = [BASE + DELTA_1, BASE + DELTA_2]
    smalls = [1 + SMALL_1, 1 + SMALL_2]
    # the task vectors as the driver computes them, fine-tune minus base (in float32: |1 - 0.4 - 1| < 0.4)
    stats = ties.model_statistics(stream([{"a": m - BASE, "b": s - 1} for m, s in zip(models, smalls, strict=True)]))
    # model 1's 8 magnitudes sorted: 0, .05, .1, .4, .5, 2, 3, 5: d - int(.5 d) = 4th smallest = 0.4
    # model 2's: .01, .02, .2, .3, .5, 1, 1, 2.5: 4th smallest = 0.3 (the original code keeps |x| >= it: 5 of 8)
    assert stats["ties_thresholds"] == pytest.approx([0.4, 0.3])
    # trimmed: DELTA_1 -> [[.5, -2, 0], [3, 0, -.4]]; DELTA_2 -> [[-1, -.5, 0], [1, 2.5, .3]]
    expected = BASE + torch.tensor([[-1.0, -1.25, 0.0], [2.0, 2.5, -0.4]])
    assert torch.allclose(merge(ties, models, BASE, "a", stats), expected)
    # the small tensor: model 1 keeps 5 (0.05 < 0.4), model 2 nothing; trimmed per tensor, model 2 keeps -0.02
    small = merge(ties, smalls, torch.ones(2), "b", stats)
    assert torch.allclose(small, torch.tensor([6.0, 1.0]))
    per_tensor = merge(MERGE_METHODS.get("ties")(density=0.5), smalls, torch.ones(2), "b")
    assert torch.allclose(per_tensor, torch.tensor([6.0, 0.98]))


def test_ties_whole_model_trim_without_statistics_is_refused():
    ties = MERGE_METHODS.get("ties")(density=0.5, trim="model")
    with pytest.raises(ConfigError, match="'layer.weight'.*trim='model'.*model_statistics"):
        merge(ties, [BASE + DELTA_1, BASE + DELTA_2], BASE)
    with pytest.raises(ConfigError, match="needs every model's task vectors"):
        ties.model_statistics(None)
    assert MERGE_METHODS.get("ties")(density=0.5).model_statistics(stream([{"a": DELTA_1}])) == {}


@pytest.mark.parametrize(("consensus", "weight", "expected"), [
    ("sum", None, [-3.0, 3.0]),  # entry 0: 1 + 1 - 3 < 0 elects -, only -3 kept; entry 1 mirrors it
    ("count", None, [1.0, -1.0]),  # two + against one -: the mean of the two 1s
    ("sum", [1.0, 1.0, 0.2], [1.0, -1.0]),  # weighted: 1 + 1 - 0.6 > 0 elects +; divided by the weights kept (2)
    ("count", [1.0, 1.0, 0.2], [1.0, -1.0]),
])
def test_sign_election_sum_and_count(consensus, weight, expected):
    ties = MERGE_METHODS.get("ties")(consensus=consensus, weight=weight)
    deltas = [[1.0, -1.0], [1.0, -1.0], [-3.0, 3.0]]
    assert torch.allclose(merge(ties, deltas, [0.0, 0.0]), torch.tensor(expected))


def test_ties_refusals_name_the_tensor_and_the_fix():
    with pytest.raises(ConfigError, match="'small'.*density 0.1 keeps none of its 5 entries.*at least 0.2"):
        merge(MERGE_METHODS.get("ties")(density=0.1), [torch.ones(5)] * 2, torch.zeros(5), name="small")
    with pytest.raises(ConfigError, match="density has 1 values for 2 models"):
        MERGE_METHODS.get("ties")(density=[0.5]).check_models(2, True)
    with pytest.raises(ConfigError, match="density must be a number in \\(0, 1\\]"):
        MERGE_METHODS.get("ties")(density=0.0)
    with pytest.raises(ConfigError, match="consensus must be 'sum' or 'count'"):
        MERGE_METHODS.get("ties")(consensus="majority")


def test_per_model_density():
    ties = MERGE_METHODS.get("ties")(density=[1.0, 0.5], normalize=False)
    # model 1 untrimmed, model 2 trimmed to [[-1, 0, 0], [1, 2.5, 0]]; signs: [-, -, +], [+, +, +] (0.1 - 0.4: -)
    expected = BASE + torch.tensor([[-1.0, -2.0, 0.1], [4.0, 2.5, -0.4]])
    assert torch.allclose(merge(ties, [BASE + DELTA_1, BASE + DELTA_2], BASE), expected)


# --- DARE: seeded random drop, rescale variants -----------------------------------------------------------------


def test_dare_is_reproducible_per_seed_and_tensor_name():
    dare = MERGE_METHODS.get("dare_linear")
    models, base = [torch.randn(50, 20), torch.randn(50, 20)], torch.zeros(50, 20)
    first = merge(dare(density=0.5, seed=3), models, base)
    assert torch.equal(first, merge(dare(density=0.5, seed=3), models, base))
    assert not torch.equal(first, merge(dare(density=0.5, seed=4), models, base))
    assert not torch.equal(first, merge(dare(density=0.5, seed=3), models, base, name="other.weight"))


def test_dare_drop_rate_is_one_minus_density_and_masks_differ_per_model():
    ones = torch.ones(200_000)
    kept = merge(MERGE_METHODS.get("dare_linear")(density=0.3, rescale=None), [ones], torch.zeros_like(ones))
    assert float((kept != 0).float().mean()) == pytest.approx(0.3, abs=0.01)  # sd 0.001
    two = MERGE_METHODS.get("dare_linear")(density=0.5, rescale=None)
    out = merge(two, [ones[:1000], 2 * ones[:1000]], torch.zeros(1000))
    # the sum of two independently masked deltas takes all four values 0, 1, 2 and 3
    assert set(out.tolist()) == {0.0, 1.0, 2.0, 3.0}


@pytest.mark.parametrize("rescale", ["l1", "inverse_density", None])
def test_dare_rescale_variants(rescale):
    delta = torch.tensor([1.0, -2.0, 3.0, -4.0] * 250)
    out = merge(MERGE_METHODS.get("dare_linear")(density=0.4, rescale=rescale), [delta], torch.zeros(1000))
    kept = out != 0
    scale = (out[kept] / delta[kept]).unique()
    assert len(scale) == 1  # one factor for every kept entry
    expected = {"l1": float(delta.abs().sum() / delta[kept].abs().sum()), "inverse_density": 1 / 0.4, None: 1.0}
    assert float(scale) == pytest.approx(expected[rescale], rel=1e-5)
    if rescale == "l1":
        assert float(out.abs().sum()) == pytest.approx(float(delta.abs().sum()), rel=1e-5)


def test_dare_ties_elects_signs_after_the_drop():
    dare_ties = MERGE_METHODS.get("dare_ties")()  # density 1.0: nothing dropped; not normalised
    deltas = [[1.0, -1.0], [1.0, -1.0], [-3.0, 3.0]]
    assert torch.allclose(merge(dare_ties, deltas, [0.0, 0.0]), torch.tensor([-3.0, 3.0]))
    counted = MERGE_METHODS.get("dare_ties")(consensus="count")
    assert torch.allclose(merge(counted, deltas, [0.0, 0.0]), torch.tensor([2.0, -2.0]))


# --- breadcrumbs: drop the gamma largest and the smallest -------------------------------------------------------

CRUMBS = torch.tensor([[0.1, -0.9, 0.3, 0.5, -0.2], [0.8, -0.05, 0.6, -0.7, 0.4]])


@pytest.mark.parametrize(("density", "gamma", "expected"), [
    # 10 entries: keep 6, drop the 2 largest (0.9, 0.8) and the 2 smallest (0.05, 0.1)
    (0.6, 0.2, [[0.0, 0.0, 0.3, 0.5, -0.2], [0.0, 0.0, 0.6, -0.7, 0.4]]),
    # density + gamma > 1: keep 9, so only 1 large one (0.9) can go
    (0.9, 0.2, [[0.1, 0.0, 0.3, 0.5, -0.2], [0.8, -0.05, 0.6, -0.7, 0.4]]),
    # int(gamma * 10) = 0: no large one dropped, the 6 largest kept (mergekit would zero the tensor here)
    (0.6, 0.01, [[0.0, -0.9, 0.0, 0.5, 0.0], [0.8, 0.0, 0.6, -0.7, 0.4]]),
    (1.0, 0.2, CRUMBS.tolist()),  # density 1: untouched, as mergekit
])
def test_breadcrumbs_drops_outliers_and_small_entries(density, gamma, expected):
    method = MERGE_METHODS.get("breadcrumbs")(density=density, gamma=gamma)
    assert torch.allclose(merge(method, [CRUMBS], torch.zeros(2, 5)), torch.tensor(expected))


def test_breadcrumbs_per_model_gamma_and_ties_variant():
    method = MERGE_METHODS.get("breadcrumbs")(density=0.6, gamma=[0.2, 0.0])
    out = merge(method, [CRUMBS, CRUMBS], torch.zeros(2, 5))
    expected = torch.tensor([[0.0, 0.0, 0.3, 0.5, -0.2], [0.0, 0.0, 0.6, -0.7, 0.4]]) + \
        torch.tensor([[0.0, -0.9, 0.0, 0.5, 0.0], [0.8, 0.0, 0.6, -0.7, 0.4]])
    assert torch.allclose(out, expected)
    with pytest.raises(ConfigError, match="gamma has 2 values for 3 models"):
        method.check_models(3, True)
    crumbs_ties = MERGE_METHODS.get("breadcrumbs_ties")()
    deltas = [[1.0, -1.0], [1.0, -1.0], [-3.0, 3.0]]
    assert torch.allclose(merge(crumbs_ties, deltas, [0.0, 0.0]), torch.tensor([-3.0, 3.0]))


# --- slerp ------------------------------------------------------------------------------------------------------


def test_slerp_ends_are_the_two_models():
    slerp = MERGE_METHODS.get("slerp")
    a, b = torch.tensor([[1.0, 2.0], [0.0, -1.0]]), torch.tensor([[0.5, -1.0], [3.0, 0.0]])
    assert torch.allclose(merge(slerp(t=0.0), [a, b]), a)
    assert torch.allclose(merge(slerp(t=1.0), [a, b]), b, atol=1e-6)


def test_slerp_hand_computed_on_the_circle():
    slerp = MERGE_METHODS.get("slerp")
    # orthogonal unit vectors: theta = pi/2, the result is (cos(t pi/2), sin(t pi/2))
    third = merge(slerp(t=1 / 3), [[1.0, 0.0], [0.0, 1.0]])
    assert torch.allclose(third, torch.tensor([math.cos(math.pi / 6), math.sin(math.pi / 6)]))
    # norms are not normalised away: s0 = s1 = sin(pi/4) / sin(pi/2)
    half = merge(slerp(t=0.5), [[1.0, 0.0], [0.0, 2.0]])
    assert torch.allclose(half, torch.tensor([math.sqrt(0.5), 2 * math.sqrt(0.5)]))
    # a 2x2 tensor is one flat vector
    flat = merge(slerp(t=0.5), [[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]])
    assert torch.allclose(flat, torch.tensor([[math.sqrt(0.5), 0.0], [0.0, math.sqrt(0.5)]]))


def test_slerp_falls_back_to_lerp_when_nearly_colinear():
    slerp = MERGE_METHODS.get("slerp")
    a, b = [1.0, 0.0], [2.0, 0.01]  # cos = 0.99999 > 0.9995
    assert torch.allclose(merge(slerp(t=0.25), [a, b]), torch.tensor([1.25, 0.0025]), atol=1e-7)
    assert torch.allclose(merge(slerp(t=0.5), [a, [-2.0, 0.0]]), torch.tensor([-0.5, 0.0]))  # opposite: lerp too


def test_slerp_refuses_weights_and_a_base():
    with pytest.raises(ConfigError, match="weight must be None \\(slerp weighs its two models by t\\)"):
        MERGE_METHODS.get("slerp")(weight=[1.0, 1.0])
    with pytest.raises(ConfigError, match="'slerp' takes exactly 2 fine-tuned models; got 3"):
        MERGE_METHODS.get("slerp")().check_models(3, False)


# --- model_stock ------------------------------------------------------------------------------------------------


def stock_t(cos: float, n: int) -> float:
    return n * cos / (1 + (n - 1) * cos)


def test_model_stock_two_models_hand_computed():
    base = torch.tensor([1.0, 1.0, 1.0])
    models = [base + torch.tensor([1.0, 0.0, 0.0]), base + torch.tensor([1.0, 1.0, 0.0])]
    t = stock_t(1 / math.sqrt(2), 2)  # 0.8284
    expected = t * torch.tensor([2.0, 1.5, 1.0]) + (1 - t) * base
    assert torch.allclose(merge(MERGE_METHODS.get("model_stock")(), models, base), expected)


def test_model_stock_three_models_average_the_pairwise_cosines():
    base = torch.zeros(2)
    offsets = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]  # pairwise cosines 0, 1/sqrt2, 1/sqrt2
    t = stock_t((2 / math.sqrt(2)) / 3, 3)
    expected = t * torch.tensor([2 / 3, 2 / 3])
    assert torch.allclose(merge(MERGE_METHODS.get("model_stock")(), offsets, base), expected)


def test_model_stock_filter_wise_takes_one_angle_per_row():
    base = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    models = [base + torch.tensor([[1.0, 0.0], [1.0, 1.0]]), base + torch.tensor([[0.0, 1.0], [1.0, 1.0]])]
    # row 0: orthogonal offsets, t = 0, the base row; row 1: equal offsets, cos 1, t = 1, the average row
    filtered = merge(MERGE_METHODS.get("model_stock")(filter_wise=True), models, base)
    assert torch.allclose(filtered, torch.tensor([[1.0, 2.0], [4.0, 5.0]]))
    # one angle for the whole tensor: cos = 2 / (sqrt3 sqrt3) = 2/3
    t = stock_t(2 / 3, 2)
    whole = merge(MERGE_METHODS.get("model_stock")(), models, base)
    assert torch.allclose(whole, t * (models[0] + models[1]) / 2 + (1 - t) * base)


def test_model_stock_needs_a_base_and_two_models():
    stock = MERGE_METHODS.get("model_stock")()
    with pytest.raises(ConfigError, match="'model_stock' takes at least 2 fine-tuned models; got 1"):
        stock.check_models(1, True)
    with pytest.raises(ConfigError, match="model_stock' merges task vectors.*give base="):
        stock.check_models(2, False)
    with pytest.raises(ConfigError, match="weight must be None"):
        MERGE_METHODS.get("model_stock")(weight=[1.0, 2.0])


def test_every_variant_parameter_changes_the_fingerprint():
    ties = MERGE_METHODS.get("ties")
    variants = [ties(), ties(consensus="count"), ties(trim="model"), ties(rescale="l1"), ties(rescale="inverse_density"),
                ties(density=[0.5, 0.6]), ties(weight=[1.0, 2.0])]
    assert len({v.fingerprint for v in variants}) == len(variants)
    dare = MERGE_METHODS.get("dare_linear")
    assert dare(rescale="l1").fingerprint != dare(rescale="inverse_density").fingerprint != dare(rescale=None).fingerprint


def test_ties_whole_model_trim_on_a_tiny_bert_keeps_int_density_d_plus_one_entries():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    base = {k: v for k, v in BertModel(config).state_dict().items() if v.is_floating_point()}
    deltas = [{k: 0.01 * torch.randn_like(v) * (1 + i) for k, v in base.items()} for i in range(2)]
    ties = MERGE_METHODS.get("ties")(density=0.2, trim="model")
    thresholds = ties.model_statistics(stream(deltas))["ties_thresholds"]
    for delta, threshold in zip(deltas, thresholds, strict=True):
        flat = torch.cat([t.abs().flatten() for t in delta.values()]).sort().values
        d = flat.numel()
        assert threshold == float(flat[d - int(0.2 * d) - 1])  # the (d - int(0.2 d))-th smallest, by sorting
        kept = sum(int((t.abs() >= threshold).sum()) for t in delta.values())
        assert kept == int(0.2 * d) + 1
    name = "encoder.layer.0.attention.self.query.weight"
    stats = {"ties_thresholds": thresholds}
    merged = merge(ties, [base[name] + deltas[0][name], base[name] + deltas[1][name]], base[name], name, stats)
    assert merged.shape == base[name].shape
    # a layer trimmed by the model's thresholds keeps a share of its entries that differs from 0.2
    trimmed = deltas[1][name].abs() >= thresholds[1]
    assert 0 < float(trimmed.float().mean()) < 1


def test_linear_accumulates_without_stacking_the_models(monkeypatch):
    """Merging N models holds one extra tensor, not a stack of N; the value is mergekit's stack-and-sum up to
    float32 rounding."""
    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randn(50, 20, generator=generator) for _ in range(5)]
    weights = [0.5, 1.5, 0.25, 1.0, 2.0]
    stacked = torch.stack(tensors)
    expected = (stacked * torch.tensor(weights).view(-1, 1, 1)).sum(0) / sum(weights)

    def no_stack(*args, **kwargs):
        raise AssertionError("linear stacked the models' tensors")

    monkeypatch.setattr(torch, "stack", no_stack)
    merged = merge(MERGE_METHODS.get("linear")(weight=weights), tensors)
    torch.testing.assert_close(merged, expected, rtol=0, atol=1e-6)
