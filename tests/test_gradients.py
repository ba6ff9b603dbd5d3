"""Gradient math and the optimizer audit, in isolation and on a built TD3CNN."""

from __future__ import annotations

import math

import pytest
import torch as th
from conftest import make_model
from torch import nn

from sb3_carla_td3 import GradientClipError, OptimizerCoverageError, parameter_report
from sb3_carla_td3.gradients import OptimizedParams, check_clip, clip_to_norm, grad_norm, measure_gradients, sum_of_norms


def params_with_grads(*grads: list[float]) -> list[nn.Parameter]:
    params = []
    for values in grads:
        p = nn.Parameter(th.zeros(len(values)))
        p.grad = th.tensor(values)
        params.append(p)
    return params


def test_grad_norm_is_the_global_l2_norm_not_the_sum_of_norms():
    params = params_with_grads([3.0, 4.0], [0.0, 12.0])  # per-tensor norms 5 and 12
    assert float(grad_norm(params)) == pytest.approx(13.0)
    assert float(sum_of_norms(params)) == pytest.approx(17.0)


def test_grad_norm_skips_parameters_without_gradient():
    params = [*params_with_grads([3.0, 4.0]), nn.Parameter(th.ones(3))]
    assert float(grad_norm(params)) == pytest.approx(5.0)


def test_measure_gradients_splits_encoder_and_head_and_combines_them():
    norms = measure_gradients(OptimizedParams("critic", params_with_grads([3.0, 4.0]), params_with_grads([0.0, 12.0])))
    assert (float(norms.encoder), float(norms.head), float(norms.total)) == pytest.approx((5.0, 12.0, 13.0))


def test_clip_to_norm_scales_jointly_and_measures_again():
    encoder, head = params_with_grads([3.0, 4.0]), params_with_grads([0.0, 12.0])
    params = OptimizedParams("critic", encoder, head)
    post = clip_to_norm(params, 1.0, measure_gradients(params).total)
    assert post == pytest.approx(1.0, rel=1e-5)
    assert post == pytest.approx(float(grad_norm(encoder + head)))  # measured from the clipped gradients
    # joint: both parts scaled by the same factor, so their ratio is kept
    assert float(encoder[0].grad.norm()) / float(head[0].grad.norm()) == pytest.approx(5 / 12, rel=1e-6)


@pytest.mark.parametrize("post", [1.0, 1.00005])
def test_check_clip_accepts_the_limit_within_tolerance(post):
    check_clip("actor", post, 1.0, "raise")


def test_check_clip_raises_with_the_numbers():
    with pytest.raises(GradientClipError, match=r"clipping failed: .* is 2\.42, above the limit actor_grad_clip=1"):
        check_clip("actor", 2.42, 1.0, "raise")


def test_audit_catches_a_parameter_left_out_of_its_optimizer():
    model = make_model()
    group = model.actor.optimizer.param_groups[0]
    group["params"] = group["params"][1:]
    missing = r"actor optimizer does not step 1 trainable actor parameter\(s\): actor\.features_extractor\.cnn"
    with pytest.raises(OptimizerCoverageError, match=missing):
        model.audit_optimizers()


def test_audit_catches_an_extra_optimizer():
    """The seed's red flag: a separate CNN optimizer that bypasses the joint clip."""
    model = make_model()
    cnn = model.actor.features_extractor
    cnn.optimizer = th.optim.Adam(cnn.parameters())
    extra = r"unexpected optimizer\(s\) policy\.actor\.features_extractor\.optimizer"
    with pytest.raises(OptimizerCoverageError, match=extra):
        model.audit_optimizers()


def test_audit_catches_a_parameter_stepped_by_both_optimizers():
    model = make_model()
    model.actor.optimizer.add_param_group({"params": [next(model.critic.parameters())]})
    with pytest.raises(OptimizerCoverageError, match="stepped by both the actor and the critic optimizer"):
        model.audit_optimizers()


def test_audit_runs_again_when_learning_starts():
    model = make_model()
    model.extra_optimizer = th.optim.SGD(model.critic.parameters(), lr=0.1)
    with pytest.raises(OptimizerCoverageError, match=r"model\.extra_optimizer"):
        model.learn(10)


def test_parameter_report_counts_every_component():
    model = make_model()
    rows = parameter_report(model).as_dict()
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert rows["actor CNN"]["parameters"] == count(model.actor.features_extractor)
    assert rows["critic CNN"]["parameters"] == count(model.critic.features_extractor)
    assert rows["actor CNN"]["parameters"] + rows["actor head"]["parameters"] == count(model.actor)
    assert rows["actor optimizer total"]["parameters"] == count(model.actor)
    assert rows["critic target (copy)"]["stepped by"] == "none (Polyak target)"
    assert rows["critic CNN"]["stepped by"] == "critic optimizer"


def test_global_norm_matches_a_float64_reference():
    th.manual_seed(0)
    params = [nn.Parameter(th.randn(50, 7)) for _ in range(5)]
    for p in params:
        p.grad = th.randn_like(p)
    reference = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in params))
    assert float(grad_norm(params)) == pytest.approx(reference, rel=1e-6)
